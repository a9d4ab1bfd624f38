"""Unified checkpoints leave uniattn: transformers loads what libuniattn saves through the
modeling files every unified checkpoint carries (python/uniattn_hf/, auto_map in config.json),
and computes what we compute.

For LLaMA, Mistral, Gemma-2 and Gemma-3 and the variants softmax, uniattn and cla:
  1. transformers makes a tiny random base model with a character-level tokenizer;
  2. uniattn_hf_helper (libuniattn) unifies it over fixed SuperBlocks with random W_c and saves it
     (save_model: model.safetensors, config.json with auto_map, the two .py files);
  3. AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True) loads it, in this
     interpreter's transformers (5.x) and, when .venv-tf446 exists, in transformers 4.46;
  4. transformers' fp32 logits (a batch, and a left-padded batch) equal libuniattn's within 1e-4,
     greedy generate() gives the same tokens as uniattn-generate, and after generate() the
     followers' layers of transformers' cache hold no K (CLA followers: no V either).
The softmax/uniattn/cla attention of transformers' side is the Python code written from the
method's definition (docs/method.md); libuniattn's is the C++ model, so this is the check of the
unified variants against code that is not our C++.

Run by CTest as test_hf_remote_code; standalone:
  .venv/bin/python tests/python/test_hf_remote_code.py --helper build/uniattn_hf_helper \
      --generate build/uniattn-generate --work build/hf-remote-code
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

TOLERANCE = 1e-4
NEW_TOKENS = 24
PROMPT = "The leader computes P, and its followers reuse it"
# One token per character (byte-level pieces, no merges): text and token ids map one to one,
# so uniattn-generate's text gives its tokens. Id 0 is the end token.
CHARS = (" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,")
EOS = "</s>"
VARIANTS = ("softmax", "uniattn", "cla")
HELPER = []  # the uniattn_hf_helper executable (--helper)


def piece(c):
    return "\u0120" if c == " " else c  # ByteLevel's picture of the space byte


def write_tokenizer(d):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    vocab = {EOS: 0}
    for c in CHARS:
        vocab[piece(c)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"}, f)


def families():
    """(name, config, groups): tiny configs exercising each family's features (GQA, llama3 RoPE,
    sliding windows shorter than the prompt, soft-capping, query_pre_attn_scalar, q/k norms),
    and SuperBlocks that never mix sliding-window and global layers."""
    from transformers import Gemma2Config, LlamaConfig, MistralConfig
    common = dict(vocab_size=1 + len(CHARS), hidden_size=64, intermediate_size=96,
                  num_hidden_layers=6, num_attention_heads=4, max_position_embeddings=256,
                  rms_norm_eps=1e-5, eos_token_id=0, bos_token_id=None, pad_token_id=0)
    yield "llama", LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False,
                               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 16}), "1-3;4,5"
    yield "mistral", MistralConfig(**common, num_key_value_heads=1, sliding_window=6,
                                   tie_word_embeddings=False), "0-2;3-5"
    # Gemma-2: sliding-window layers 0, 2, 4 (transformers 4.46 fixes that pattern).
    yield "gemma2", Gemma2Config(**common, num_key_value_heads=2, head_dim=24,
                                 query_pre_attn_scalar=20, sliding_window=5,
                                 attn_logit_softcapping=3.0, final_logit_softcapping=4.0), "0,2;1,3,5"
    # The same with a window longer than every sequence here: transformers 4.46's own Gemma-2
    # decodes wrongly once a sequence passes its sliding window (its HybridCache; the stock model's
    # cached logits then differ from a full pass), so 4.46 checks generate() on this one.
    yield "gemma2w", Gemma2Config(**common, num_key_value_heads=2, head_dim=24,
                                  query_pre_attn_scalar=20, sliding_window=128,
                                  attn_logit_softcapping=3.0, final_logit_softcapping=4.0), "0,2;1,3,5"
    from transformers import Gemma3TextConfig
    yield "gemma3", Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=16,
                                     query_pre_attn_scalar=16, sliding_window=5,
                                     layer_types=["sliding_attention"] * 2 + ["full_attention"]
                                     + ["sliding_attention"] * 2 + ["full_attention"]), "0-1;2,5;3-4"


def make_base(work, name, cfg):
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(1234)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # norms default to 0/1: randomise them so they are exercised
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0 if "gemma" in name else 1.0, 0.3)
    d = os.path.join(work, "base", name)
    model.save_pretrained(d, safe_serialization=True)
    write_tokenizer(d)
    return d


def inputs(vocab):
    import torch
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, vocab, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # row 0: 4 left pads
    return ids, mask


# --- transformers' side (runs in each environment, possibly transformers 4.46) ---------------

def follower_layers(config):
    roles = {}
    for g in config.uniattn["groups"]:
        for i in g[1:]:
            roles[i] = g[0]
    return roles


def cache_widths(cache, layer):
    """(K head dim, V head dim) transformers' cache holds for `layer` after generate()."""
    if hasattr(cache, "layers"):  # transformers 5
        entry = cache.layers[layer]
        return entry.keys.shape[-1], entry.values.shape[-1]
    if isinstance(cache, tuple):  # transformers 4.46 returns the legacy ((K, V), ...) form
        return cache[layer][0].shape[-1], cache[layer][1].shape[-1]
    return cache.key_cache[layer].shape[-1], cache.value_cache[layer].shape[-1]


def hf_side(cases_file, out_file):
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    v5 = int(transformers.__version__.split(".")[0]) >= 5
    with open(cases_file) as f:
        cases = json.load(f)
    results, report = {}, {}
    for case in cases:
        key = case["name"]
        if not v5 and case["family"] == "gemma3":
            report[key] = "skipped: Gemma-3 needs transformers >= 4.50"
            continue
        kw = {"dtype": torch.float32} if v5 else {"torch_dtype": torch.float32}
        model = AutoModelForCausalLM.from_pretrained(case["dir"], trust_remote_code=True, **kw)
        model.eval()
        data = load_file(case["inputs"])
        ids, mask = data["input_ids"], data["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            results[key + ".logits"] = model(input_ids=ids).logits.float().contiguous()
            results[key + ".logits_padded"] = model(
                input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().contiguous()
            if not v5 and case["family"] == "gemma2":
                report[key] = {"class": type(model).__name__, "generate": "skipped: "
                               "transformers 4.46's Gemma-2 decodes wrongly past its sliding "
                               "window (checked on gemma2w)"}
                continue
            prompt = torch.tensor([case["prompt_ids"]])
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, eos_token_id=0, pad_token_id=0,
                                 return_dict_in_generate=True)
        results[key + ".generated"] = out.sequences[0, prompt.shape[1]:].contiguous()
        resaved = None
        if case["name"].endswith("-uniattn"):  # save_pretrained keeps it loadable (and ours)
            resaved = f"{case['dir']}-resaved-{transformers.__version__}"
            model.save_pretrained(resaved)
        widths = {i: cache_widths(out.past_key_values, i)
                  for i in follower_layers(model.config)}
        cla = model.config.uniattn["variant"] == "cla"
        bad = {i: w for i, w in widths.items() if w[0] != 0 or (cla and w[1] != 0)}
        report[key] = {"class": type(model).__name__, "follower_cache_widths": widths,
                       "followers_keep_k": bool(bad), "resaved": resaved}
    save_file(results, out_file)
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                      "cases": report}, default=str))


# --- our side and the comparison ---------------------------------------------------------------

def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def prepare(args):
    """Base models, unified checkpoints, our logits and uniattn-generate's tokens."""
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    cases, ours = [], {}
    for family, cfg, groups in families():
        base = make_base(args.work, family, cfg)
        tok = Tokenizer.from_file(os.path.join(base, "tokenizer.json"))
        prompt_ids = tok.encode(PROMPT).ids
        assert len(prompt_ids) == len(PROMPT), "the test tokenizer must map characters one to one"
        ids, mask = inputs(cfg.vocab_size)
        in_file = os.path.join(args.work, f"{family}-inputs.safetensors")
        save_file({"input_ids": ids, "attention_mask": mask}, in_file)
        for variant in VARIANTS:
            name = f"{family}-{variant}"
            d = os.path.join(args.work, "unified", name)
            run([args.helper, "unify", base, variant, groups, "42", d])
            for f in ("configuration_uniattn.py", "modeling_uniattn.py"):
                assert os.path.isfile(os.path.join(d, f)), f"{d}: no {f}"
            for suffix, extra in (("logits", {}), ("logits_padded", {"attention_mask": mask})):
                f_in = os.path.join(args.work, f"{name}-{suffix}-in.safetensors")
                f_out = os.path.join(args.work, f"{name}-{suffix}.safetensors")
                save_file({"input_ids": ids, **extra}, f_in)
                run([args.helper, "logits", d, f_in, f_out])
                ours[f"{name}.{suffix}"] = load_file(f_out)["logits"]
            text = run([args.generate, "--model", d, "--prompt", PROMPT, "--max-new-tokens",
                        str(NEW_TOKENS), "--temperature", "0"])
            text = text[:-1] if text.endswith("\n") else text
            ours[f"{name}.generated"] = torch.tensor(tok.encode(text).ids if text else [],
                                                     dtype=torch.long)
            cases.append({"name": name, "family": family, "dir": d, "inputs": in_file,
                          "ids_file": os.path.join(args.work, f"{name}-logits-in.safetensors"),
                          "prompt_ids": prompt_ids, "text": text})
    return cases, ours


def environments(args):
    envs = [("transformers (this venv)", sys.executable)]
    tf446 = os.environ.get("UNIATTN_TF446_PYTHON") or os.path.join(
        os.environ.get("UNIATTN_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")),
        ".venv-tf446", "bin", "python")
    if os.path.isfile(tf446):
        envs.append(("transformers 4.46 (.venv-tf446)", tf446))
    else:
        print(f"note: {tf446} absent (scripts/setup_tf446_venv.sh makes it): "
              "transformers 4.46 not checked")
    return envs


def check_resaved(label, case, ours, resaved, msgs):
    """transformers' save_pretrained of the loaded model: the copy carries the modeling files and
    auto_map again, and libuniattn loads it and computes the same logits."""
    from safetensors.torch import load_file
    missing = [f for f in ("configuration_uniattn.py", "modeling_uniattn.py")
               if not os.path.isfile(os.path.join(resaved, f))]
    with open(os.path.join(resaved, "config.json")) as f:
        if "auto_map" not in json.load(f):
            missing.append("auto_map")
    if missing:
        return [f"{label} {case['name']}: save_pretrained's copy lacks {missing}"]
    out = resaved + "-logits.safetensors"
    run([HELPER[0], "logits", resaved, case["ids_file"], out])
    diff = (load_file(out)["logits"].double() - ours[case["name"] + ".logits"].double()).abs().max()
    msgs.append(f"save_pretrained copy: ours max|diff| {diff.item():.2e}")
    if not diff.item() <= TOLERANCE:
        return [f"{label} {case['name']}: our logits of save_pretrained's copy differ by {diff}"]
    return []


def compare_case(label, case, ours, theirs, info):
    """Failure messages for one checkpoint (empty: it passed) and a line of what was measured."""
    name, fails, msgs = case["name"], [], []
    for suffix in ("logits", "logits_padded"):
        a, b = ours[f"{name}.{suffix}"], theirs[f"{name}.{suffix}"]
        if suffix == "logits_padded":  # the pads' own logits are not defined
            a, b = a[:, 4:], b[:, 4:]
        diff = (a.double() - b.double()).abs().max().item()
        msgs.append(f"{suffix} max|diff| {diff:.2e}")
        if not diff <= TOLERANCE:
            fails.append(f"{label} {name}: {suffix} differ by {diff:.3e} > {TOLERANCE}")
    if "generate" in info:
        msgs.append(info["generate"])
        return fails, msgs
    gen = theirs[f"{name}.generated"].tolist()
    if gen and gen[-1] == 0:
        gen = gen[:-1]  # the end token: uniattn-generate stops there without printing it
    mine = ours[f"{name}.generated"].tolist()
    msgs.append(f"{len(gen)} generated tokens " + ("equal" if gen == mine else "DIFFER"))
    if gen != mine:
        fails.append(f"{label} {name}: generate() {gen} != uniattn-generate {mine} "
                     f"({case['text']!r})")
    msgs.append(f"follower cache widths (K, V) {info['follower_cache_widths']}")
    if info.get("resaved"):
        fails += check_resaved(label, case, ours, info["resaved"], msgs)
    if info["followers_keep_k"]:
        fails.append(f"{label} {name}: follower layers keep K/V in transformers' cache: "
                     f"{info['follower_cache_widths']}")
    return fails, msgs


def compare(label, cases, ours, theirs, report):
    failures, passed, failed = [], 0, 0
    for case in cases:
        info = report["cases"].get(case["name"])
        if isinstance(info, str):
            print(f"  {case['name']}: {info}")
            continue
        fails, msgs = compare_case(label, case, ours, theirs, info)
        print(f"  {case['name']} [{info['class']}]: " + "; ".join(msgs))
        failures += fails
        passed, failed = passed + (not fails), failed + bool(fails)
    return failures, passed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helper")
    ap.add_argument("--generate")
    ap.add_argument("--work")
    ap.add_argument("--hf-side", nargs=2, metavar=("CASES_JSON", "OUT"))
    args = ap.parse_args()
    if args.hf_side:
        return hf_side(*args.hf_side)
    import torch
    from safetensors.torch import load_file
    torch.set_num_threads(2)
    HELPER.append(args.helper)
    if os.path.isdir(args.work):
        shutil.rmtree(args.work)
    os.makedirs(args.work)
    cases, ours = prepare(args)
    cases_file = os.path.join(args.work, "cases.json")
    with open(cases_file, "w") as f:
        json.dump(cases, f)
    failures, passed, failed, report_names = [], 0, 0, []
    for label, python in environments(args):
        out = os.path.join(args.work, f"transformers-{len(report_names)}.safetensors")
        report_names.append(label)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_HOME=tempfile.mkdtemp(dir=args.work, prefix="hf-home-"))
        stdout = run([python, os.path.abspath(__file__), "--hf-side", cases_file, out], env=env)
        report = json.loads(stdout.strip().splitlines()[-1])
        print(f"{label}: transformers {report['transformers']}, torch {report['torch']}")
        env_failures, env_passed, env_failed = compare(label, cases, ours, load_file(out), report)
        failures += env_failures
        passed, failed = passed + env_passed, failed + env_failed
    for f in failures:
        print("FAIL:", f)
    print(f"{passed} passed, {failed} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
