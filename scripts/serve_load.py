#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible completions server (uniattn-serve, vLLM, SGLang).

Two ways of loading it, as vLLM's benchmark_serving.py and the serving literature use them:
  --mode closed --concurrency C   C clients, each sending its next request when the last ended;
  --mode open --rate R            requests arrive as a Poisson process of R per second, whatever
                                  the server's speed (at most --max-in-flight at once).
Every request is a streamed /v1/completions call whose prompt is --prompt-tokens random token ids
(drawn from --vocab-low..--vocab-high, a different prompt per request) with max_tokens
--output-tokens, temperature 0, no stop strings and `ignore_eos` (so each request produces
exactly --output-tokens tokens; --no-ignore-eos for servers that refuse the field).

Measured from the client side, on the streamed events: time to first token (TTFT: request sent to
first token event) and inter-token latency (ITL: gaps between token events; an event carrying k
tokens counts as k gaps of 1/k of it), p50/p99 each; output tokens/s over the run (first request
sent to last token received); per-request decode rate; and, from the server's Prometheus /metrics
sampled every --metrics-interval seconds, KV blocks in use (mean and max while requests run),
running and waiting sequences, preemptions. Only the Python standard library is used.

Usage:
  serve_load.py --url http://127.0.0.1:8000 --mode closed --concurrency 8 --num-requests 32 \
      --prompt-tokens 512 --output-tokens 256 [--duration 30] [--out result.json]
Bounds: --num-requests (total requests), --duration (no new request after it), --max-time (open
streams are closed after it and what they produced is counted; the result says "cut": true).
--processes P spreads a closed loop's clients over P processes: one Python process parses about
20K streamed events a second, fewer than a small model's server sends to 32 or more clients.
Prints the result JSON (and writes it to --out).
"""
import argparse
import http.client
import json
import multiprocessing
import queue
import random
import socket
import statistics
import sys
import threading
import time
import types
import urllib.parse


def percentile(xs, q):
    """Linear-interpolation percentile (numpy's default) of a non-empty list; None when empty."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            try:
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
            except ValueError:
                pass
    return out


class Target:
    def __init__(self, url, timeout):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.base = u.path.rstrip("/")
        self.timeout = timeout

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get(self, path):
        c = self.conn()
        try:
            c.request("GET", self.base + path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()


class Request:
    """One streamed completion; fills in times as events arrive."""

    def __init__(self, idx, prompt, args):
        self.idx = idx
        self.body = {"prompt": prompt, "max_tokens": args.output_tokens, "temperature": 0,
                     "stream": True, "stream_options": {"include_usage": True}}
        if args.model:
            self.body["model"] = args.model
        if not args.no_ignore_eos:
            self.body["ignore_eos"] = True
        self.sent = None
        self.token_times = []  # (time, tokens in the event)
        self.usage = None
        self.error = None
        self.finished = False  # the stream ended with [DONE]
        self.conn = None

    def run(self, target, path, cancelled):
        self.sent = time.perf_counter()
        try:
            self.conn = target.conn()
            self.conn.request("POST", path, body=json.dumps(self.body),
                              headers={"Content-Type": "application/json"})
            r = self.conn.getresponse()
            if r.status != 200:
                self.error = f"HTTP {r.status}: {r.read()[:300]!r}"
                return
            buf = b""
            while not cancelled.is_set():
                chunk = r.read1(65536)
                if not chunk:
                    break
                now = time.perf_counter()
                buf += chunk
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    if not ev.startswith(b"data: "):
                        continue
                    payload = ev[6:]
                    if payload == b"[DONE]":
                        self.finished = True
                        return
                    j = json.loads(payload)
                    if j.get("usage"):
                        self.usage = j["usage"]
                    if "error" in j:
                        self.error = json.dumps(j["error"])[:300]
                        return
                    for ch in j.get("choices") or []:
                        lp = ch.get("logprobs")
                        n = len(lp["tokens"]) if lp and lp.get("tokens") is not None else 1
                        self.token_times.append((now, n))
        except Exception as e:  # a cut connection, a refused one: counted, not fatal
            if not cancelled.is_set():
                self.error = f"{type(e).__name__}: {e}"
        finally:
            if self.conn is not None:
                self.conn.close()

    def cancel(self):
        # shutdown() wakes a thread blocked in recv on this socket; close() alone may not.
        try:
            if self.conn is not None and self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def tokens(self):
        if self.usage and self.error is None and len(self.token_times) > 0:
            return self.usage["completion_tokens"]
        return sum(n for _, n in self.token_times)


class MetricsSampler(threading.Thread):
    def __init__(self, target, interval):
        super().__init__(daemon=True)
        self.target, self.interval = target, interval
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                status, text = self.target.get("/metrics")
                if status == 200:
                    self.samples.append((time.perf_counter(), parse_metrics(text)))
            except Exception:
                pass
            self.stop.wait(self.interval)


def make_prompts(args, n):
    rng = random.Random(args.seed)
    return [[rng.randrange(args.vocab_low, args.vocab_high) for _ in range(args.prompt_tokens)]
            for _ in range(n)]


def closed_clients(args, target, path, prompts, clients, take_index, deadline):
    """`clients` threads, each sending its next request when its last one ended, until take_index()
    gives None; streams still open at `deadline` are cut. Returns (requests, cut)."""
    requests, lock, cancelled = [], threading.Lock(), threading.Event()

    def client():
        while True:
            i = take_index()
            if i is None:
                return
            req = Request(i, prompts[i % len(prompts)], args)
            with lock:
                requests.append(req)
            req.run(target, path, cancelled)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return requests, join_or_cut(threads, requests, lock, cancelled, deadline)


def join_or_cut(threads, requests, lock, cancelled, deadline):
    """Waits for the client threads until `deadline`, then cuts the streams still open; returns
    whether it had to."""
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    cut = any(t.is_alive() for t in threads)
    if cut:
        cancelled.set()
        with lock:
            for r in requests:
                r.cancel()
        for t in threads:
            t.join(5)
    return cut


def index_taker(counter, lock, n_total, stop_issuing):
    """take_index(): the next request index (counter.value, incremented under `lock`), or None
    once n_total were taken or stop_issuing has passed."""
    def take_index():
        with lock:
            if counter.value >= n_total or time.perf_counter() >= stop_issuing:
                return None
            counter.value += 1
            return counter.value - 1

    return take_index


REQUEST_STATE = ("idx", "sent", "token_times", "usage", "error", "finished")


def closed_loop_processes(args, path, prompts, start):
    """The closed loop's clients spread over --processes forked processes that share one request
    counter; start(t0) is called once they wait for the go (the metrics sampler starts there).
    perf_counter is CLOCK_MONOTONIC, one clock for all processes. Returns (requests, cut, t0)."""
    ctx = multiprocessing.get_context("fork")
    counter, t0_shared, go, results = ctx.Value("q", 0), ctx.Value("d", 0.0), ctx.Event(), ctx.Queue()
    n = min(args.processes, args.concurrency)
    shares = [args.concurrency // n + (1 if k < args.concurrency % n else 0) for k in range(n)]

    def worker(clients):
        go.wait()
        t0 = t0_shared.value
        stop_issuing = t0 + args.duration if args.duration else float("inf")
        take_index = index_taker(counter, counter.get_lock(), args.num_requests, stop_issuing)
        states, cut = [], True
        try:
            reqs, cut = closed_clients(args, Target(args.url, args.request_timeout), path,
                                       prompts, clients, take_index, t0 + args.max_time)
            states = [{k: getattr(r, k) for k in REQUEST_STATE} for r in reqs]
        finally:  # the parent waits for one result per process, whatever happened here
            results.put((states, cut))

    procs = [ctx.Process(target=worker, args=(c,), daemon=True) for c in shares]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    start(t0)
    t0_shared.value = t0
    go.set()
    requests, cut, pending = [], False, len(procs)
    deadline = t0 + args.max_time + 120
    while pending and time.perf_counter() < deadline:
        try:
            states, part_cut = results.get(timeout=1)
        except queue.Empty:
            if all(p.exitcode is not None for p in procs) and results.empty():
                cut = True  # a process died without reporting: what it ran is lost
                break
            continue
        pending -= 1
        cut = cut or part_cut
        for s in states:
            r = Request(s["idx"], "", args)
            for k in REQUEST_STATE:
                setattr(r, k, s[k])
            requests.append(r)
    for p in procs:
        p.join(10)
    return requests, cut, t0


def run_load(args):
    target = Target(args.url, args.request_timeout)
    path = target.base + "/v1/completions"
    if not args.model:
        status, text = target.get("/v1/models")
        if status == 200:
            args.model = json.loads(text)["data"][0]["id"]
    n_total = args.num_requests
    prompts = make_prompts(args, min(n_total, 4096))
    requests, lock = [], threading.Lock()
    cancelled = threading.Event()
    sampler = MetricsSampler(target, args.metrics_interval)
    before = {}
    try:
        before = parse_metrics(target.get("/metrics")[1])
    except Exception:
        pass
    if args.mode == "closed" and args.processes > 1:
        # Forked before the sampler's thread starts (a fork copies the calling thread only); the
        # children touch nothing of the parent's but the shared counter and queue.
        requests, cut, t0 = closed_loop_processes(args, path, prompts, lambda t: sampler.start())
        return finish(args, target, sampler, requests, before, t0, cut)
    sampler.start()
    t0 = time.perf_counter()
    stop_issuing = t0 + args.duration if args.duration else float("inf")
    take_index = index_taker(types.SimpleNamespace(value=0), lock, n_total, stop_issuing)
    if args.mode == "closed":
        requests, cut = closed_clients(args, target, path, prompts, args.concurrency, take_index,
                                       t0 + args.max_time)
        return finish(args, target, sampler, requests, before, t0, cut)

    def take():
        i = None if cancelled.is_set() else take_index()
        if i is None:
            return None
        req = Request(i, prompts[i % len(prompts)], args)
        with lock:
            requests.append(req)
        return req

    # Open loop: Poisson arrivals.
    threads = []
    rng = random.Random(args.seed + 1)
    in_flight = threading.Semaphore(args.max_in_flight)
    t_next = t0

    def one(req):
        try:
            req.run(target, path, cancelled)
        finally:
            in_flight.release()

    while True:
        t_next += rng.expovariate(args.rate)
        delay = t_next - time.perf_counter()
        if delay > 0:
            if cancelled.wait(delay):
                break
        if time.perf_counter() - t0 > args.max_time:
            break
        in_flight.acquire()
        req = take()
        if req is None:
            in_flight.release()
            break
        t = threading.Thread(target=one, args=(req,), daemon=True)
        t.start()
        threads.append(t)

    cut = join_or_cut(threads, requests, lock, cancelled, t0 + args.max_time)
    return finish(args, target, sampler, requests, before, t0, cut)


def finish(args, target, sampler, requests, before, t0, cut):
    sampler.stop.set()
    sampler.join(5)
    out = summarize(args, requests, sampler.samples, before, t0, cut)
    out["processes"] = args.processes if args.mode == "closed" else 1
    try:
        out["engine_decode_step_ms"] = engine_phases(before, parse_metrics(target.get("/metrics")[1]))
    except Exception:
        out["engine_decode_step_ms"] = None
    return out


def engine_phases(before, after):
    """Host milliseconds per decode step in each phase over the run (the server's
    uniattn_engine_step_seconds_total counters): schedule, forward (inputs and launch or CUDA-graph
    replay), sample (waits for the device), emit (callbacks into the HTTP layer)."""
    steps = (after.get("uniattn_engine_decode_steps_total", 0)
             - before.get("uniattn_engine_decode_steps_total", 0))
    if steps <= 0:
        return None
    out = {"decode_steps": int(steps)}
    for phase in ("schedule", "forward", "sample", "emit"):
        k = f'uniattn_engine_step_seconds_total{{group="decode",phase="{phase}"}}'
        if k in after:
            out[phase] = round((after[k] - before.get(k, 0)) / steps * 1e3, 3)
    return out


def summarize(args, requests, samples, before, t0, cut):
    ttft, itl, decode_rates, e2e = [], [], [], []
    tokens, last = 0, t0
    done = [r for r in requests if r.finished and r.error is None]
    for r in requests:
        if not r.token_times:
            continue
        tokens += r.tokens()
        last = max(last, r.token_times[-1][0])
        ttft.append(r.token_times[0][0] - r.sent)
        prev = r.token_times[0][0]
        for t, n in r.token_times[1:]:
            itl.extend([(t - prev) / n] * n)
            prev = t
        n_after_first = sum(n for _, n in r.token_times[1:])
        span = r.token_times[-1][0] - r.token_times[0][0]
        if n_after_first > 0 and span > 0:
            decode_rates.append(n_after_first / span)
        e2e.append(r.token_times[-1][0] - r.sent)
    elapsed = max(last - t0, 1e-9)
    running = [m for _, m in samples if m.get("uniattn_num_requests_running", 0) > 0]
    used = [m["uniattn_kv_blocks_used"] for m in running if "uniattn_kv_blocks_used" in m]
    last_m = samples[-1][1] if samples else {}
    ms = lambda x: None if x is None else round(x * 1e3, 3)  # noqa: E731
    itl_p50 = percentile(itl, 50)
    out = {
        "mode": args.mode,
        "concurrency": args.concurrency if args.mode == "closed" else None,
        "rate_per_s": args.rate if args.mode == "open" else None,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "requests_sent": len(requests),
        "requests_ok": len(done),
        "errors": sorted({r.error for r in requests if r.error})[:5],
        "cut": cut,
        "elapsed_s": round(elapsed, 3),
        "output_tokens_total": tokens,
        "output_tokens_per_s": round(tokens / elapsed, 2),
        "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p99": ms(percentile(ttft, 99)),
                    "mean": ms(statistics.fmean(ttft) if ttft else None)},
        "itl_ms": {"p50": ms(itl_p50), "p99": ms(percentile(itl, 99)),
                   "mean": ms(statistics.fmean(itl) if itl else None)},
        "e2e_latency_s_p50": percentile(e2e, 50),
        "decode_tokens_per_s_per_request_p50": percentile(decode_rates, 50),
        # All C sequences decode in each engine step, so C / ITL is the decode rate of the batch
        # (comparable with a static batch's B / step time).
        "decode_tokens_per_s_from_itl":
            round(args.concurrency / itl_p50, 2) if args.mode == "closed" and itl_p50 else None,
        "kv_blocks": {
            "total": last_m.get("uniattn_kv_blocks_total"),
            "used_mean": round(statistics.fmean(used), 1) if used else None,
            "used_max": max(used) if used else None,
        },
        "running_max": max((m.get("uniattn_num_requests_running", 0) for _, m in samples),
                           default=None),
        "waiting_max": max((m.get("uniattn_num_requests_waiting", 0) for _, m in samples),
                           default=None),
        "preemptions": (last_m.get("uniattn_num_preemptions_total", 0)
                        - before.get("uniattn_num_preemptions_total", 0)) if last_m else None,
        "metrics_samples": len(samples),
    }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="", help="model name (default: the first of /v1/models)")
    ap.add_argument("--mode", choices=["closed", "open"], default="closed")
    ap.add_argument("--concurrency", type=int, default=1, help="closed loop: clients")
    ap.add_argument("--rate", type=float, default=1.0, help="open loop: requests per second")
    ap.add_argument("--max-in-flight", type=int, default=1024, help="open loop: cap")
    ap.add_argument("--num-requests", type=int, default=0,
                    help="requests in all (default: 4 x concurrency, or rate x duration)")
    ap.add_argument("--duration", type=float, default=0, help="no new request after S seconds")
    ap.add_argument("--max-time", type=float, default=600,
                    help="close open streams after S seconds (their tokens still count)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=256)
    ap.add_argument("--vocab-low", type=int, default=1000, help="prompt ids from [low, high)")
    ap.add_argument("--vocab-high", type=int, default=30000)
    ap.add_argument("--no-ignore-eos", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics-interval", type=float, default=0.25)
    ap.add_argument("--request-timeout", type=float, default=600)
    ap.add_argument("--processes", type=int, default=1,
                    help="closed loop: client processes sharing the --concurrency clients")
    ap.add_argument("--label", default="", help="copied into the result")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.num_requests <= 0:
        if args.mode == "closed":
            args.num_requests = 4 * args.concurrency
        else:
            args.num_requests = max(1, int(args.rate * (args.duration or 60)))
    if (args.concurrency < 1 or args.rate <= 0 or args.prompt_tokens < 1 or args.output_tokens < 1
            or args.processes < 1):
        ap.error("concurrency, rate, processes, prompt and output tokens must be positive")
    result = run_load(args)
    if args.label:
        result = {"label": args.label, **result}
    result["command"] = " ".join(sys.argv)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if result["requests_ok"] > 0 or result["cut"] else 1


if __name__ == "__main__":
    sys.exit(main())
