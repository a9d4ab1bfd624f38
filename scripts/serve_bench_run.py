#!/usr/bin/env python3
"""The serving benchmark's driver (scripts/serve_bench_gpu.sh runs it on the GPU machine; it also
runs on a CPU with tiny settings). For each variant it starts uniattn-serve, loads it with
scripts/serve_load.py (closed loop) at each concurrency with --prompt-tokens/--output-tokens, then
with --long-prompt-tokens prompts at the concurrency that fills the KV pool (from /metrics:
uniattn_kv_blocks_total over the blocks one sequence needs), and stops it. Before that,
uniattn-bench's static-batch decode (--static-case, CUDA graphs, no server) gives the rate the
issue's ratio target compares with. Everything runs inside --budget-s: phases are given time caps
from what is left, in priority order, and a phase that no longer fits is recorded as skipped.

Writes OUT/serve-bench.json ({device, commit, command, static, runs: [...], skipped: [...]}),
OUT/static-decode.json (uniattn-bench's own file) and OUT/serve-<variant>.log.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class Server:
    def __init__(self, cmd, logfile, start_timeout):
        self.log = open(logfile, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = None
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                m = re.match(r"listening on (\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(start_timeout)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"uniattn-serve did not start within {start_timeout} s "
                               f"(see {logfile})")

    def metrics(self, tries=50):
        t = serve_load.Target(f"http://127.0.0.1:{self.port}", 30)
        for i in range(tries):
            try:
                return serve_load.parse_metrics(t.get("/metrics")[1])
            except OSError:
                if i == tries - 1:
                    raise
                time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def load_args(url, concurrency, n, prompt, output, max_time, seed, label, per_process):
    # Client processes: one per `per_process` clients, at most half the cores (the server needs
    # the rest).
    processes = max(1, min(-(-concurrency // per_process), (os.cpu_count() or 2) // 2))
    return argparse.Namespace(
        url=url, model="", mode="closed", concurrency=concurrency, rate=1.0, max_in_flight=1024,
        num_requests=n, duration=0, max_time=max_time, prompt_tokens=prompt, output_tokens=output,
        vocab_low=1000, vocab_high=30000, no_ignore_eos=False, seed=seed, metrics_interval=0.25,
        request_timeout=max_time + 60, label=label, processes=processes)


def run_static(a, out, deadline):
    if not a.bench or not a.static_case:
        return None
    left = deadline - time.time()
    if left < 60:
        return {"skipped": "no time left"}
    path = os.path.join(out, "static-decode.json")
    cmd = [a.bench, "--model", a.model, "--variants", ",".join(a.variants), "--cases",
           a.static_case, "--iters", "20", "--repeats", "3", "--warmup", "3",
           "--device", a.device, "--out", path] + a.static_extra.split()
    log("static:", " ".join(cmd))
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=min(left - 30, a.static_cap))
        rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e)[-1000:]
    res = {"command": " ".join(cmd), "exit": rc, "seconds": round(time.time() - t0, 1)}
    if os.path.exists(path):
        rows = json.load(open(path)).get("rows", [])
        res["rows"] = [r for r in rows if "decode/" in r.get("case", "")]
    else:
        res["log_tail"] = tail
    log("static done:", rc, f"{res['seconds']} s")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--bench", default="", help="uniattn-bench (static decode); empty: skip")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--variants", default="none,uniattn,cla")
    ap.add_argument("--model", default="llama8b", help="--random-weights shape")
    ap.add_argument("--serve-model", default="", help="serve this checkpoint instead (--model)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--kv-gb", type=float, default=48)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--max-seqs", type=int, default=128)
    ap.add_argument("--concurrency", default="32,8,1,128", help="in priority order")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=256)
    ap.add_argument("--long-prompt-tokens", type=int, default=16384)
    ap.add_argument("--long-output-tokens", type=int, default=64)
    ap.add_argument("--long-after", type=int, default=0,
                    help="run the long phase after this many concurrency phases (0: first, "
                         "since it takes longest and the issue's 1.15x target rests on it)")
    ap.add_argument("--static-case", default="decode:32:640",
                    help="uniattn-bench case for the static-batch rate (B=32 over 512+256/2)")
    ap.add_argument("--static-extra", default="")
    ap.add_argument("--static-cap", type=float, default=120)
    ap.add_argument("--start-timeout", type=float, default=180)
    ap.add_argument("--clients-per-process", type=int, default=8,
                    help="load generator: closed-loop clients per client process (>= 1)")
    ap.add_argument("--gpu", default="")
    ap.add_argument("--commit", default=os.environ.get("UNIATTN_COMMIT", "unknown"))
    a = ap.parse_args()
    if a.clients_per_process < 1:
        ap.error("--clients-per-process must be >= 1")
    a.variants = a.variants.split(",")
    start = time.time()
    deadline = start + a.budget_s
    os.makedirs(a.out, exist_ok=True)
    result = {"device": a.gpu, "commit": a.commit, "command": " ".join(sys.argv),
              "model": a.serve_model or f"{a.model} (random weights)", "runs": [], "skipped": []}
    out_json = os.path.join(a.out, "serve-bench.json")

    def flush():
        result["seconds_total"] = round(time.time() - start, 1)
        with open(out_json, "w") as f:
            json.dump(result, f, indent=2)

    result["static"] = run_static(a, a.out, deadline)
    flush()
    concs = [int(c) for c in a.concurrency.split(",") if c]
    max_len = max(a.prompt_tokens + a.output_tokens, a.long_prompt_tokens + a.long_output_tokens)
    for vi, v in enumerate(a.variants):
        v_deadline = time.time() + (deadline - time.time()) / (len(a.variants) - vi)
        if deadline - time.time() < 40:
            result["skipped"].append({"variant": v, "why": "no time left"})
            continue
        cmd = [a.serve, "--uniattn", v, "--device", a.device, "--dtype", a.dtype, "--port", "0",
               "--kv-memory-gb", str(a.kv_gb), "--block-size", str(a.block_size),
               "--prefill-chunk", str(a.prefill_chunk), "--max-seqs", str(a.max_seqs),
               "--max-model-len", str(max_len),
               # each streaming client holds an HTTP thread; /metrics needs one more
               "--http-threads", str(max([a.max_seqs] + concs) + 16)]
        cmd += ["--model", a.serve_model] if a.serve_model else ["--random-weights", a.model]
        log(f"[{v}] start:", " ".join(cmd))
        t0 = time.time()
        try:
            srv = Server(cmd, os.path.join(a.out, f"serve-{v}.log"), a.start_timeout)
        except RuntimeError as e:
            result["skipped"].append({"variant": v, "why": str(e)})
            flush()
            continue
        start_s = round(time.time() - t0, 1)
        url = f"http://127.0.0.1:{srv.port}"
        m = srv.metrics()
        blocks_total = int(m.get("uniattn_kv_blocks_total", 0))
        per_seq = -(-(a.long_prompt_tokens + a.long_output_tokens) // a.block_size)
        fill = min(blocks_total // per_seq, a.max_seqs)
        log(f"[{v}] up in {start_s} s: {blocks_total} blocks; {fill} sequences of "
            f"{a.long_prompt_tokens}+{a.long_output_tokens} tokens fill them")
        phases = [("c", c) for c in concs]
        phases.insert(min(a.long_after, len(phases)), ("long", fill))
        try:
            for pi, (kind, c) in enumerate(phases):
                left = v_deadline - time.time()
                rest = len(phases) - pi
                # The long phase may take most of what is left; the others share the rest.
                cap = left * (0.7 if kind == "long" else 1.0 / max(rest, 2))
                if kind == "long" and (c < 1):
                    result["skipped"].append({"variant": v, "phase": "long", "why": "no fit"})
                    continue
                if cap < 8:
                    result["skipped"].append({"variant": v, "phase": f"{kind}{c}",
                                              "why": f"{left:.0f} s left for this variant"})
                    continue
                if kind == "long":
                    la = load_args(url, c, c, a.long_prompt_tokens, a.long_output_tokens, cap, 7,
                                   f"{v}/long/c={c}", a.clients_per_process)
                else:
                    la = load_args(url, c, max(c, 2), a.prompt_tokens, a.output_tokens, cap, c,
                                   f"{v}/c={c}", a.clients_per_process)
                log(f"[{v}] {la.label}: {la.num_requests} requests, cap {cap:.0f} s")
                try:
                    r = serve_load.run_load(la)
                except Exception as e:  # recorded; the other phases still run
                    result["skipped"].append({"variant": v, "phase": la.label,
                                              "why": f"{type(e).__name__}: {e}"})
                    flush()
                    continue
                r = {"variant": v, "phase": "long" if kind == "long" else "concurrency",
                     "label": la.label, "server_start_s": start_s,
                     "kv_blocks_total": blocks_total, **r}
                if kind == "long":
                    r["fill_concurrency"] = c
                result["runs"].append(r)
                flush()
                log(f"[{v}] {la.label}: {r['output_tokens_per_s']} tok/s, TTFT p50 "
                    f"{r['ttft_ms']['p50']} ms, ITL p50 {r['itl_ms']['p50']} ms, "
                    f"decode {r['decode_tokens_per_s_from_itl']} tok/s, blocks max "
                    f"{r['kv_blocks']['used_max']}, errors {r['errors']}, cut {r['cut']}, "
                    f"host ms per decode step {r.get('engine_decode_step_ms')}")
        finally:
            srv.stop()
        flush()
    flush()
    log("wrote", out_json, f"after {result['seconds_total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
