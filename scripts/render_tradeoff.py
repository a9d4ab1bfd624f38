"""Renders the trade-off of scripts/tradeoff_sweep.sh (its OUT/tradeoff.json, committed as
bench/results/tradeoff-smollm2-<gpu>.json): a Markdown section (learning-rate sweep, then per
dataset the rows mean ± sd over seeds: held-out loss, gap to fine-tuning, KV bytes per token,
decode time on the 8B shape, and what the numbers say against the issue's targets) written into
docs/results.md between the markers below (appended when they are missing), and a PNG of the gap
against the KV saving. Usage:
  render_tradeoff.py TRADEOFF_JSON [--md docs/results.md] [--png docs/tradeoff_smollm2.png]
A smoke run's JSON (TRADEOFF_SMOKE=1) is refused unless --allow-smoke, so that its meaningless
numbers cannot land in the docs by accident."""
import argparse
import json
import os
import statistics
import sys

BEGIN = "<!-- tradeoff:begin (scripts/render_tradeoff.py) -->"
END = "<!-- tradeoff:end -->"
TRAININGS = ["two-stage", "two-stage + distillation"]
DS_LABEL = {"pmc": "PMC-LLaMA instructions", "tulu": "Tulu-3 SFT (filtered)"}
# Issue 14's targets, as gaps to fine-tuning in nats.
TARGETS = [(11, None, "two-stage + distillation", 0.45), (6, "searched", None, 0.25)]


def mean_sd(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, 0
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def fmt(m, sd, n, f="{:.3f}"):
    if m is None:
        return "-"
    return f.format(m) + (" ± " + "{:.3f}".format(sd) if n > 1 else "")


def groups(doc):
    """(dataset, followers, spec_kind, training) -> rows of the seeds, in table order."""
    out = {}
    for r in doc["rows"]:
        key = (r["dataset"], r["followers"], r["spec_kind"], r["training"])
        out.setdefault(key, []).append(r)
    return out


def decode_for(doc, followers):
    """The decode row of the 8B shape with the same fraction of followers (nearest)."""
    dec = [d for d in doc.get("decode", []) if d["variant"] != "none"]
    if not dec or followers == 0:
        return next((d for d in doc.get("decode", []) if d["variant"] == "none"), None)
    frac = followers / doc["num_layers"]
    return min(dec, key=lambda d: abs(d["followers"] / d["layers"] - frac))


def kv_none(doc):
    return doc.get("kv_bytes_per_token", {}).get("none")


def summary(doc):
    """One record per table row: dataset, followers, kind, training, spec(s), stats."""
    out = []
    for (ds, f, kind, training), rs in sorted(
            groups(doc).items(),
            key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "fixed", kv[0][3] != "two-stage")):
        loss = mean_sd([r["heldout_loss"] for r in rs])
        gap = mean_sd([r["gap_to_ft"] for r in rs])
        kv = next((r["kv_bytes_per_token"] for r in rs if r["kv_bytes_per_token"]), None)
        out.append({"dataset": ds, "followers": f, "kind": kind, "training": training,
                    "spec": rs[0]["spec"], "loss": loss, "gap": gap, "kv": kv,
                    "seeds": sorted(r["seed"] for r in rs if r["heldout_loss"] is not None)})
    return out


def sweep_lines(doc):
    if not doc.get("sweep"):
        return ["The learning rate %s was given (no sweep)." % doc["lr_text"], ""]
    lines = ["**Learning rate.** The sweep (%s) gave, in held-out loss:" % doc["sweep_note"], "",
             "| lr | fine-tuning | two-stage (11 followers) | mean |", "|---|---|---|---|"]
    for s in doc["sweep"]:
        cell = lambda v: "-" if v is None else "%.3f" % v
        mark = " (chosen)" if s["mean"] is not None and float(s["lr"]) == doc["lr"] else ""
        lines.append("| %s%s | %s | %s | %s |" % (s["lr"], mark, cell(s["ft"]),
                                                  cell(s["two_stage"]), cell(s["mean"])))
    return lines + [""]


def table_lines(doc, rows, ds):
    base_kv = kv_none(doc)
    none_dec = decode_for(doc, 0)
    ds_ = doc.get("decode_settings", {})
    case = "%s %s" % ({"llama8b": "8B"}.get(ds_.get("model"), ds_.get("model", "")),
                      ds_.get("case", ""))
    lines = ["### %s" % DS_LABEL.get(ds, ds), "",
             "| followers | SuperBlocks | training | seeds | held-out loss | gap to fine-tuning "
             "| KV bytes/token | KV saved | decode ms, %s |" % case,
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["dataset"] != ds:
            continue
        kv = r["kv"]
        saved = "-" if not (kv and base_kv) else "%.1f%%" % (100 * (1 - kv / base_kv))
        d = decode_for(doc, r["followers"])
        dec = "-"
        if d:
            dec = "%.2f" % d["decode_step_ms"]
            if d["variant"] != "none" and none_dec:
                dec += " (%.3fx, %d/%d layers)" % (d["decode_step_ms"] / none_dec["decode_step_ms"],
                                                   d["followers"], d["layers"])
        label = "fine-tuning" if r["followers"] == 0 else "%s `%s`" % (r["kind"], r["spec"])
        lines.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["followers"], label, r["training"] if r["followers"] else "one stage, 2 epochs",
            ",".join(map(str, r["seeds"])) or "-", fmt(*r["loss"]),
            "-" if r["followers"] == 0 else fmt(*r["gap"], f="{:+.3f}"),
            "-" if kv is None else str(kv), saved, dec))
    return lines + [""]


def findings(doc, rows):
    out = ["**What the tables say** (gaps are means over the seeds shown):", ""]
    for ds in doc["datasets"]:
        rs = [r for r in rows if r["dataset"] == ds and r["followers"] and r["gap"][0] is not None]
        if not rs:
            continue
        for f, kind, training, target in TARGETS:
            cand = [r for r in rs if r["followers"] == f and (kind is None or r["kind"] == kind)
                    and (training is None or r["training"] == training)]
            if not cand:
                continue
            best = min(cand, key=lambda r: r["gap"][0])
            gap = best["gap"][0]
            verdict = ("within the target of %.2f nats" % target if gap <= target else
                       "%.3f nats short of the target of %.2f" % (gap - target, target))
            out.append("- %s, %d followers: the best %s row (%s `%s`, %s) ends %.3f nats behind "
                       "fine-tuning, %s." % (ds.upper(), f, (kind or "") + (" " if kind else "")
                                              + (training or "unified"), best["kind"],
                                              best["spec"], best["training"], gap, verdict))
            for other in sorted({r["kind"] for r in cand} - {best["kind"]}) if kind is None else []:
                r = min((r for r in cand if r["kind"] == other), key=lambda r: r["gap"][0])
                out.append("  The %s layout (`%s`, %s): %+.3f, %s." % (
                    other, r["spec"], r["training"], r["gap"][0],
                    "also within it" if r["gap"][0] <= target else
                    "%.3f nats short" % (r["gap"][0] - target)))
        for f in sorted({r["followers"] for r in rs}):
            by = {(r["kind"], r["training"]): r["gap"][0] for r in rs if r["followers"] == f}
            parts = []
            for tr in TRAININGS:
                if ("fixed", tr) in by and ("searched", tr) in by:
                    parts.append("searched minus fixed %+.3f (%s)" % (
                        by[("searched", tr)] - by[("fixed", tr)], tr))
            for kind in ("fixed", "searched"):
                if (kind, TRAININGS[0]) in by and (kind, TRAININGS[1]) in by:
                    parts.append("distillation %+.3f (%s)" % (
                        by[(kind, TRAININGS[1])] - by[(kind, TRAININGS[0])], kind))
            if parts:
                out.append("- %s, %d followers: %s." % (ds.upper(), f, "; ".join(parts)))
    missing = [r for r in rows if len(r["seeds"]) < len(doc["seeds"])]
    if missing or doc.get("skipped") or doc.get("failed"):
        out.append("- Not every row has every seed (%s): %d runs were skipped (not started "
                   "within the run's %.0f s budget, or a run they need did not finish) and %d "
                   "failed; the seeds column shows what each row has."
                   % (",".join(map(str, doc["seeds"])), len(doc.get("skipped", [])),
                      doc["budget_s"], len(doc.get("failed", {}))))
    return out + [""]


def section(doc, json_path):
    rows = summary(doc)
    searched = doc["specs"]["searched"]
    lines = [BEGIN, "", "## The trade-off: how many layers to unify, which, and how to train them",
             "",
             "Generated by `scripts/render_tradeoff.py` from `%s`; do not edit by hand. "
             "GPU: %s, commit `%s`." % (json_path, doc["gpu"], doc["commit"]), "",
             "Command: `%s`" % doc["command"], "",
             "SmolLM2-135M-Instruct (%s) on %s, %d training / %d held-out records each, max length "
             "%d, global batch %d, AdamW with cosine decay, lr %s for every row (both stages). "
             "Fine-tuning: one stage of 2 epochs. Two-stage: W_c only, then everything, 1 epoch "
             "each, from W_c calibrated on the training split. Distillation: KL to the fine-tuned "
             "model of the same seed on the response tokens, weight 0.5, temperature 1. Held-out "
             "loss as in the table above (response tokens, `uniattn-eval --heldout`); gap = "
             "held-out loss minus fine-tuning's of the same seed. Mean ± sd over seeds." % (
                 doc["model"], " and ".join(DS_LABEL.get(d, d) for d in doc["datasets"]),
                 doc["recipe"]["train_records"], doc["recipe"]["heldout_records"],
                 doc["recipe"]["max_length"], doc["recipe"]["global_batch"], doc["lr_text"]), "",
             "SuperBlocks: *fixed* = %s (%s); *searched* = `uniattn-analyze search --followers N` "
             "on the training split (%d records calibrate, the next %d score; best of the verified "
             "specs): %s. KV bytes per token: `uniattn-generate --bench` (bf16 cache). Decode: "
             "`uniattn-bench` on the LLaMA-3.1-8B shape (%s, random weights), the nearest layout "
             "with the same fraction of followers (%s)." % (
                 ", ".join("%s: `%s`" % (n, s) for n, s in doc["specs"]["fixed"].items()),
                 doc["specs"]["fixed_rule"], doc["search_settings"]["calib_records"],
                 doc["search_settings"]["heldout_records"],
                 "; ".join("%s %s" % (ds, ", ".join("%s: `%s`" % (n, s) for n, s in m.items()))
                           for ds, m in searched.items()),
                 doc["decode_settings"]["case"], doc["decode_settings"]["layout"]), ""]
    if doc.get("specs_from"):
        sf = doc["specs_from"]
        lines += ["The learning-rate sweep and the searched SuperBlocks come from the run at `%s` "
                  "(`%s`); every row below was trained, calibrated and evaluated at `%s`." % (
                      sf["commit"], sf["file"], doc["commit"]), ""]
    lines += sweep_lines(doc)
    for ds in doc["datasets"]:
        lines += table_lines(doc, rows, ds)
    lines += findings(doc, rows)
    lines += ["![gap to fine-tuning against KV saving](tradeoff_smollm2.png)", "", END]
    return "\n".join(lines) + "\n"


def write_md(md_path, text):
    old = open(md_path).read() if os.path.exists(md_path) else ""
    if BEGIN in old and END in old:
        a = old.index(BEGIN)
        b = old.index(END) + len(END)
        new = old[:a] + text.rstrip("\n") + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(md_path, "w") as f:
        f.write(new)


def plot(doc, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = summary(doc)
    base_kv = kv_none(doc)
    dss = list(doc["datasets"])
    fig, axes = plt.subplots(1, len(dss), figsize=(5.5 * len(dss), 4.2), squeeze=False)
    style = {("fixed", "two-stage"): ("o-", "C0"), ("fixed", "two-stage + distillation"): ("o--", "C0"),
             ("searched", "two-stage"): ("s-", "C1"),
             ("searched", "two-stage + distillation"): ("s--", "C1")}
    for ax, ds in zip(axes[0], dss):
        for (kind, training), (marker, color) in style.items():
            pts = sorted((100 * (1 - r["kv"] / base_kv), r["gap"][0], r["gap"][1])
                         for r in rows if r["dataset"] == ds and r["kind"] == kind
                         and r["training"] == training and r["gap"][0] is not None
                         and r["kv"] and base_kv)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                            fmt=marker, color=color, capsize=3, label="%s, %s" % (kind, training))
        for f, _, training, target in TARGETS:
            ax.axhline(target, color="grey", lw=0.6, ls=":")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title("SmolLM2-135M on %s" % DS_LABEL.get(ds, ds))
        ax.set_xlabel("KV cache saved vs the unmodified model (%)")
        ax.set_ylabel("held-out loss gap to fine-tuning (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("UniAttn trade-off (%s, commit %s)%s" % (doc["gpu"], doc["commit"][:7],
                                                          " SMOKE" if doc.get("smoke") else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def merge(docs):
    """One document from runs of the same grid: the first run's settings, sweep and specs; rows
    by (dataset, seed, spec kind, followers, training), a later run's result replacing an earlier
    one's; skipped/failed only where no run has the result."""
    doc = dict(docs[0])
    for d in docs[1:]:
        if d["lr"] != doc["lr"] or d["specs"] != doc["specs"]:
            sys.exit("runs to merge must share lr and SuperBlocks (use SPECS_FROM=<first run>)")
    rows = {}
    for d in docs:
        for r in d["rows"]:
            key = (r["dataset"], r["seed"], r["spec_kind"], r["followers"], r["training"])
            if r["heldout_loss"] is not None or key not in rows:
                rows[key] = r
    doc["rows"] = list(rows.values())
    have = {r["run"] for r in doc["rows"] if r["heldout_loss"] is not None}
    doc["skipped"] = sorted({n for d in docs for n in d.get("skipped", [])} - have)
    doc["failed"] = {n: e for d in docs for n, e in d.get("failed", {}).items() if n not in have}
    doc["seeds"] = sorted({s for d in docs for s in d["seeds"]})
    for k in ("gpu", "commit", "command"):
        vals = list(dict.fromkeys(d[k] for d in docs))
        doc[k] = vals[0] if len(vals) == 1 else " ; ".join(vals)
    doc["decode"] = next((d["decode"] for d in docs if d.get("decode")), [])
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+", help="tradeoff.json files of one or more runs "
                    "(e.g. seed 1, then SPECS_FROM=... SEEDS='2 3'); merged")
    ap.add_argument("--md", default="docs/results.md")
    ap.add_argument("--png", default="docs/tradeoff_smollm2.png")
    ap.add_argument("--json-name", help="path named in the docs (default: the JSON's path)")
    ap.add_argument("--allow-smoke", action="store_true")
    a = ap.parse_args()
    docs = [json.load(open(p)) for p in a.json]
    for p, d in zip(a.json, docs):
        if d.get("smoke") and not a.allow_smoke:
            sys.exit("%s is a smoke run (TRADEOFF_SMOKE=1); refusing to render it into the docs "
                     "(--allow-smoke renders it anyway, e.g. into a copy)" % p)
    doc = merge(docs)
    text = section(doc, a.json_name or ", ".join(a.json))
    write_md(a.md, text)
    plot(doc, a.png)
    print(text)
    print("wrote %s and %s" % (a.md, a.png))


if __name__ == "__main__":
    main()
