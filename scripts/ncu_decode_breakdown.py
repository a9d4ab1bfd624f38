"""Breaks one decode step down by kernel category from an Nsight Compute CSV
(ncu --graph-profiling node --metrics gpu__time_duration.sum --csv --print-units base).
Usage: ncu_decode_breakdown.py NCU.csv [--json OUT.json]"""
import argparse
import collections
import json

from ncu_common import fused_category, is_gemm, read_kernel_times


def category(name):
    fused = fused_category(name)
    if fused:
        return fused
    n = name.lower()
    if is_gemm(name):
        return "GEMM/GEMV (projections, MLP, lm_head; cuBLAS split-K reductions included)"
    if "decode" in n or "combine" in n:
        return "attention (our decode kernels)"
    if "reduce" in n:
        return "reductions (argmax; unfused RMSNorm mean)"
    return "other elementwise (V cache index_copy, residual add; unfused: casts, RoPE, SiLU)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--json")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--kernels-per-layer", type=int, default=2,
                    help="our decode-attention kernels per layer (leader split + combine)")
    a = ap.parse_args()
    times = read_kernel_times(a.csv)
    names = [n for n, _ in times]
    dur_ns = [ms * 1e6 for _, ms in times]
    dec = [i for i, n in enumerate(names)
           if "decode_leader" in n or "leader_combine" in n or "decode_follower" in n]
    # One step's layers: `layers` periods of the attention kernels, starting at the first one
    # (the embedding and the final norm/lm_head fall outside and are not counted).
    k = a.kernels_per_layer
    step = range(dec[0], dec[a.layers * k])
    cats = collections.defaultdict(lambda: [0, 0.0])
    for i in step:
        c = cats[category(names[i])]
        c[0] += 1
        c[1] += dur_ns[i] / 1e6
    total = sum(dur_ns[i] for i in step) / 1e6
    small = sorted(dur_ns[i] / 1e3 for i in step if not category(names[i]).startswith(("GEMM", "attention")))
    out = {"layers": a.layers, "kernels_in_layers": len(step), "kernel_time_ms": total,
           "median_small_kernel_us": small[len(small) // 2] if small else None,
           "categories": {k: {"kernels": v[0], "ms": v[1]} for k, v in cats.items()}}
    print(json.dumps(out, indent=1))
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
