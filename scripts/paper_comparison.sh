#!/usr/bin/env bash
# The paper's comparison in miniature on real weights (uniattn-calib, -train, -eval, -generate):
# SmolLM2-135M-Instruct post-trained on PMC instructions (800 train / 100 held out) as base (no
# training), standard fine-tuning, softmax-only, CLA, UniAttn one-stage, UniAttn two-stage from
# calibrated W_c and two-stage from zero W_c; every trained row sees the same tokens (2 epochs).
# Usage: scripts/paper_comparison.sh BUILD GGUF PMC_JSON EVAL_DIR OUT [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$1 GGUF=$2 PMC=$3 EVAL=$4 OUT=$5; shift 5
SEEDS=${*:-1}
SB=${SUPERBLOCKS:-4,15,30}
LIMIT=${EVAL_LIMIT:-500}
mkdir -p "$OUT"
python3 - "$PMC" "$OUT" <<'PY'
import json, sys
recs = json.load(open(sys.argv[1]))
json.dump(recs[:800], open(sys.argv[2] + "/train.json", "w"))
json.dump(recs[800:900], open(sys.argv[2] + "/heldout.json", "w"))
PY
# Calibrated W_c (tokens mode) on the training split.
"$BUILD/uniattn-calib" --model "$GGUF" --data "$OUT/train.json" --template alpaca \
  --superblocks "$SB" --samples 800 --heldout 0 --max-len 512 --device cuda --out "$OUT/calib" \
  --restart >"$OUT/calib.log" 2>&1 || { tail -20 "$OUT/calib.log"; exit 1; }

common=(--set "model.path=$GGUF" --set "data.train=$OUT/train.json"
        --set "data.eval=$OUT/heldout.json" --set training.device=cuda)
evaluate() {  # evaluate NAME MODEL [extra eval args]
  local name=$1 model=$2; shift 2
  "$BUILD/uniattn-eval" --model "$model" "$@" --tasks medmcqa,mmlu_medical --data-dir "$EVAL" \
    --heldout "$OUT/heldout.json" --template alpaca --limit "$LIMIT" --device cuda --dtype bf16 \
    --batch 32 --quiet --out "$OUT/$name.eval.json" >"$OUT/$name.eval.log" 2>&1 ||
    { tail -5 "$OUT/$name.eval.log"; return 1; }
  "$BUILD/uniattn-generate" --model "$model" "$@" --device cuda --dtype bf16 --max-new-tokens 64 \
    --prompt "Below is an instruction that describes a task." --bench 2>"$OUT/$name.bench.txt" \
    >/dev/null || true
}
train() {  # train NAME CONFIG [overrides]
  local name=$1 cfg=$2; shift 2
  "$BUILD/uniattn-train" -c "$cfg" --fresh "${common[@]}" --set "output_dir=$OUT/$name" "$@" \
    >"$OUT/$name.train.log" 2>&1 || { tail -20 "$OUT/$name.train.log"; return 1; }
  evaluate "$name" "$OUT/$name/final"
}
evaluate base "$GGUF"
for s in $SEEDS; do
  train "ft-s$s" configs/compare/one-stage.yaml --set training.seed=$s || true
  for v in softmax cla; do
    train "$v-s$s" configs/compare/one-stage.yaml --set model.variant=$v \
      --set "model.superblocks=$SB" --set training.seed=$s || true
  done
  train "uniattn1-s$s" configs/compare/one-stage.yaml --set model.variant=uniattn \
    --set "model.superblocks=$SB" --set training.seed=$s || true
  train "uniattn2cal-s$s" configs/compare/two-stage.yaml --set "model.superblocks=$SB" \
    --set model.wc_init=calibrated --set "model.wc_checkpoint=$OUT/calib" \
    --set training.seed=$s || true
  train "uniattn2zero-s$s" configs/compare/two-stage.yaml --set "model.superblocks=$SB" \
    --set training.seed=$s || true
done
ls "$OUT"
