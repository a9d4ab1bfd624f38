"""Breaks one training step down by kernel category from Nsight Compute CSVs
(ncu --metrics gpu__time_duration.sum --csv --print-units base), for several programs side by
side (uniattn-train and the transformers step of scripts/train_throughput.py --profile-hf).

The profiled program runs two or more steps; each ends with the fused AdamW kernels, so the last
step is the kernels after the last-but-one group of AdamW launches, up to the end of the last one.
Usage: ncu_train_breakdown.py LABEL=NCU.csv [LABEL=NCU.csv ...] [--json OUT.json]"""
import argparse
import collections
import json

from ncu_common import is_gemm, read_kernel_times

CATEGORIES = [
    "GEMM (forward and backward)",
    "attention (flash forward and backward)",
    "cross-entropy (log-softmax, NLL, their backward)",
    "embedding (gather and its backward)",
    "RMSNorm and reductions",
    "gradient norm and clipping (foreach)",
    "AdamW (fused)",
    "casts and copies",
    "other elementwise (RoPE, SiLU x up, residual adds, masks)",
]


def is_adam(name):
    return "adam" in name.lower()


def category(name):
    n = name.lower()
    if is_adam(name):
        return "AdamW (fused)"
    if "flash" in n or "fmha" in n or "attention" in n or "cudnn" in n:
        return "attention (flash forward and backward)"
    if is_gemm(name):
        return "GEMM (forward and backward)"
    if "softmax" in n or "nll_loss" in n or "cross_entropy" in n:
        return "cross-entropy (log-softmax, NLL, their backward)"
    if ("embedding" in n or "indexselect" in n or "gather" in n or "indexing_backward" in n
            or "radix" in n or "sort" in n or "segment" in n or "krn_partials" in n
            or "compute_grad_weight" in n or "sum_and_scatter" in n):
        return "embedding (gather and its backward)"
    if "multi_tensor_apply" in n or "foreach" in n or "lpnorm" in n:
        return "gradient norm and clipping (foreach)"
    if "reduce" in n or "norm" in n:
        return "RMSNorm and reductions"
    if "copy" in n or "cast" in n:
        return "casts and copies"
    return "other elementwise (RoPE, SiLU x up, residual adds, masks)"


def last_step(times):
    """The kernels of the last complete step (see the module docstring)."""
    ends, prev = [], False
    for i, (n, _) in enumerate(times):
        a = is_adam(n)
        if prev and not a:
            ends.append(i)  # one past the end of a group of AdamW launches
        prev = a
    if prev:
        ends.append(len(times))
    if len(ends) < 2:
        raise SystemExit("need at least two steps (two groups of AdamW kernels) in the profile")
    return times[ends[-2]:ends[-1]]


def breakdown(path):
    step = last_step(read_kernel_times(path))
    cats = collections.defaultdict(lambda: [0, 0.0])
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for n, ms in step:
        c = cats[category(n)]
        c[0] += 1
        c[1] += ms
        b = by_name[n[:120]]
        b[0] += 1
        b[1] += ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:25]
    return {"kernels": len(step), "total_ms": sum(ms for _, ms in step),
            "categories": {k: {"kernels": v[0], "ms": v[1]} for k, v in cats.items()},
            "top_kernels": [{"name": k, "launches": v[0], "ms": v[1]} for k, v in top]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("profiles", nargs="+", metavar="LABEL=CSV")
    ap.add_argument("--json")
    a = ap.parse_args()
    res = {}
    for p in a.profiles:
        label, path = p.split("=", 1)
        res[label] = breakdown(path)
    labels = list(res)
    print("| category | " + " | ".join(f"{l} ms (kernels)" for l in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for c in CATEGORIES:
        cells = []
        for l in labels:
            v = res[l]["categories"].get(c)
            cells.append(f"{v['ms']:.2f} ({v['kernels']})" if v else "0")
        print(f"| {c} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(f"{res[l]['total_ms']:.2f} ({res[l]['kernels']})"
                                   for l in labels) + " |")
    for l in labels:
        print(f"\n{l}: top kernels")
        for k in res[l]["top_kernels"][:15]:
            print(f"  {k['ms']:8.3f} ms  x{k['launches']:<4d} {k['name']}")
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
