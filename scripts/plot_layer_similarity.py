#!/usr/bin/env python3
"""Heatmap of the attention-map similarity between layers (the UniAttn paper's Figure 2
analogue) from the JSON `uniattn-analyze similarity` writes.

usage: .venv/bin/python scripts/plot_layer_similarity.py SIM.json OUT.png [--per-kv-group]

The left panel is the head-averaged similarity; with --per-kv-group one small panel per KV
head group follows. Candidate groups are outlined in the head-averaged panel.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def draw(ax, m, title, groups=()):
    n = len(m)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    ax.set_title(title, fontsize=9)
    step = 1 if n <= 16 else 2 if n <= 32 else 4
    ax.set_xticks(range(0, n, step))
    ax.set_yticks(range(0, n, step))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    for g in groups:
        lo, hi = min(g), max(g)
        ax.add_patch(Rectangle((lo - 0.5, lo - 0.5), hi - lo + 1, hi - lo + 1, fill=False,
                               edgecolor="red", linewidth=1.2))
    return im


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json")
    ap.add_argument("png")
    ap.add_argument("--per-kv-group", action="store_true")
    a = ap.parse_args()
    with open(a.json) as f:
        j = json.load(f)
    panels = 1 + (len(j["per_kv_group"]) if a.per_kv_group else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 + 3.2 * (panels - 1), 4.6), squeeze=False)
    groups = [g["layers"] for g in j["candidate_groups"]]
    model = j["model"].split("/")[-1]
    im = draw(axes[0][0], j["mean"],
              f"{model}\nhead-averaged cosine of attention maps\n"
              f"{j['records']} records, {j['tokens']} tokens (red: adjacent >= {j['threshold']})",
              groups)
    for g, m in enumerate(j["per_kv_group"] if a.per_kv_group else []):
        draw(axes[0][g + 1], m, f"KV group {g}")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(a.png, dpi=130, bbox_inches="tight")


if __name__ == "__main__":
    main()
