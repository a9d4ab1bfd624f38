#!/usr/bin/env bash
# Data-parallel checks on a host with 2 GPUs, on a tiny random LLaMA (UniAttn two-stage, 7 steps):
#  1. uniattn-train over NCCL with 2 ranks (micro-batch 1, ZeRO-1, small gradient buckets) against
#     1 GPU with the same global batch (micro-batch 2), for each variant below: plain fp32,
#     activation checkpointing (run 3 times: races show up as failures or hangs), and
#     checkpointing under bf16 autocast. Per-step losses and the largest difference.
#  2. A failing rank (debug.fail_at_step=5 on rank 1) must stop rank 0 within seconds, although
#     rank 0 waits in an NCCL collective; rerunning resumes both ranks from the step-4 checkpoint.
# Every process runs under a time limit, so a hang is reported, not waited out.
# Usage: scripts/gpu_ddp_check.sh BUILD OUT     (writes OUT/ddp-check.json)
# UNIATTN_DDP_DEVICE=cpu runs the same on 2 Gloo CPU ranks (a smoke test of the script).
set -u -o pipefail
cd "$(dirname "$0")/.."
BUILD=$1 OUT=$2
LIMIT=${UNIATTN_DDP_LIMIT_S:-180}
mkdir -p "$OUT/td"
python3 tests/fixtures/make_model_fixtures.py --out "$OUT/td" >"$OUT/fixture.log" 2>&1 || true
[ -f "$OUT/td/models/llama/model.safetensors" ] || { tail -20 "$OUT/fixture.log"; exit 1; }
python3 - "$OUT" <<'PY'
import json, random, sys
for name, n, seed in (("train", 32, 11), ("eval", 8, 12)):
    rng = random.Random(seed)
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for _ in range(n):
            L = rng.randint(8, 24); p = rng.randint(2, L - 2)
            f.write(json.dumps({"ids": [rng.randrange(97) for _ in range(L)],
                                "loss_mask": [int(j >= p) for j in range(L)]}) + "\n")
PY
common=(-c configs/tiny-cpu-smoke.yaml --set "model.path=$OUT/td/models/llama"
  --set "data.train=$OUT/train.jsonl" --set "data.eval=$OUT/eval.jsonl" --set "training.device=${UNIATTN_DDP_DEVICE:-cuda}"
  --set distributed.bucket_mb=0.01)
port=29517
# [RUN_DIR=D] two_ranks NAME extra args...: runs ranks 0 and 1 into OUT/D (default OUT/NAME), logs
# to OUT/NAME-rankR.log, and writes "rc0 rc1 seconds" to OUT/NAME.rc.
two_ranks() {
  local name=$1; shift
  local dir=${RUN_DIR:-$name}
  local pids=() t0=$SECONDS
  port=$((port + 1))
  for r in 0 1; do
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      timeout -s KILL "$LIMIT" "$BUILD/uniattn-train" "${common[@]}" --set "output_dir=$OUT/$dir" \
      --set training.micro_batch=1 "$@" >"$OUT/$name-rank$r.log" 2>&1 &
    pids+=($!)
  done
  local rc0 rc1
  wait "${pids[0]}"; rc0=$?
  wait "${pids[1]}"; rc1=$?
  echo "$rc0 $rc1 $((SECONDS - t0))" >"$OUT/$name.rc"
}
variants=("plain:" "ckpt:training.activation_checkpointing=true"
  "ckpt-2:training.activation_checkpointing=true" "ckpt-3:training.activation_checkpointing=true"
  "ckpt-bf16:training.activation_checkpointing=true training.precision=bf16")
for v in "${variants[@]}"; do
  name=${v%%:*} sets=()
  for kv in ${v#*:}; do sets+=(--set "$kv"); done
  timeout -s KILL "$LIMIT" "$BUILD/uniattn-train" "${common[@]}" --fresh "${sets[@]}" \
    --set "output_dir=$OUT/$name-one" --set training.micro_batch=2 >"$OUT/$name-one.log" 2>&1
  echo "$?" >"$OUT/$name-one.rc"
  two_ranks "$name-two" --fresh "${sets[@]}"
  echo "$name: 1 GPU rc $(cat "$OUT/$name-one.rc"); 2 ranks rc, seconds: $(cat "$OUT/$name-two.rc")"
done
two_ranks fail --fresh --set checkpoint.every_steps=2 --set debug.fail_at_step=5 \
  --set debug.fail_rank=1
echo "fail: rc rank0 rank1, seconds: $(cat "$OUT/fail.rc")"; tail -1 "$OUT/fail-rank0.log"
RUN_DIR=fail two_ranks fail-resume --set checkpoint.every_steps=2
echo "resume: $(cat "$OUT/fail-resume.rc")"; grep -h "resumed from" "$OUT/fail-resume-rank0.log"
python3 - "$OUT" "${variants[@]}" <<'PY'
import json, os, sys
out = sys.argv[1]
def read(p):
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
def rc(p):
    return [int(x) for x in open(p).read().split()] if os.path.exists(p) else None
result = {"variants": []}
for v in sys.argv[2:]:
    name, sets = v.split(":", 1)
    one, two = read(f"{out}/{name}-one/metrics.jsonl"), read(f"{out}/{name}-two/metrics.jsonl")
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two)]
    r = {"name": name, "sets": sets, "rc_one": rc(f"{out}/{name}-one.rc")[0],
         "rc_two": rc(f"{out}/{name}-two.rc")[:2], "seconds_two": rc(f"{out}/{name}-two.rc")[2],
         "steps_one": len(one), "steps_two": len(two),
         "max_loss_diff": max(diffs) if diffs else None,
         "per_step": [{"step": a["step"], "loss_1gpu": a["loss"], "loss_2gpu": b["loss"]}
                      for a, b in zip(one, two)]}
    print(f"{name}: steps {r['steps_one']} vs {r['steps_two']}, max loss diff {r['max_loss_diff']}")
    result["variants"].append(r)
f, fr = rc(f"{out}/fail.rc"), rc(f"{out}/fail-resume.rc")
ref, got = read(f"{out}/plain-one/metrics.jsonl"), read(f"{out}/fail/metrics.jsonl")
log0 = open(f"{out}/fail-rank0.log").read().strip().splitlines()
result["failure"] = {"rc": f[:2], "seconds": f[2], "rank0_last_line": log0[-1] if log0 else "",
                     "resume_rc": fr[:2],
                     "resumed": "resumed from step 4" in open(f"{out}/fail-resume-rank0.log").read(),
                     "resume_max_loss_diff_vs_1gpu": max(
                         (abs(a["loss"] - b["loss"]) for a, b in zip(ref, got)), default=None),
                     "resume_steps": len(got)}
print("failure:", json.dumps(result["failure"]))
json.dump(result, open(f"{out}/ddp-check.json", "w"), indent=1)
PY
