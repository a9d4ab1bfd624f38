#!/usr/bin/env python3
"""Transformers baseline for uniattn-bench: the same shapes and metrics, measured with
LlamaForCausalLM (random bf16 weights on the GPU), attention "sdpa" and "eager".

TTFT: prefill of B x S random ids (last-position logits, greedy choice), wall clock with CUDA
synchronisation, median. Decode: one step over a StaticCache that holds S random tokens per row,
timed with CUDA events around a run of eager steps (no torch.compile, no CUDA graphs).
Out-of-memory gives an "oom" row (value -1) and the run goes on. The JSON file is rewritten
after every case.

  python3 scripts/bench_transformers.py --model llama8b --out bench/results/transformers-h100.json
"""
import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402
from bench_common import Results, git_commit  # noqa: E402

HBM_BYTES_PER_S = 3.0e12
GEMM_FLOPS_PER_S = 800e12

MODELS = {
    "llama8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=128, tie_word_embeddings=False, rms_norm_eps=1e-5,
                    max_position_embeddings=131072,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192}),
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    head_dim=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    max_position_embeddings=8192,
                    rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
}
PREFILL = {"llama8b": [1024, 4096, 16384], "smollm2": [512, 2048]}
PREFILL_QUICK = {"llama8b": [1024], "smollm2": [512]}
DECODE = [(1, 512), (8, 16384), (32, 4096)]
DECODE_QUICK = [(1, 512), (8, 2048)]


def free():
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def build_model(name):
    from transformers import LlamaConfig, LlamaForCausalLM
    kw = dict(MODELS[name])
    try:
        cfg = LlamaConfig(**kw)
    except Exception as e:  # an older config class without rope_parameters
        print(f"note: LlamaConfig rejected rope_parameters ({e}); default rope", file=sys.stderr)
        kw.pop("rope_parameters")
        cfg = LlamaConfig(**kw)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(dtype=torch.bfloat16).eval()
    return model, cfg


def set_impl(model, impl):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def footprint(model, cfg):
    """(param bytes, bytes a decode step reads, GEMM params per token, lm_head params)."""
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.model.embed_tokens.weight
    table_bytes = embed.numel() * embed.element_size()
    read = param_bytes - (0 if cfg.tie_word_embeddings else table_bytes)
    matmul = sum(p.numel() for n, p in model.model.layers.named_parameters() if p.dim() == 2)
    return param_bytes, read, matmul, embed.numel()


def kv_bytes_per_token(cfg):
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2


def run_prefill(model, cfg, seq, iters, fp):
    ids = torch.randint(cfg.vocab_size, (1, seq), device="cuda")

    def once():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
        torch.cuda.synchronize()
        return nxt

    once()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        once()
        times.append((time.perf_counter() - t0) * 1e3)
    t = statistics.median(times)
    roof = 2.0 * (fp[2] * seq + fp[3]) / GEMM_FLOPS_PER_S * 1e3
    return t, roof / t


def run_decode(model, cfg, batch, seq, warmup, iters, fp):
    from transformers import StaticCache
    cache = StaticCache(config=cfg, max_cache_len=seq + warmup + iters + 8)
    tok = torch.randint(cfg.vocab_size, (batch, 1), device="cuda")
    # A one-token step at position 0 makes the static layers allocate their buffers; then they
    # are filled with random values standing for S cached tokens (the work does not depend on
    # the values) and the timed steps decode positions S, S+1, ...
    model(input_ids=tok, past_key_values=cache, use_cache=True,
          cache_position=torch.zeros(1, dtype=torch.long, device="cuda"), logits_to_keep=1)
    for layer in cache.layers:
        layer.keys.normal_()
        layer.values.normal_()
        # Newer StaticLayers count positions themselves instead of reading cache_position.
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
            layer.cumulative_length.fill_(seq)
        elif isinstance(getattr(layer, "cumulative_length", None), int):
            layer.cumulative_length = seq
    positions = torch.arange(seq, seq + warmup + iters, dtype=torch.long, device="cuda")
    n = [0]

    def step():
        i = n[0]
        n[0] += 1
        return model(input_ids=tok, past_key_values=cache, use_cache=True,
                     cache_position=positions[i:i + 1], logits_to_keep=1).logits

    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    end.synchronize()
    t = start.elapsed_time(end) / iters
    roof = (fp[1] + kv_bytes_per_token(cfg) * batch * seq) / HBM_BYTES_PER_S * 1e3
    del cache
    return t, batch * 1e3 / t, roof / t


def guarded(res, case, variant, fn):
    return bench_common.guarded(res, case, variant, fn, free, 300)


def bench_model(res, name, args):
    model, cfg = build_model(name)
    fp = footprint(model, cfg)
    total = torch.cuda.get_device_properties(0).total_memory
    prefill = (PREFILL_QUICK if args.quick else PREFILL)[name]
    decode = DECODE_QUICK if args.quick else DECODE
    kv = kv_bytes_per_token(cfg)
    with torch.inference_mode():
        for impl in args.impls:
            variant = f"transformers_{impl}"
            set_impl(model, impl)
            mem = f"{name}/memory"
            res.add(mem, variant, "kv_bytes_per_token", kv, "B")
            res.add(mem, variant, "weight_bytes", fp[0], "B")
            res.add(mem, variant, "max_batch_at_32k",
                    max(0, (total - fp[0] - (4 << 30)) // (kv * 32768)), "sequences")
            for s in prefill:
                case = f"{name}/prefill/S={s}/B=1"
                iters = args.prefill_iters if s < 8192 else max(2, args.prefill_iters // 2)
                r = guarded(res, case, variant, lambda: run_prefill(model, cfg, s, iters, fp))
                if r:
                    res.add(case, variant, "ttft_ms", r[0], "ms")
                    res.add(case, variant, "roofline_fraction", r[1], "fraction")
                res.flush()
            for b, s in decode:
                case = f"{name}/decode/S={s}/B={b}"
                r = guarded(res, case, variant,
                            lambda: run_decode(model, cfg, b, s, args.warmup, args.iters, fp))
                if r:
                    res.add(case, variant, "decode_step_ms", r[0], "ms")
                    res.add(case, variant, "tokens_per_s", r[1], "tokens/s")
                    res.add(case, variant, "roofline_fraction", r[2], "fraction")
                res.flush()
    del model
    free()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["llama8b", "smollm2", "all"], default="llama8b")
    ap.add_argument("--impls", default="sdpa,eager", help="comma list of sdpa, eager")
    ap.add_argument("--out", default="bench/results/transformers.json")
    ap.add_argument("--quick", action="store_true", help="one prefill, two small decode shapes")
    ap.add_argument("--iters", type=int, default=20, help="timed decode steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed decode steps")
    ap.add_argument("--prefill-iters", type=int, default=5)
    args = ap.parse_args()
    args.impls = [i for i in args.impls.split(",") if i]
    for i in args.impls:
        if i not in ("sdpa", "eager"):
            ap.error(f"unknown attention implementation {i!r}")
    if not torch.cuda.is_available():
        sys.exit("bench_transformers.py: needs a CUDA GPU")
    torch.manual_seed(0)
    doc = {"gpu": torch.cuda.get_device_name(), "commit": git_commit(),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "rows": []}
    res = Results(args.out, doc, variant_width=20)
    names = ["smollm2", "llama8b"] if args.model == "all" else [args.model]
    for name in names:
        try:
            bench_model(res, name, args)
        except torch.OutOfMemoryError as e:
            res.add(f"{name}/build", "transformers", "oom", -1, "", str(e).splitlines()[0][:200])
            free()
        res.flush()
    print(f"gpu: {res.doc['gpu']}, {len(res.doc['rows'])} rows written to {args.out}")


if __name__ == "__main__":
    main()
