#!/usr/bin/env python3
"""Renders docs/performance.md from the benchmark JSON files in bench/results/.

Reads bench-*.json (uniattn-bench), peer-*.json (scripts/bench_peer.py, the compiled PyTorch
peer), transformers-*.json (scripts/bench_transformers.py), kernels-*.json (the kernel
micro-benchmark) and ncu-*.json (profiles). Files sharing a "run" id (scripts/bench_h200.sh gives
one to everything it runs) form one run; files without one (older results) form one run per GPU.
Each case gets one table with a row per run and variant, side by side across GPUs: the mean time
with its spread, the roofline fraction with the ceilings it was computed from (measured in that
run, or, for files without a "ceilings" object, the H100 constants 3.0 TB/s and 800 TFLOP/s),
and time ratios against `none` and the peers measured in the same run. The performance targets
are marked met / missed per run.

  .venv/bin/python scripts/render_performance.py [--results bench/results] [--out docs/performance.md]
  python3 scripts/render_performance.py --results OUT --out OUT/performance.md --summary
"""
import argparse
import glob
import json
import os
import re
from collections import OrderedDict

VARIANT_ORDER = ["none", "none_unfused", "uniattn", "softmax", "cla", "torch_compile",
                 "torch_compile_default", "torch_eager", "transformers_sdpa",
                 "transformers_eager"]
METRIC_ORDER = ["ttft_ms", "decode_step_ms", "tokens_per_s", "roofline_fraction", "compile_s",
                "kv_bytes_per_token", "weight_bytes", "max_batch_at_32k", "oom", "error"]
TIME_METRICS = ["ttft_ms", "decode_step_ms"]
# Ratios are taken against these variants of the same run, where present.
REFERENCES = ["none", "torch_compile", "transformers_sdpa"]
# What uniattn-bench and bench_transformers.py assumed before they measured the device.
CONSTANT_CEILINGS = {"method": "constants", "copy_gb_per_s": 3000.0, "gemm_tflop_per_s": 800.0}
RESULT_KINDS = ("bench", "peer", "transformers")


class Run:
    """Result files measured together: one "run" id, or (older files) one GPU."""

    def __init__(self, key, gpu):
        self.key, self.gpu = key, gpu
        self.sources = []  # (file, commit, command, ceilings)
        self.rows = OrderedDict()  # (case, variant, metric) -> row (with "_ceilings")

    @property
    def label(self):
        return self.gpu if self.key == self.gpu else f"{self.gpu} ({self.key})"


def load(results_dir):
    """[Run] in file order, and the kernels documents."""
    runs = OrderedDict()
    kernels = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        base = os.path.basename(path)
        kind = base.split("-")[0]
        if kind not in RESULT_KINDS + ("kernels",):
            continue
        with open(path) as f:
            doc = json.load(f)
        if kind == "kernels":
            kernels.append((base, doc))
            continue
        gpu = doc.get("gpu", "?")
        key = doc.get("run") or gpu
        run = runs.setdefault(key, Run(key, gpu))
        ceilings = doc.get("ceilings") or CONSTANT_CEILINGS
        run.sources.append((base, doc.get("commit", "?"), doc.get("command", "?"), ceilings))
        for r in doc.get("rows", []):
            run.rows[(r["case"], r["variant"], r["metric"])] = dict(r, _ceilings=ceilings)
    return list(runs.values()), kernels


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


def fmt_time(row):
    """'104.70 +- 0.31 (n=3)' or, for older rows without a spread, '104.70'."""
    if row is None or row.get("value") is None or row["value"] == -1:
        return "-"
    v = row["value"]
    text = f"{v:.2f}" if v >= 1 else f"{v:.4f}"
    if row.get("n"):
        text += f" ± {row.get('stdev') or 0:.2f} (n={row['n']})"
    return text


def case_key(case):
    """Sort: model, memory first, then prefill, decode; by S then B."""
    parts = case.split("/")
    kinds = {"memory": 0, "prefill": 1, "decode": 2, "build": 3}
    nums = [int(x) for x in re.findall(r"=(\d+)", case)]
    return (parts[0], kinds.get(parts[1] if len(parts) > 1 else "", 9), nums)


def variant_key(v):
    return (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def value(rows, case, variant, metric):
    r = rows.get((case, variant, metric))
    if r is None or r.get("value") is None or r["value"] == -1:
        return None
    return r["value"]


def ceilings_text(c, which):
    """The ceiling a roofline used: copy bandwidth (decode) or GEMM rate (prefill)."""
    if which == "decode":
        num = f"{c.get('copy_gb_per_s', 0):,.0f} GB/s"
    else:
        num = f"{c.get('gemm_tflop_per_s', 0):,.0f} TFLOP/s"
    method = c.get("method", "?")
    return num + (" (H100 constants)" if method == "constants" else f" ({method})")


def render_sources(runs):
    body = []
    for run in runs:
        for base, commit, command, c in run.sources:
            if c.get("method") == "constants":
                ceil = "constants: 3,000 GB/s, 800 TFLOP/s (not measured)"
            else:
                ceil = (f"{c.get('method')}: copy {c.get('copy_gb_per_s', 0):,.0f} ± "
                        f"{c.get('copy_gb_per_s_stdev', 0):,.0f} GB/s, "
                        f"{c.get('gemm_dtype', '')} GEMM {c.get('gemm_tflop_per_s', 0):,.1f} ± "
                        f"{c.get('gemm_tflop_per_s_stdev', 0):,.1f} TFLOP/s")
            body.append([run.gpu, run.key if run.key != run.gpu else "-", f"`{base}`",
                         f"`{commit[:12]}`", ceil, f"`{command}`"])
    return table(["GPU", "run", "file", "commit", "ceilings", "command"], body)


def time_row_cells(run, case, variant, tm, refs):
    rows = run.rows
    t = rows.get((case, variant, tm))
    rf = rows.get((case, variant, "roofline_fraction"))
    kind = "decode" if tm == "decode_step_ms" else "prefill"
    cells = [fmt_time(t)]
    if kind == "decode":
        cells.append(fmt(value(rows, case, variant, "tokens_per_s"), "tokens_per_s"))
    cells.append("-" if rf is None else fmt(rf.get("value"), "roofline_fraction"))
    cells.append("-" if rf is None else ceilings_text(rf["_ceilings"], kind))
    x = value(rows, case, variant, tm)
    for ref in refs:
        base = value(rows, case, ref, tm)
        cells.append("-" if x is None or base is None else f"{x / base:.3f}x")
    cs = value(rows, case, variant, "compile_s")
    notes = [f"compile {cs:.0f} s" if cs is not None else None]
    for m in ("oom", "error"):
        r = rows.get((case, variant, m))
        if r is not None:
            notes.append(("OOM" if m == "oom" else "error") + (f": {r['note']}" if r.get(
                "note") else ""))
    if t is not None and t.get("note"):
        notes.append(t["note"])
    cells.append("; ".join(n.replace("|", "/").replace("\n", " ")[:160] for n in notes if n))
    return cells


def render_case(runs, case):
    in_case = [(run, sorted({k[1] for k in run.rows if k[0] == case}, key=variant_key))
               for run in runs]
    in_case = [(run, vs) for run, vs in in_case if vs]
    if case.split("/")[1:2] == ["memory"]:
        metrics = ["kv_bytes_per_token", "weight_bytes", "max_batch_at_32k"]
        body = [[run.label, v] + [fmt(value(run.rows, case, v, m), m) for m in metrics]
                for run, vs in in_case for v in vs]
        notes = sorted({r["note"] for run, _ in in_case for k, r in run.rows.items()
                        if k[0] == case and r.get("note")})
        return table(["GPU", "variant"] + metrics, body) + "".join(
            f"\n\n- note: {n}" for n in notes)
    tm = next((m for m in TIME_METRICS if any((case, v, m) in run.rows or (case, v, "oom")
                                              in run.rows or (case, v, "error") in run.rows
                                              for run, vs in in_case for v in vs)), None)
    if tm is None:
        return "no timed rows"
    refs = [ref for ref in REFERENCES
            if any(value(run.rows, case, ref, tm) is not None for run, _ in in_case)]
    header = ["GPU", "variant", f"{tm} (mean ± sd)"]
    if tm == "decode_step_ms":
        header.append("tokens/s")
    header += ["roofline", "ceiling used"] + [f"/ {r}" for r in refs] + ["notes"]
    body = [[run.label, v] + time_row_cells(run, case, v, tm, refs)
            for run, vs in in_case for v in vs]
    return table(header, body)


def render_cases(runs):
    cases = sorted({k[0] for run in runs for k in run.rows}, key=case_key)
    return "\n\n".join(f"### {case}\n\n" + render_case(runs, case) for case in cases)


def followers(num_layers, size=4):
    """Followers of the benchmarked layout (groups of `size` over the second half)."""
    begin, end = num_layers // 2, num_layers
    return sum(1 for i in range(begin, end) if (i - begin) % size != 0)


NUM_LAYERS = {"llama8b": 32, "smollm2": 30}


def status(ok):
    return "no data" if ok is None else ("**met**" if ok else "**missed**")


def ratio_target(rows, case, label, limit):
    u, n = value(rows, case, "uniattn", "decode_step_ms"), value(rows, case, "none",
                                                                  "decode_step_ms")
    r = None if u is None or n is None else u / n
    return [f"{label}: uniattn <= {limit:.2f}x none", "uniattn",
            "-" if r is None else f"{r:.3f}x", status(None if r is None else r <= limit)]


def render_targets(rows):
    """The speed targets (issue 16, LLaMA-3.1-8B shape), judged on one run's rows."""
    models = sorted({k[0].split("/")[0] for k in rows}, key=lambda m: (m != "llama8b", m))
    out = []
    for model in models:
        lines = []
        d1, d8, d32 = (f"{model}/decode/S=512/B=1", f"{model}/decode/S=16384/B=8",
                       f"{model}/decode/S=4096/B=32")
        f = value(rows, d1, "none", "roofline_fraction")
        lines.append(["decode B=1, S=512 >= 85% of the copy-bandwidth roofline", "none",
                      fmt(f, "roofline_fraction"), status(None if f is None else f >= 0.85)])
        lines.append(ratio_target(rows, d1, "decode B=1, S=512", 1.00))
        lines.append(ratio_target(rows, d8, "decode B=8, S=16384", 0.90))
        lines.append(ratio_target(rows, d32, "decode B=32, S=4096", 0.90))
        f = value(rows, d8, "cla", "roofline_fraction")
        lines.append(["decode B=8, S=16384: cla >= 80% of its roofline", "cla",
                      fmt(f, "roofline_fraction"), status(None if f is None else f >= 0.80)])
        p4 = f"{model}/prefill/S=4096/B=1"
        peer = value(rows, p4, "torch_compile", "ttft_ms")
        for v in ("none", "uniattn", "cla"):
            t = value(rows, p4, v, "ttft_ms")
            ok = None if t is None else t <= 85.0 and (peer is None or t < peer)
            lines.append(["TTFT S=4096 <= 85 ms and below the compiled peer", v,
                          "-" if t is None else f"{t:.2f} ms (peer: "
                          + ("-" if peer is None else f"{peer:.2f} ms") + ")", status(ok)])
        # UniAttn's prefill saves the followers' q/k projections: its time must drop by at least
        # that share of the GEMM FLOPs (roofline time = fraction x time, same ceilings).
        tn, tu = value(rows, p4, "none", "ttft_ms"), value(rows, p4, "uniattn", "ttft_ms")
        fn, fu = (value(rows, p4, "none", "roofline_fraction"),
                  value(rows, p4, "uniattn", "roofline_fraction"))
        if None not in (tn, tu, fn, fu):
            bound = tn * (fu * tu) / (fn * tn)
            lines.append(["TTFT S=4096: uniattn <= none x (its GEMM FLOPs / none's)", "uniattn",
                          f"{tu:.2f} vs {bound:.2f} ms", status(tu <= bound)])
        else:
            lines.append(["TTFT S=4096: uniattn <= none x (its GEMM FLOPs / none's)", "uniattn",
                          "-", status(None)])
        mem = f"{model}/memory"
        ku, kn = value(rows, mem, "uniattn", "kv_bytes_per_token"), value(
            rows, mem, "none", "kv_bytes_per_token")
        layers = NUM_LAYERS.get(model)
        if ku is not None and kn is not None and layers:
            want = 1 - followers(layers) / (2 * layers)
            got = ku / kn
            lines.append([f"KV bytes uniattn/none = 1 - followers/(2 layers) = {want:.4f}",
                          "uniattn", f"{got:.4f}", status(abs(got - want) < 1e-9)])
        out.append(f"### {model}\n\n" + table(["target", "variant", "measured", "status"], lines))
    return "\n\n".join(out)


def render_summary(run, model="llama8b"):
    """The run's times as in the issue: a row per case, a column per variant."""
    rows = run.rows
    cases = sorted({k[0] for k in rows if k[0].startswith(model + "/")
                    and k[2] in TIME_METRICS}, key=case_key)
    variants = sorted({k[1] for k in rows if k[0] in cases}, key=variant_key)
    if not cases:
        return ""
    body = []
    for case in cases:
        tm = "ttft_ms" if "prefill/" in case.split("/", 1)[1] else "decode_step_ms"
        line = [case.split("/", 1)[1]]
        for v in variants:
            t = value(rows, case, v, tm)
            rf = value(rows, case, v, "roofline_fraction")
            line.append("-" if t is None else f"{t:.2f}" + (f" ({100 * rf:.0f}%)" if rf else ""))
        n, u = value(rows, case, "none", tm), value(rows, case, "uniattn", tm)
        line.append("-" if n is None or u is None else f"{u / n:.3f}x")
        body.append(line)
    return table(["case (ms, roofline %)"] + variants + ["uniattn / none"], body)


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
    runs, kernels = load(results_dir)
    parts = ["# Performance",
             "Generated by `scripts/render_performance.py` from `bench/results/*.json`; do not edit "
             "by hand. Models have random bf16 weights of the named dimensions (speed does not "
             "depend on the values); SuperBlocks are groups of 4 over the second half of the "
             "layers (LLaMA-3.1-8B: layers 16-31, 12 followers). `scripts/bench_h200.sh` runs "
             "uniattn-bench and the compiled PyTorch peer (`scripts/bench_peer.py`, variant "
             "`torch_compile`) in one go; rows from different GPUs stand side by side.",
             "Definitions: TTFT = prefill of B x S tokens into an empty KV cache plus the greedy "
             "first token, wall clock. Decode step = one token per sequence over a cache holding "
             "S tokens; uniattn-bench replays a captured CUDA graph, the peer replays "
             "torch.compile's CUDA graphs (mode reduce-overhead), transformers runs eager steps "
             "over a StaticCache. Times with a spread are the mean ± sample standard deviation "
             "of n repetitions (decode: n windows of steps); older rows without one are a "
             "median (TTFT) or a mean over one window (decode). Ceilings: each program measures "
             "the device at its start (a device-to-device copy, counting bytes read and written; "
             "a large square matmul in the benchmark's dtype); older files without measured "
             "ceilings used the H100 constants 3.0 TB/s and 800 TFLOP/s, marked as such. Decode "
             "roofline = (parameter bytes read, i.e. all but an untied input-embedding table, + "
             "KV-cache bytes of B x S tokens) / copy bandwidth; prefill roofline = 2 x (GEMM "
             "parameters x B x S + lm_head x B) / GEMM rate (attention FLOPs not counted). "
             "roofline = roofline time / measured time. Ratios (/ none, / torch_compile, / "
             "transformers_sdpa) divide by that variant's time in the same run. "
             "max_batch_at_32k = floor((GPU memory - weights - 4 GiB) / (KV bytes per token x "
             "32768))."]
    if not runs and not kernels:
        parts.append("No results yet: run `scripts/bench_h200.sh` on a GPU.")
    if runs:
        parts.append("## Runs\n\n" + render_sources(runs))
        summaries = [(run, render_summary(run)) for run in runs]
        parts.append("## Summary (llama8b)\n\n" + "\n\n".join(
            f"### {run.label}\n\n{text}" for run, text in summaries if text))
        parts.append("## Targets\n\nThe speed targets for the LLaMA-3.1-8B shape, judged on each "
                     "run's own rows (roofline fractions from that run's ceilings).\n\n"
                     + "\n\n".join(
            f"### {run.label}\n\n" + render_targets(run.rows).replace("### ", "#### ")
            for run in runs))
        parts.append("## Cases\n\n" + render_cases(runs))
    training = render_training(results_dir)
    if training:
        parts.append("## Training throughput\n\nOne H200 or H100, S = 1024, random weights and "
                     "tokens (`scripts/train_throughput.py`); each uniattn-train mode against the "
                     "transformers step that does the same work (`docs/training.md`).\n\n"
                     + training)
    profiles = render_profiles(results_dir)
    if profiles:
        parts.append("## Where the time goes (Nsight Compute)\n\n" + profiles)
    if kernels:
        parts.append("## Kernel micro-benchmarks\n\n" + render_kernels(kernels).replace("### ",
                                                                                       "#### "))
    return "\n\n".join(parts) + "\n"


def summary_text(results_dir):
    """What scripts/bench_h200.sh prints at its end: each run's summary table and targets."""
    runs, _ = load(results_dir)
    out = []
    for run in runs:
        out.append(f"== {run.label}\n" + "\n".join(
            f"{base}: ceilings {ceilings_text(c, 'decode')}, {ceilings_text(c, 'prefill')}"
            for base, _, _, c in run.sources))
        for model in sorted({k[0].split("/")[0] for k in run.rows}):
            out.append(render_summary(run, model))
        out.append(render_targets(run.rows))
    return "\n\n".join(out)


# uniattn-train modes set against the transformers step doing the same work
# (scripts/train_throughput.py).
TRAIN_PAIRS = (("none_bf16_weights", "transformers_sdpa", "bf16_weights"),
               ("none", "transformers_sdpa_amp", "bf16 (autocast)"))
TRAIN_TARGET = 1.2  # issue 16: the 4-layer LLaMA-8B slice at least 1.2x transformers


def render_training(results_dir):
    """train-throughput-*.json: uniattn-train against transformers, tokens/s of one run each."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "train-throughput-*.json"))):
        with open(path) as f:
            d = json.load(f)
        tps = {(r["case"], r["variant"]): r["value"] for r in d.get("rows", [])
               if r.get("metric") == "tokens_per_s"}
        body = []
        for case in sorted({c for c, _ in tps}, key=lambda c: (not c.startswith("llama8b"), c)):
            for ours, theirs, mode in TRAIN_PAIRS:
                # Files from 620ba64 name the full-logits runs (today's default) *_full_logits.
                if (case, ours + "_full_logits") in tps:
                    ours, mode = ours + "_full_logits", mode + ", full logits"
                a, b = tps.get((case, ours)), tps.get((case, theirs))
                if a is None or b is None:
                    continue
                target = "-"
                if case.startswith("llama8b"):
                    target = status(a / b >= TRAIN_TARGET)
                body.append([case, mode, f"{a:,.0f}", f"{b:,.0f}", f"{a / b:.2f}x", target])
        if body:
            out.append(f"### `{os.path.basename(path)}`\n\n{d.get('gpu', '?')}, commit "
                       f"`{d.get('commit', '?')}`, command `{d.get('command', '?')}`\n\n"
                       + table(["case", "mode", "uniattn-train tokens/s", "transformers tokens/s",
                                f"ratio (target >= {TRAIN_TARGET}x on llama8b)", "status"], body))
    return "\n\n".join(out)


def profile_tables(d):
    """{label: categories} of an ncu-*.json: one breakdown, several (train: profiles; prefill:
    breakdowns), or decode comparisons (steps: {"none_vs_x": {"steps": {label: ...}}})."""
    if d.get("breakdown", {}).get("categories"):
        return {"": d["breakdown"]["categories"]}
    tables = {}
    for label, p in (d.get("profiles") or d.get("breakdowns") or {}).items():
        if isinstance(p, dict) and p.get("categories"):
            tables[label] = p["categories"]
    for cmp in (d.get("steps") or {}).values():
        for label, p in (cmp.get("steps") or {}).items() if isinstance(cmp, dict) else ():
            if isinstance(p, dict) and p.get("categories"):
                tables.setdefault(label, p["categories"])
    return tables


def render_profiles(results_dir):
    """ncu-*.json: per-category kernel counts and times of one decode step, prefill or training
    step, side by side where the file holds several programs."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "ncu-*.json"))):
        with open(path) as f:
            d = json.load(f)
        tables = profile_tables(d)
        if not tables:
            continue
        if list(tables) != [""]:
            labels = list(tables)
            cats = sorted({c for t in tables.values() for c in t},
                          key=lambda c: -max(t.get(c, {}).get("ms", 0) for t in tables.values()))
            body = [[c] + [f"{tables[l][c]['ms']:.3f} ({tables[l][c]['kernels']})"
                           if c in tables[l] else "-" for l in labels] for c in cats]
            body.append(["total"] + [f"{sum(v['ms'] for v in tables[l].values()):.3f}"
                                     for l in labels])
            notes = d.get("notes") or d.get("finding") or ""
            out.append(f"### {os.path.basename(path)}\n\n{d.get('gpu', '?')}, commit "
                       f"`{d.get('commit', '?')}`, command `{d.get('command', '?')}`\n\n"
                       f"{notes}\n\n" +
                       table(["category"] + [f"{l}: ms (kernels)" for l in labels], body))
            continue
        cats = tables[""]
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
    ap.add_argument("--summary", action="store_true",
                    help="also print each run's summary table and targets")
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
    if args.summary:
        print(summary_text(args.results))


if __name__ == "__main__":
    main()
