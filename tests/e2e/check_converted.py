#!/usr/bin/env python3
"""transformers on a directory uniattn-convert wrote (tests/e2e/test_e2e.cpp): its logits equal the
oracle's (the same weights read by transformers from the family's own directory) and its tokenizer
with its chat template gives apply_chat_template's prompt ids. Exit status 1 on a mismatch.

usage: check_converted.py CONVERTED_DIR FAMILY_FIXTURE_DIR
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

TOL = 1e-4  # fp32 on both sides (as kLogitTol in test_e2e.cpp)


def main(conv, fixture):
    oracle = load_file(f"{fixture}/oracle.safetensors")
    want = json.load(open(f"{fixture}/oracle.json", encoding="utf-8"))["generate"]
    model = AutoModelForCausalLM.from_pretrained(conv, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        d = (model(input_ids=oracle["input_ids"]).logits - oracle["logits"]).abs().max().item()
    print(f"transformers on {conv}: max |logits - oracle| = {d:.3g}")
    tok = AutoTokenizer.from_pretrained(conv)
    ids = tok.apply_chat_template([{"role": "user", "content": want["prompt"]}],
                                  add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = ids["input_ids"]
    same = ids == want["prompt_ids"]
    if not same:
        print("chat prompt ids differ:\n ours", ids, "\n want", want["prompt_ids"])
    return 0 if d < TOL and same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
