#!/usr/bin/env python3
"""Renders docs/performance.md from the benchmark JSON files in bench/results/.

Reads bench-*.json (uniattn-bench), transformers-*.json (scripts/bench_transformers.py) and
kernels-*.json (the kernel micro-benchmark). Rows of files measured on the same GPU are merged;
each case gets a table with the variants as columns, time ratios against `none` and against
`transformers_sdpa`, and the performance targets are marked met / missed from the data.

  .venv/bin/python scripts/render_performance.py [--results bench/results] [--out docs/performance.md]
"""
import argparse
import glob
import json
import os
import re
from collections import OrderedDict

VARIANT_ORDER = ["none", "none_unfused", "uniattn", "softmax", "cla", "transformers_sdpa", "transformers_eager"]
METRIC_ORDER = ["ttft_ms", "decode_step_ms", "tokens_per_s", "roofline_fraction",
                "kv_bytes_per_token", "weight_bytes", "max_batch_at_32k", "oom", "error"]
TIME_METRICS = ["ttft_ms", "decode_step_ms"]


def load(results_dir):
    """{gpu: {"sources": [...], "rows": {(case, variant, metric): row}}}, kernels docs."""
    by_gpu = OrderedDict()
    kernels = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        base = os.path.basename(path)
        kind = base.split("-")[0]
        if kind not in ("bench", "transformers", "kernels"):
            continue
        with open(path) as f:
            doc = json.load(f)
        if kind == "kernels":
            kernels.append((base, doc))
            continue
        g = by_gpu.setdefault(doc.get("gpu", "?"), {"sources": [], "rows": OrderedDict()})
        g["sources"].append((base, doc.get("commit", "?"), doc.get("command", "?")))
        for r in doc.get("rows", []):
            g["rows"][(r["case"], r["variant"], r["metric"])] = r
    return by_gpu, kernels


def fmt(v, metric=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if metric in ("oom", "error") or v == -1:
        return "OOM" if metric == "oom" else "error"
    if metric in ("kv_bytes_per_token", "weight_bytes", "max_batch_at_32k"):
        return f"{int(v):,}"
    if metric == "roofline_fraction":
        return f"{100 * v:.1f}%"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:.3f}"


def case_key(case):
    """Sort: model, memory first, then prefill, decode; by S then B."""
    parts = case.split("/")
    kinds = {"memory": 0, "prefill": 1, "decode": 2, "build": 3}
    nums = [int(x) for x in re.findall(r"=(\d+)", case)]
    return (parts[0], kinds.get(parts[1] if len(parts) > 1 else "", 9), nums)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def value(rows, case, variant, metric):
    r = rows.get((case, variant, metric))
    if r is None or r.get("value") is None or r["value"] == -1:
        return None
    return r["value"]


def render_cases(rows):
    cases = sorted({k[0] for k in rows}, key=case_key)
    out = []
    for case in cases:
        variants = sorted({k[1] for k in rows if k[0] == case},
                          key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))
        metrics = sorted({k[2] for k in rows if k[0] == case},
                         key=lambda m: (METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m))
        body = []
        for m in metrics:
            line = [m]
            for v in variants:
                r = rows.get((case, v, m))
                line.append("-" if r is None else fmt(r.get("value"), m))
            body.append(line)
        for tm in TIME_METRICS:
            for ref in ("none", "transformers_sdpa"):
                base = value(rows, case, ref, tm)
                if base is None or not any((case, v, tm) in rows for v in variants if v != ref):
                    continue
                line = [f"{tm} / {ref}"]
                for v in variants:
                    x = value(rows, case, v, tm)
                    line.append("-" if x is None else f"{x / base:.3f}x")
                body.append(line)
        notes = sorted({r["note"] for k, r in rows.items() if k[0] == case and r.get("note")})
        out.append(f"### {case}\n\n" + table(["metric"] + variants, body))
        if notes:
            out.append("\n".join(f"- note: {n}" for n in notes))
    return "\n\n".join(out)


def followers(num_layers, size=4):
    """Followers of the benchmarked layout (groups of `size` over the second half)."""
    begin, end = num_layers // 2, num_layers
    return sum(1 for i in range(begin, end) if (i - begin) % size != 0)


NUM_LAYERS = {"llama8b": 32, "smollm2": 30}


def status(ok):
    return "no data" if ok is None else ("**met**" if ok else "**missed**")


def render_targets(rows):
    models = sorted({k[0].split("/")[0] for k in rows},
                    key=lambda m: (m != "llama8b", m))
    out = []
    for model in models:
        lines = []
        # 1. Decode at B=1 reaches 80% of the HBM roofline.
        case = f"{model}/decode/S=512/B=1"
        for v in ("none", "uniattn", "cla"):
            f = value(rows, case, v, "roofline_fraction")
            lines.append([f"decode B=1, S=512 >= 80% of HBM roofline", v,
                          fmt(f, "roofline_fraction"), status(None if f is None else f >= 0.8)])
        # 2. UniAttn decode at (B=8, S=16384) takes at most 0.90x the time of `none`.
        case = f"{model}/decode/S=16384/B=8"
        u, n = value(rows, case, "uniattn", "decode_step_ms"), value(rows, case, "none",
                                                                      "decode_step_ms")
        r = None if u is None or n is None else u / n
        lines.append(["decode B=8, S=16384: uniattn <= 0.90x none", "uniattn",
                      "-" if r is None else f"{r:.3f}x", status(None if r is None else r <= 0.90)])
        # 3. TTFT at S=4096 below transformers SDPA and within 1.2x of the GEMM roofline.
        case = f"{model}/prefill/S=4096/B=1"
        sdpa = value(rows, case, "transformers_sdpa", "ttft_ms")
        for v in ("none", "uniattn"):
            t = value(rows, case, v, "ttft_ms")
            rf = value(rows, case, v, "roofline_fraction")
            ok1 = None if t is None or sdpa is None else t < sdpa
            lines.append([f"TTFT S=4096 < transformers SDPA", v,
                          "-" if ok1 is None else f"{t:.2f} vs {sdpa:.2f} ms", status(ok1)])
            ok2 = None if rf is None else 1.0 / rf <= 1.2
            lines.append([f"TTFT S=4096 <= 1.2x GEMM roofline", v,
                          "-" if rf is None else f"{1.0 / rf:.2f}x", status(ok2)])
        # 4. KV bytes of UniAttn = none x (1 - followers / (2 * layers)).
        mem = f"{model}/memory"
        ku, kn = value(rows, mem, "uniattn", "kv_bytes_per_token"), value(
            rows, mem, "none", "kv_bytes_per_token")
        layers = NUM_LAYERS.get(model)
        if ku is not None and kn is not None and layers:
            want = 1 - followers(layers) / (2 * layers)
            got = ku / kn
            lines.append([f"KV bytes uniattn/none = 1 - followers/(2 layers) = {want:.4f}",
                          "uniattn", f"{got:.4f}", status(abs(got - want) < 1e-9)])
        else:
            lines.append(["KV bytes uniattn/none = 1 - followers/(2 layers)", "uniattn", "-",
                          status(None)])
        out.append(f"### {model}\n\n" + table(["target", "variant", "measured", "status"], lines))
    return "\n\n".join(out)


def render_kernels(kernels):
    out = []
    for base, doc in kernels:
        rows = doc.get("rows", [])
        metrics = sorted({(r["metric"], r.get("unit", "")) for r in rows})
        out.append(f"### {base} ({doc.get('gpu', '?')}, commit {doc.get('commit', '?')})")
        if doc.get("notes"):
            out.append(doc["notes"])
        for metric, unit in metrics:
            sel = [r for r in rows if r["metric"] == metric]
            cases = list(OrderedDict.fromkeys(r["case"] for r in sel))
            variants = list(OrderedDict.fromkeys(r["variant"] for r in sel))
            vals = {(r["case"], r["variant"]): r["value"] for r in sel}
            body = [[c] + [fmt(vals.get((c, v))) for v in variants] for c in cases]
            out.append(f"{metric} ({unit}):\n\n" + table(["case"] + variants, body))
    return "\n\n".join(out)


def render(results_dir):
    by_gpu, kernels = load(results_dir)
    parts = ["# Performance",
             "Generated by `scripts/render_performance.py` from `bench/results/*.json`; do not edit "
             "by hand. Models have random bf16 weights of the named dimensions (speed does not "
             "depend on the values); SuperBlocks are groups of 4 over the second half of the "
             "layers (LLaMA-3.1-8B: layers 16-31, 12 followers).",
             "Definitions: TTFT = prefill of B x S tokens into an empty KV cache plus the greedy "
             "first token, wall clock, median. Decode step = one token per sequence over a cache "
             "holding S tokens; uniattn-bench replays a captured CUDA graph, transformers runs "
             "eager steps over a StaticCache. Decode roofline = (parameter bytes read, i.e. all "
             "but an untied input-embedding table, + KV-cache bytes of B x S tokens) / 3.0 TB/s; "
             "prefill roofline = 2 x (GEMM parameters x S + lm_head) / 800 TFLOP/s (attention "
             "FLOPs not counted). roofline_fraction = roofline time / measured time. "
             "max_batch_at_32k = floor((GPU memory - weights - 4 GiB) / (KV bytes per token x "
             "32768))."]
    if not by_gpu and not kernels:
        parts.append("No results yet: run `uniattn-bench` and `scripts/bench_transformers.py`.")
    for gpu, g in by_gpu.items():
        parts.append(f"## {gpu}")
        parts.append("\n".join(f"- `{b}`: commit `{c}`, command `{cmd}`"
                               for b, c, cmd in g["sources"]))
        parts.append("### Targets\n\n" + render_targets(g["rows"]).replace("### ", "#### "))
        parts.append("### Cases\n\n" + render_cases(g["rows"]).replace("### ", "#### "))
    profiles = render_profiles(results_dir)
    if profiles:
        parts.append("## Where the time goes (Nsight Compute)\n\n" + profiles)
    if kernels:
        parts.append("## Kernel micro-benchmarks\n\n" + render_kernels(kernels).replace("### ",
                                                                                       "#### "))
    return "\n\n".join(parts) + "\n"


def render_profiles(results_dir):
    """ncu-*.json: per-category kernel counts and times of one decode step or prefill."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "ncu-*.json"))):
        d = json.load(open(path))
        b = d.get("breakdown", {})
        cats = b.get("categories", {})
        if not cats:
            continue
        total = sum(v["ms"] for v in cats.values())
        body = [[k, str(v["kernels"]), f"{v['ms']:.3f}", f"{100 * v['ms'] / total:.1f}%"]
                for k, v in sorted(cats.items(), key=lambda kv: -kv[1]["ms"])]
        out.append(f"### {os.path.basename(path)}\n\n{d.get('gpu', '?')}, commit "
                   f"`{d.get('commit', '?')}`, command `{d.get('command', '?')}`\n\n"
                   f"{d.get('notes', '')}\n\n" +
                   table(["category", "kernels", "ms (ncu, caches flushed)", "share"], body))
    return "\n\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--out", default="docs/performance.md")
    args = ap.parse_args()
    text = render(args.results)
    d = os.path.dirname(args.out)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
