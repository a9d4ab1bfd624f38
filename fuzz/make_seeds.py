#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ (seed-* files; regress-* files, the inputs of
past findings, are kept as they are). Hand-written inputs plus small files from the oracle
fixtures (build/test-data, made by `ctest -R fixture_`) when --test-data points at them.

Each target's input layout is described at the top of fuzz/fuzz_<target>.cpp; targets whose first
byte selects a mode get one seed per mode.

    .venv/bin/python fuzz/make_seeds.py [--test-data build/test-data]
"""
import argparse
import glob
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_SEED = 64 << 10


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def put_file(target, name, path, prefix=b""):
    if os.path.isfile(path) and os.path.getsize(path) <= MAX_SEED:
        with open(path, "rb") as f:
            put(target, name, prefix + f.read())


def superblock():
    for i, spec in enumerate(["4,16,32", "3,0,6", "16-19;20-23", "22,24,26,28;23,25,27,29",
                              "2-3; 5,6 ;8-9", "4,30,64"]):
        put("superblock", f"text{i}", b"\x02" + spec.encode())
    put("superblock", "range", b"\x03" + struct.pack("<qqq", 4, 16, 32))


def train_yaml(test_data):
    root = os.path.dirname(HERE)
    for p in sorted(glob.glob(os.path.join(root, "configs", "*.yaml"))):
        put_file("train_yaml", os.path.basename(p), p)
    put("train_yaml", "overrides",
        open(os.path.join(root, "configs", "tiny-cpu-smoke.yaml")).read() +
        "#--set\nstages[0].lr=1e-4\ntraining.seed=3\nmodel.superblocks=2-3\ndebug.fail_at_step=2\n")


def model_config(test_data):
    put("model_config", "llama", json.dumps({
        "model_type": "uniattn_llama", "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
        "eos_token_id": [1, 2], "uniattn": {"variant": "uniattn", "groups": [[4, 5, 6, 7]]}}))
    put("model_config", "superblocks", json.dumps({
        "model_type": "uniattn_mistral", "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 8, "num_hidden_layers": 6, "num_attention_heads": 2,
        "uniattn": {"variant": "cla", "superblocks": {"size": 2, "begin": 2, "end": 6}}}))
    put("model_config", "generation", json.dumps({
        "eos_token_id": [1, 7], "do_sample": True, "temperature": 0.7, "top_p": 0.9,
        "top_k": 20, "repetition_penalty": 1.1, "max_new_tokens": 64}))
    put("model_config", "generation_stop_strings", json.dumps({
        "eos_token_id": 2, "stop_strings": ["\nUser:", "<|im_end|>", "\u00e9t\u00e9"]}))
    if test_data:
        for p in sorted(glob.glob(os.path.join(test_data, "models", "*", "*config.json"))):
            put_file("model_config", p.split(os.sep)[-2] + "_" + os.path.basename(p), p)


RECORDS = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5."},
           {"instruction": "Say hello.", "output": "Hello!"},
           {"prompt": "Hi", "completion": "Hello", "extra": None, "n": 3}]


def records():
    # First byte: bit 0 .jsonl name, bit 1 alpaca (else tulu), bit 2 check the template's fields.
    put("records", "array", b"\x06" + json.dumps(RECORDS).encode())
    put("records", "jsonl", b"\x07" + "\n".join(json.dumps(r) for r in RECORDS).encode())
    put("records", "messages", b"\x01" + json.dumps({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}).encode())


def chat_records():
    # First byte: bit 0 .jsonl name, bit 1 Gemma's template (else ChatML), bits 2-7 max_len.
    conv = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello <|im_end|> \u00e9"},
                         {"role": "user", "content": "More?"},
                         {"role": "assistant", "content": "No."}]}
    plain = {"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]}
    put("chat_records", "array", bytes([0xFC]) + json.dumps([conv, plain]).encode())
    put("chat_records", "jsonl_gemma", bytes([0xFF]) + "\n".join(
        json.dumps(c) for c in (conv, plain)).encode())
    put("chat_records", "truncated", bytes([0x10]) + json.dumps([conv]).encode())


def mc_data():
    qs = [{"id": "q1", "question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
          {"id": 7, "question": "Color of the sky?", "choices": ["blue", "green"], "answer": 0,
           "subject": "x"}]
    put("mc_data", "two", b"\x00" + "\n".join(json.dumps(q) for q in qs).encode() + b"\n")


def safetensors(test_data):
    def file(tensors, meta=None):
        header, buf = {}, b""
        if meta:
            header["__metadata__"] = meta
        for name, dtype, shape, data in tensors:
            header[name] = {"dtype": dtype, "shape": shape,
                            "data_offsets": [len(buf), len(buf) + len(data)]}
            buf += data
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + buf
    put("safetensors", "two", file([("a", "F32", [2], b"\0" * 8), ("b", "BF16", [1, 3], b"\1" * 6),
                                    ("e", "I64", [0], b"")], {"format": "pt"}))
    if test_data:
        for p in sorted(glob.glob(os.path.join(test_data, "safetensors", "*.safetensors"))):
            put_file("safetensors", os.path.basename(p), p)
    # The index target's shards (fuzz_safetensors_index.cpp): a.safetensors {a, b}, b {c}.
    put("safetensors_index", "ab", json.dumps({"metadata": {"total_size": 16}, "weight_map": {
        "a": "a.safetensors", "b": "a.safetensors", "c": "b.safetensors"}}))
    put("safetensors_index", "subset", json.dumps({"weight_map": {"c": "b.safetensors"}}))


def gguf(test_data):
    if test_data:
        for p in ["gguf/metadata.gguf", "gguf/aligned64.gguf"]:
            put_file("gguf", os.path.basename(p), os.path.join(test_data, p))
    # Type order of kTypes in fuzz_gguf_quant.cpp, with ggml's bytes per block.
    sizes = [4, 2, 2, 18, 20, 22, 24, 34, 84, 110, 144, 176, 210, 292]
    rng = random.Random(0)
    for i, size in enumerate(sizes):
        put("gguf_quant", f"type{i}", bytes([i]) + bytes(rng.randrange(256) for _ in range(4 * size)))


def tokenizers(test_data):
    put("tokenizer_json", "tiny", json.dumps({
        "added_tokens": [{"id": 3, "content": "<s>", "special": True, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "byte_fallback": True, "fuse_unk": True, "unk_token": "<unk>",
                  "vocab": {"<unk>": 0, "\u2581": 1, "a": 2, "<s>": 3, "<0x41>": 4, "\u2581a": 5},
                  "merges": ["\u2581 a"]}}))
    put("tokenizer_json", "split_string", json.dumps({
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": ". ("}, "behavior": "Isolated",
             "invert": False},
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True,
             "trim_offsets": True}]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"H": 0, "e": 1, "l": 2, "o": 3, "He": 4},
                  "merges": [["H", "e"]]}}))
    if test_data:
        for name in ["gpt2_small", "llama3_small", "qwen2_small", "digits_small",
                     "spm_json/llama_split", "spm_json/gemma_small", "split_merged_next"]:
            put_file("tokenizer_json", name.replace("/", "_"),
                     os.path.join(test_data, "tokenizer", name, "tokenizer.json"))
        for p in ["tokenizer/spm_json/llama.model", "tokenizer/spm_json/gemma.model"]:
            put_file("sentencepiece", os.path.basename(p), os.path.join(test_data, p))


def chat_templates(test_data):
    # First byte even: a template source; odd: a tokenizer_config.json.
    put("chat_template", "simple", b"\x00" + (
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content | trim }}"
        " [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}").encode())
    put("chat_template", "config", b"\x01" + json.dumps({
        "bos_token": "<s>", "eos_token": {"content": "</s>"},
        "chat_template": "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"}).encode())
    if test_data:
        t = json.load(open(os.path.join(test_data, "chat", "templates.json")))
        for name, entry in t.items():
            put("chat_template", name, b"\x00" + entry["source"].encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-data", default=os.path.join(os.path.dirname(HERE), "build", "test-data"))
    a = ap.parse_args()
    td = a.test_data if os.path.isdir(a.test_data) else None
    superblock()
    train_yaml(td)
    model_config(td)
    records()
    chat_records()
    mc_data()
    safetensors(td)
    gguf(td)
    tokenizers(td)
    chat_templates(td)


if __name__ == "__main__":
    main()
