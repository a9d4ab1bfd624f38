"""Compares one CUDA-graph decode step of two variants kernel by kernel, from Nsight Compute CSVs
(ncu --graph-profiling node --metrics gpu__time_duration.sum --csv --print-units base) of
uniattn-bench runs with one decode case, --warmup 0 --iters 1 --repeats 1: the CSV holds the
eager warm-up step, then the replayed graph's nodes. The replayed step starts after the longest
kernel between the two steps' attention kernels (the warm-up step's lm_head GEMM).
Usage: ncu_decode_compare.py BASE.csv[.gz] OTHER.csv[.gz] [--names none uniattn] [--json OUT]"""
import argparse
import collections
import json

from ncu_common import read_kernel_times
from ncu_decode_breakdown import category


def replayed_step(times):
    att = [i for i, (n, _) in enumerate(times) if category(n).startswith("attention")]
    half = len(att) // 2
    gap = range(att[half - 1] + 1, att[half])
    lm_head = max(gap, key=lambda i: times[i][1])
    return times[lm_head + 1:]


def summary(times):
    cats, kernels = collections.defaultdict(lambda: [0, 0.0]), collections.defaultdict(lambda: [0, 0.0])
    for name, ms in times:
        for table, key in ((cats, category(name)), (kernels, name.split("(")[0])):
            table[key][0] += 1
            table[key][1] += ms
    return {"kernels": len(times), "kernel_time_ms": sum(ms for _, ms in times),
            "categories": {k: {"kernels": n, "ms": ms} for k, (n, ms) in cats.items()},
            "by_kernel": {k: {"kernels": n, "ms": ms} for k, (n, ms) in kernels.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("other")
    ap.add_argument("--names", nargs=2, default=["base", "other"])
    ap.add_argument("--json")
    a = ap.parse_args()
    s = {n: summary(replayed_step(read_kernel_times(p))) for n, p in zip(a.names, (a.base, a.other))}
    b, o = (s[n]["by_kernel"] for n in a.names)
    diff = {k: o.get(k, {"ms": 0})["ms"] - b.get(k, {"ms": 0})["ms"] for k in set(b) | set(o)}
    out = {"steps": s, "other_minus_base_ms": dict(sorted(diff.items(), key=lambda kv: kv[1]))}
    for n in a.names:
        print(f"{n}: {s[n]['kernels']} kernels, {s[n]['kernel_time_ms']:.3f} ms")
    for k, d in out["other_minus_base_ms"].items():
        if abs(d) > 0.005:
            print(f"  {d * 1e3:+8.1f} us  {k[:90]}")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
