#!/usr/bin/env bash
# Data-parallel check on a host with 2 GPUs: uniattn-train over NCCL with 2 ranks (micro-batch 1,
# ZeRO-1, small gradient buckets) against 1 GPU with the same global batch (micro-batch 2), on a
# tiny random LLaMA (UniAttn two-stage). Prints per-step losses and the largest difference.
# Usage: [UNIATTN_DDP_SET="k=v ..."] scripts/gpu_ddp_check.sh BUILD OUT
set -u -o pipefail
cd "$(dirname "$0")/.."
BUILD=$1 OUT=$2
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
common=(-c configs/tiny-cpu-smoke.yaml --fresh --set "model.path=$OUT/td/models/llama"
  --set "data.train=$OUT/train.jsonl" --set "data.eval=$OUT/eval.jsonl" --set training.device=cuda
  --set checkpoint.every_steps=0 --set distributed.bucket_mb=0.01)
# Extra "--set key=value" pairs for both runs, e.g. training.activation_checkpointing=true.
for kv in ${UNIATTN_DDP_SET:-}; do common+=(--set "$kv"); done
"$BUILD/uniattn-train" "${common[@]}" --set "output_dir=$OUT/one" --set training.micro_batch=2 \
  >"$OUT/one.log" 2>&1 || { tail -20 "$OUT/one.log"; exit 1; }
for r in 0 1; do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
    "$BUILD/uniattn-train" "${common[@]}" --set "output_dir=$OUT/two" \
    --set training.micro_batch=1 >"$OUT/two-rank$r.log" 2>&1 &
done
wait
tail -3 "$OUT/two-rank0.log"
python3 - "$OUT" <<'PY'
import json, sys
read = lambda p: [json.loads(l) for l in open(p) if l.strip()]
one, two = read(sys.argv[1] + "/one/metrics.jsonl"), read(sys.argv[1] + "/two/metrics.jsonl")
worst = 0.0
for a, b in zip(one, two):
    d = abs(a["loss"] - b["loss"]); worst = max(worst, d)
    print(f"step {a['step']}: 1 GPU {a['loss']:.6f}  2 GPUs {b['loss']:.6f}  diff {d:.2e}")
print(f"steps {len(one)} vs {len(two)}; max loss difference {worst:.3e}")
json.dump({"steps_one": len(one), "steps_two": len(two), "max_loss_diff": worst,
           "one": one, "two": two}, open(sys.argv[1] + "/ddp-check.json", "w"), indent=1)
PY
