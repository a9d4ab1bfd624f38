#!/usr/bin/env python3
"""Compiled PyTorch peer for uniattn-bench: a plain static-cache LLaMA under torch.compile.

The model is written out in plain PyTorch (no transformers): fused q/k/v and gate/up weights,
RMSNorm in fp32, LLaMA-3 rotary scaling, a static KV cache [B, Hkv, L, D] per layer held as module
buffers, and scaled_dot_product_attention over the live part of the cache only (gpt-fast's
approach: github.com/pytorch-labs/gpt-fast). Decode steps and prefills are compiled with
torch.compile(mode="reduce-overhead", fullgraph=True) (CUDA graphs on a GPU), one static graph
per shape. Weights are random N(0, 0.02) in bf16 (speed does not depend on the values).

The cases, metrics and JSON layout are uniattn-bench's: rows {case, variant, metric, value,
unit, n, stdev, min, max}, variant "torch_compile", and the same device ceilings (copy bandwidth,
GEMM rate) measured the same way at the start of the run, so each roofline fraction is judged
against this process's own measurement. Decode: every timed step writes position S again over a
cache holding S random tokens and attends to S + 1 positions; `--repeats` windows of `--iters`
steps timed with CUDA events. Prefill (TTFT): B x S tokens into an empty cache, last-position
logits, greedy token, wall clock with synchronisation. compile_s rows give the first-call time of
each compiled shape. The JSON is rewritten after every case.

  python3 scripts/bench_peer.py --out bench/results/peer-llama8b-h200.json
  python3 scripts/bench_peer.py --tiny --device cpu --out "$OUT/peer.json"   # CI smoke run
"""
import argparse
import gc
import math
import os
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402
from bench_common import Results, git_commit  # noqa: E402

MODELS = {
    # LLaMA-3.1-8B dimensions, as uniattn-bench's llama8b.
    "llama8b": dict(vocab=128256, dim=4096, ffn=14336, layers=32, heads=32, kv_heads=8,
                    head_dim=128, eps=1e-5, rope_theta=500000.0, rope_factor=8.0,
                    low_freq_factor=1.0, high_freq_factor=4.0, original_max_pos=8192),
    # A few-kilobyte model of the same structure for CPU smoke runs.
    "tiny": dict(vocab=256, dim=64, ffn=96, layers=2, heads=4, kv_heads=2, head_dim=16,
                 eps=1e-5, rope_theta=10000.0, rope_factor=None),
}
CASES = {
    "llama8b": "decode:1:512,decode:8:16384,decode:32:4096,prefill:1:4096,prefill:1:16384",
    "tiny": "decode:2:24,prefill:1:16",
}
VARIANT = {"reduce-overhead": "torch_compile", "default": "torch_compile_default",
           "none": "torch_eager"}


# ---- model ------------------------------------------------------------------------------------

def rope_inv_freq(c):
    """Inverse rotary frequencies [D/2]; with rope_factor, LLaMA-3's band-wise scaling."""
    d = c["head_dim"]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if not c.get("rope_factor"):
        return inv
    factor, lo, hi, old = (c["rope_factor"], c["low_freq_factor"], c["high_freq_factor"],
                           c["original_max_pos"])
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    mid = (1 - smooth) * inv / factor + smooth * inv
    return torch.where(wavelen > old / lo, inv / factor,
                       torch.where(wavelen < old / hi, inv, mid))


class Layer(torch.nn.Module):
    def __init__(self, c, dtype, device):
        super().__init__()
        d, hd = c["dim"], c["head_dim"]
        qkv = (c["heads"] + 2 * c["kv_heads"]) * hd
        p = lambda *shape: torch.nn.Parameter(  # noqa: E731
            torch.empty(shape, dtype=dtype, device=device).normal_(0, 0.02), requires_grad=False)
        ones = lambda: torch.nn.Parameter(  # noqa: E731
            torch.ones(d, dtype=dtype, device=device), requires_grad=False)
        self.attention_norm, self.ffn_norm = ones(), ones()
        self.wqkv, self.wo = p(qkv, d), p(d, c["heads"] * hd)
        self.w13, self.w2 = p(2 * c["ffn"], d), p(d, c["ffn"])
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)


class PeerLlama(torch.nn.Module):
    def __init__(self, c, dtype, device):
        super().__init__()
        self.c = c
        torch.manual_seed(0)
        self.tok_embeddings = torch.nn.Parameter(
            torch.empty(c["vocab"], c["dim"], dtype=dtype, device=device).normal_(0, 0.02),
            requires_grad=False)
        self.layers = torch.nn.ModuleList(Layer(c, dtype, device) for _ in range(c["layers"]))
        self.norm = torch.nn.Parameter(torch.ones(c["dim"], dtype=dtype, device=device),
                                       requires_grad=False)
        self.output = torch.nn.Parameter(
            torch.empty(c["vocab"], c["dim"], dtype=dtype, device=device).normal_(0, 0.02),
            requires_grad=False)
        self.register_buffer("inv_freq", rope_inv_freq(c).float().to(device), persistent=False)
        self.live = 0  # positions attended to by a decode step (a constant of its graph)
        # Decode: SDPA's own GQA (enable_gqa) reads each K/V head once; False repeats K/V heads
        # first (a copy of the live cache per step: the fallback when no fused kernel takes GQA).
        self.native_gqa = True

    def setup_cache(self, batch, length):
        c, p = self.c, self.tok_embeddings
        for layer in self.layers:
            layer.k_cache = layer.v_cache = None
        gc.collect()
        shape = (batch, c["kv_heads"], length, c["head_dim"])
        for layer in self.layers:
            layer.k_cache = torch.empty(shape, dtype=p.dtype, device=p.device).normal_()
            layer.v_cache = torch.empty(shape, dtype=p.dtype, device=p.device).normal_()

    def rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.c["eps"])).to(x.dtype) * w

    def rope(self, x, cos, sin):  # x [B, T, H, D]; rotate-half convention (Hugging Face's)
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def attention(self, layer, h, cos, sin, input_pos, prefill):
        c = self.c
        b, t, _ = h.shape
        nq, nkv, hd = c["heads"], c["kv_heads"], c["head_dim"]
        q, k, v = F.linear(h, layer.wqkv).split([nq * hd, nkv * hd, nkv * hd], dim=-1)
        q = self.rope(q.view(b, t, nq, hd), cos, sin).transpose(1, 2)
        k = self.rope(k.view(b, t, nkv, hd), cos, sin).transpose(1, 2)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        layer.k_cache.index_copy_(2, input_pos, k)
        layer.v_cache.index_copy_(2, input_pos, v)
        if prefill:
            # The cache was empty, so its live part is this prompt; K/V heads repeated (a copy of
            # S x Hq x D per layer, small next to the attention) so that every fused kernel applies.
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(nq // nkv, dim=1),
                                               v.repeat_interleave(nq // nkv, dim=1),
                                               is_causal=True)
        else:  # one query per row sees every live position: no mask
            k, v = layer.k_cache[:, :, :self.live], layer.v_cache[:, :, :self.live]
            if self.native_gqa:
                o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            else:
                o = F.scaled_dot_product_attention(q, k.repeat_interleave(nq // nkv, dim=1),
                                                   v.repeat_interleave(nq // nkv, dim=1))
        return F.linear(o.transpose(1, 2).reshape(b, t, nq * hd), layer.wo)

    def forward(self, tokens, input_pos, prefill: bool):
        """tokens [B, T] int64, input_pos [T] int64 -> last-position logits [B, vocab]."""
        x = F.embedding(tokens, self.tok_embeddings)
        freqs = input_pos.float()[:, None] * self.inv_freq[None, :]
        cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]
        for layer in self.layers:
            x = x + self.attention(layer, self.rms(x, layer.attention_norm), cos, sin, input_pos,
                                   prefill)
            gate, up = F.linear(self.rms(x, layer.ffn_norm), layer.w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.w2)
        return F.linear(self.rms(x[:, -1], self.norm), self.output)


def footprint(model):
    """(param bytes, bytes a decode step reads, GEMM params per token, lm_head params)."""
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    table = model.tok_embeddings
    read = param_bytes - table.numel() * table.element_size()  # untied: B rows of it are read
    matmul = sum(p.numel() for layer in model.layers for p in layer.parameters() if p.dim() == 2)
    return param_bytes, read, matmul, model.output.numel()


def kv_bytes_per_token(c, dtype):
    return 2 * c["layers"] * c["kv_heads"] * c["head_dim"] * torch.finfo(dtype).bits // 8


# ---- device ceilings (as bench/lib/ceilings.cpp) ----------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(device, warmup, iters, fn):
    """Seconds of each of `iters` runs of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) * 1e-3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def summarize(samples):
    n = len(samples)
    mean = sum(samples) / n
    return {"n": n, "mean": mean, "stdev": statistics.stdev(samples) if n > 1 else 0.0,
            "min": min(samples), "max": max(samples)}


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def measure_ceilings(device, gemm_dtype, copy_bytes, gemm_n, warmup, iters):
    """The same measurement as uniattn-bench's measure_ceilings()."""
    with torch.inference_mode():
        src = torch.randint(0, 256, (copy_bytes,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        copy = summarize([2.0 * copy_bytes / max(t, 1e-12)
                          for t in time_runs(device, warmup, iters, lambda: dst.copy_(src))])
        del src, dst
        a = torch.randn(gemm_n, gemm_n, dtype=gemm_dtype, device=device)
        b, out = torch.randn_like(a), torch.empty_like(a)
        flops = 2.0 * gemm_n ** 3
        gemm = summarize([flops / max(t, 1e-12) for t in
                          time_runs(device, warmup, iters, lambda: torch.mm(a, b, out=out))])
    return {"method": "measured", "copy_gb_per_s": copy["mean"] * 1e-9,
            "copy_gb_per_s_stdev": copy["stdev"] * 1e-9,
            "gemm_tflop_per_s": gemm["mean"] * 1e-12,
            "gemm_tflop_per_s_stdev": gemm["stdev"] * 1e-12,
            "copy_bytes": copy_bytes, "gemm_n": gemm_n, "gemm_dtype": dtype_name(gemm_dtype),
            "warmup": warmup, "iters": iters,
            "timer": "cuda events" if device.type == "cuda" else "perf_counter",
            "description": "copy: dst.copy_(src) of copy_bytes, rate = 2 x copy_bytes (read + "
                           "written) / time; GEMM: gemm_n^3 matmul of N(0,1) gemm_dtype inputs, "
                           "rate = 2 gemm_n^3 / time; each run timed on its own after the "
                           "warm-ups; mean and sample standard deviation of the rates"}


# ---- results ----------------------------------------------------------------------------------

def parse_case(spec):
    """'prefill:B:S' or 'decode:B:S' -> (kind, B, S), as uniattn-bench's parse_bench_case."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in ("prefill", "decode") or not all(
            p.isdigit() and 0 < len(p) <= 9 for p in parts[1:]):
        raise ValueError(f"benchmark case '{spec}': expected prefill:BATCH:SEQ or decode:BATCH:SEQ")
    b, s = int(parts[1]), int(parts[2])
    if not (0 < b <= 4096 and 0 < s <= 1 << 20):
        raise ValueError(f"benchmark case '{spec}': batch or sequence out of range")
    return parts[0], b, s


# ---- timing -----------------------------------------------------------------------------------

def compiled(model, mode):
    if mode == "none":
        return model
    return torch.compile(model, mode=None if mode == "default" else mode, fullgraph=True)


def fused_sdpa(device):
    """On a GPU, SDPA may not fall back to its unfused math path (it would materialise the
    scores and, with GQA, copy K/V): a shape no fused kernel takes fails instead."""
    if device.type != "cuda":
        import contextlib
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION])


def probe_native_gqa(device, c, dtype):
    """Whether a fused SDPA kernel takes a decode step's GQA shapes (enable_gqa) here: checked
    once, eagerly, before anything is compiled. Returns (ok, why not)."""
    if device.type != "cuda":
        return True, ""
    q = torch.randn(2, c["heads"], 1, c["head_dim"], dtype=dtype, device=device)
    k = torch.randn(2, c["kv_heads"], 513, c["head_dim"], dtype=dtype, device=device)
    try:
        with fused_sdpa(device):
            F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        torch.cuda.synchronize()
        return True, ""
    except Exception as e:  # no fused kernel: repeat the K/V heads instead
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def call(fn, *args):
    if hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        torch.compiler.cudagraph_mark_step_begin()
    return fn(*args)


def run_decode(model, args, batch, seq, device):
    model.setup_cache(batch, seq + 16)
    model.live = seq + 1
    fn = compiled(model, args.compile)
    tok = torch.randint(model.c["vocab"], (batch, 1), device=device)
    pos = torch.tensor([seq], dtype=torch.long, device=device)
    t0 = time.perf_counter()
    call(fn, tok, pos, False)  # compiles (and, under reduce-overhead, records the graph)
    call(fn, tok, pos, False)
    sync(device)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        call(fn, tok, pos, False)
    windows = time_runs(device, 0, args.repeats,
                        lambda: [call(fn, tok, pos, False) for _ in range(args.iters)])
    return summarize([w * 1e3 / args.iters for w in windows]), compile_s


def run_prefill(model, args, batch, seq, device):
    model.setup_cache(batch, seq)
    fn = compiled(model, args.compile)
    ids = torch.randint(model.c["vocab"], (batch, seq), device=device)
    pos = torch.arange(seq, device=device)

    def once():
        nxt = call(fn, ids, pos, True).argmax(-1)
        sync(device)
        return nxt

    t0 = time.perf_counter()
    once()  # compiles (and, under reduce-overhead, warms up)
    once()  # records the CUDA graph under reduce-overhead
    compile_s = time.perf_counter() - t0
    for _ in range(args.prefill_warmup):
        once()
    times = []
    for _ in range(args.prefill_iters):
        t0 = time.perf_counter()
        once()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times), compile_s


def cudagraph_skips():
    """Compiled graphs that Inductor ran without CUDA graphs so far (its own counter)."""
    try:
        from torch._dynamo.utils import counters
        return sum(counters["inductor"].get(k, 0) for k in ("cudagraph_skips",))
    except Exception:
        return 0


def free(device):
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def guarded(res, case, variant, device, fn):
    return bench_common.guarded(res, case, variant, fn, lambda: free(device), 400)


def run_case(res, model, args, device, fp, name, variant, spec):
    kind, b, s = parse_case(spec)
    case = f"{name}/{kind}/S={s}/B={b}"
    ceil = res.doc["ceilings"]
    skips = cudagraph_skips()
    graphs = args.compile == "reduce-overhead" and device.type == "cuda"
    if kind == "decode":
        model.native_gqa = args.native_gqa
        r = guarded(res, case, variant, device, lambda: run_decode(model, args, b, s, device))
        note = None
        if r is None and device.type == "cuda" and model.native_gqa:
            # No fused kernel took enable_gqa at this shape: repeat the K/V heads instead.
            failed = res.doc["rows"][-1]
            model.native_gqa = False
            r = guarded(res, case, variant, device, lambda: run_decode(model, args, b, s, device))
            if r:
                res.doc["rows"].remove(failed)
                note = "K/V heads repeated before SDPA (enable_gqa: %s)" % failed.get("note", "")
        if r:
            st, compile_s = r
            if graphs and cudagraph_skips() > skips:
                note = ((note + "; ") if note else "") + "Inductor skipped CUDA graphs"
            res.add(case, variant, "decode_step_ms", st["mean"], "ms", note=note, stats=st)
            res.add(case, variant, "tokens_per_s", b * 1e3 / st["mean"], "tokens/s")
            kv = kv_bytes_per_token(model.c, model.tok_embeddings.dtype)
            roof = (fp[1] + kv * b * s) / (ceil["copy_gb_per_s"] * 1e9) * 1e3
            res.add(case, variant, "roofline_fraction", roof / st["mean"], "fraction")
            res.add(case, variant, "compile_s", compile_s, "s")
    else:
        r = guarded(res, case, variant, device, lambda: run_prefill(model, args, b, s, device))
        if r:
            st, compile_s = r
            note = None
            if graphs and cudagraph_skips() > skips:
                note = "Inductor skipped CUDA graphs"
            res.add(case, variant, "ttft_ms", st["mean"], "ms", note=note, stats=st)
            roof = 2.0 * (fp[2] * b * s + fp[3] * b) / (ceil["gemm_tflop_per_s"] * 1e12) * 1e3
            res.add(case, variant, "roofline_fraction", roof / st["mean"], "fraction")
            res.add(case, variant, "compile_s", compile_s, "s")
    res.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model and two small cases")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when present)")
    ap.add_argument("--cases", default=None,
                    help="comma list of prefill:B:S / decode:B:S (default: the issue's five)")
    ap.add_argument("--out", default="bench/results/peer.json")
    ap.add_argument("--compile", choices=list(VARIANT), default="reduce-overhead")
    ap.add_argument("--iters", type=int, default=20, help="decode steps per timed window")
    ap.add_argument("--repeats", type=int, default=5, help="timed decode windows")
    ap.add_argument("--warmup", type=int, default=3, help="untimed decode steps")
    ap.add_argument("--prefill-iters", type=int, default=3)
    ap.add_argument("--prefill-warmup", type=int, default=1)
    ap.add_argument("--run-id", default=os.environ.get("UNIATTN_RUN_ID", ""))
    ap.add_argument("--ceiling-copy-mib", type=int, default=None,
                    help="copied buffer (default: 2048 on a GPU, 64 on the CPU)")
    ap.add_argument("--ceiling-gemm-n", type=int, default=None,
                    help="n of the GEMM (default: 8192 on a GPU, 512 on the CPU)")
    ap.add_argument("--ceiling-iters", type=int, default=10)
    args = ap.parse_args()
    for k in ("iters", "repeats", "prefill_iters", "ceiling_iters"):
        if getattr(args, k) <= 0:
            ap.error(f"--{k.replace('_', '-')} must be positive")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_peer.py: --device cuda but no CUDA GPU is visible")
    name = "tiny" if args.tiny else "llama8b"
    try:
        cases = [c for c in (args.cases or CASES[name]).split(",") if c]
        for c in cases:
            parse_case(c)
    except ValueError as e:
        ap.error(str(e))
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32  # as uniattn-bench --device cpu
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per shape
    torch.set_float32_matmul_precision("high")

    ceilings = measure_ceilings(
        device, dtype, (args.ceiling_copy_mib or (2048 if gpu else 64)) << 20,
        args.ceiling_gemm_n or (8192 if gpu else 512), 3, args.ceiling_iters)
    doc = {"gpu": torch.cuda.get_device_name(device) if gpu else "cpu", "commit": git_commit(),
           "command": shlex.join([os.path.basename(sys.executable)] + sys.argv),
           "dtype": dtype_name(dtype), "ceilings": ceilings, "rows": [],
           "notes": "plain static-cache LLaMA (fused wqkv and w13, fp32 RMSNorm, SDPA over the "
                    "cache's live part, enable_gqa), torch %s, torch.compile(mode=%r, "
                    "fullgraph=True), one static graph per shape; random N(0,0.02) weights"
                    % (torch.__version__, args.compile)}
    if args.run_id:
        doc["run"] = args.run_id
    res = Results(args.out, doc)
    variant = VARIANT[args.compile]
    try:
        with torch.no_grad():
            model = PeerLlama(MODELS[name], dtype, device).eval()
    except torch.OutOfMemoryError as e:
        res.add(f"{name}/build", variant, "oom", -1, "", str(e).splitlines()[0][:200])
        res.flush()
        return 1
    args.native_gqa, why = probe_native_gqa(device, model.c, dtype)
    if not args.native_gqa:
        doc["notes"] += "; decode repeats the K/V heads before SDPA (enable_gqa: %s)" % why
    fp = footprint(model)
    kv = kv_bytes_per_token(model.c, dtype)
    mem = f"{name}/memory"
    res.add(mem, variant, "kv_bytes_per_token", kv, "B",
            "random N(0,0.02) weights, LLaMA-3.1-8B dims" if name == "llama8b" else None)
    res.add(mem, variant, "weight_bytes", fp[0], "B")
    if gpu:
        total = torch.cuda.get_device_properties(device).total_memory
        res.add(mem, variant, "max_batch_at_32k",
                max(0, (total - fp[0] - (4 << 30)) // (kv * 32768)), "sequences")
    res.flush()
    with torch.no_grad(), fused_sdpa(device):
        for spec in cases:
            run_case(res, model, args, device, fp, name, variant, spec)
    print(f"gpu: {doc['gpu']}, ceilings: copy {ceilings['copy_gb_per_s']:.1f} GB/s, GEMM "
          f"{ceilings['gemm_tflop_per_s']:.2f} TFLOP/s; {len(doc['rows'])} rows written to "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
