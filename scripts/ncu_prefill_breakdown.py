"""Breaks one prefill (time to first token) down by kernel category from an Nsight Compute CSV
(ncu --metrics gpu__time_duration.sum --csv --print-units base), and sets the GEMM time against
the GEMM FLOPs of the shape to show how far cuBLAS itself is from the tensor-core peak.

The profiled program runs the prefill several times (warm-up, then timed); each forward starts
with the embedding gather, so the CSV is split there and the last forward is analysed.
Usage: ncu_prefill_breakdown.py NCU.csv --seq 4096 --matmul-params N [--json OUT.json]"""
import argparse
import collections
import json

from ncu_common import fused_category, is_gemm, read_kernel_times

PEAK_BF16_TFLOPS = 989.0  # H100 SXM dense bf16 tensor-core peak


def category(name):
    fused = fused_category(name)
    if fused:
        return fused
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "cudnn", "attention", "prefill_kernel", "sdpa")):
        return "attention"
    if is_gemm(name):
        return "GEMM"
    if "reduce" in n:
        return "reductions"
    return "other elementwise (residual add, casts, cache copy, rotary tables)"


def is_embedding(name):
    n = name.lower()
    return "vectorized_gather_kernel" in n or "indexselect" in n or "embedding" in n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--matmul-params", type=float, required=True,
                    help="parameters in the per-token GEMMs (all layers, not the embedding)")
    ap.add_argument("--json")
    a = ap.parse_args()
    times = read_kernel_times(a.csv)
    names = [n for n, _ in times]
    dur_ms = [ms for _, ms in times]
    starts = [i for i, n in enumerate(names) if is_embedding(n)]
    first = starts[-1] if starts else 0
    cats = collections.defaultdict(lambda: [0, 0.0])
    for i in range(first, len(names)):
        c = cats[category(names[i])]
        c[0] += 1
        c[1] += dur_ms[i]
    total = sum(dur_ms[first:])
    gemm_ms = cats["GEMM"][1]
    gemm_tflop = 2.0 * a.matmul_params * a.seq * a.batch / 1e12
    out = {
        "forwards_found": len(starts),
        "kernels": len(names) - first,
        "kernel_time_ms": total,
        "gemm_tflop": gemm_tflop,
        "gemm_achieved_tflops": gemm_tflop / (gemm_ms / 1e3) if gemm_ms else None,
        "gemm_fraction_of_peak": gemm_tflop / (gemm_ms / 1e3) / PEAK_BF16_TFLOPS if gemm_ms else None,
        "categories": {k: {"kernels": v[0], "ms": v[1], "share": v[1] / total}
                       for k, v in sorted(cats.items(), key=lambda kv: -kv[1][1])},
    }
    print(json.dumps(out, indent=1))
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
