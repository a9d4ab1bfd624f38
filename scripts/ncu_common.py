"""Shared by the ncu_*_breakdown.py scripts: reading an Nsight Compute CSV
(--metrics gpu__time_duration.sum --csv --print-units base) and naming our fused kernels."""
import csv
import gzip


def read_kernel_times(path):
    """[(kernel name, duration in ms)] in launch order (the CSV may be gzipped)."""
    f = gzip.open(path, "rt") if path.endswith(".gz") else open(path)
    rows = [r for r in csv.DictReader(l for l in f if l.startswith('"'))
            if r.get("Metric Name", "gpu__time_duration.sum") == "gpu__time_duration.sum"]
    return [(r["Kernel Name"], float(r["Metric Value"].replace(",", "")) / 1e6) for r in rows]


def fused_category(name):
    """The category of one of our fused small-op kernels (kernels/fused_ops.cu), else None."""
    n = name.lower()
    if "rms_norm" in n:
        return "RMSNorm (+ residual add), fused"
    if "rotary_kernel" in n:
        return "RoPE, fused"
    if "gated_kernel" in n:
        return "SiLU x up, fused"
    return None


def is_gemm(name):
    n = name.lower()
    return any(k in n for k in ("gemv", "gemm", "cutlass", "sm90", "xmma", "nvjet", "splitkreduce"))
