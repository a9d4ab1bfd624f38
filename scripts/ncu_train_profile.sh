#!/usr/bin/env bash
# Kernel-time breakdown of one training step on the 4-layer LLaMA-3.1-8B-dimensions slice (B=4,
# S=1024), for uniattn-train (bf16_weights and the default bf16 autocast) and the matching
# transformers steps (scripts/train_throughput.py), each under Nsight Compute for 3 steps.
# Writes OUT/ncu-train-<label>.csv.gz and OUT/ncu-train-breakdown.json, and prints the table.
# UNIATTN_PROFILE=uniattn or transformers profiles only one side; CSVs already in OUT (gzipped)
# join the table.
# Usage: scripts/ncu_train_profile.sh BUILD OUT
set -u -o pipefail
cd "$(dirname "$0")/.."
BUILD=$1 OUT=$2
mkdir -p "$OUT"
MODEL=$OUT/llama8b-4layers DATA=$OUT/llama8b-4layers.jsonl
python3 - "$MODEL" "$DATA" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
import train_throughput as tt
from transformers import LlamaConfig, LlamaForCausalLM
s = tt.SHAPES["llama8b-4layers"]
torch.manual_seed(0)
cfg = LlamaConfig(**s["cfg"], max_position_embeddings=4096, attn_implementation="sdpa")
with torch.device("cuda"):
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
tt.write_tokens(sys.argv[2], cfg.vocab_size, s["batch"], 3)
PY
NCU=(ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base)
profiles=()
WHAT=${UNIATTN_PROFILE:-all}  # all, uniattn or transformers
for mode in bf16_weights bf16; do
  [ "$WHAT" = transformers ] && break
  mapfile -d '' cmd < <(python3 -c "import sys; sys.path.insert(0,'scripts'); import train_throughput as tt; print('\0'.join(tt.uniattn_cmd('$BUILD', '$MODEL', '$DATA', 4, 3, '$OUT/run-$mode')), end='')")
  "${NCU[@]}" --log-file "$OUT/ncu-train-uniattn-$mode.csv" "${cmd[@]}" --set training.precision=$mode \
    >"$OUT/uniattn-$mode.log" 2>&1 || tail -5 "$OUT/uniattn-$mode.log"
done
for amp in "" --amp; do
  [ "$WHAT" = uniattn ] && break
  label=transformers${amp:+_amp}
  "${NCU[@]}" --log-file "$OUT/ncu-train-$label.csv" python3 scripts/train_throughput.py \
    --profile-hf "$MODEL" --batch 4 --steps 3 $amp >"$OUT/$label.log" 2>&1 || tail -5 "$OUT/$label.log"
done
for f in "$OUT"/ncu-train-*.csv; do [ -e "$f" ] && gzip -f "$f"; done
for f in "$OUT"/ncu-train-*.csv.gz; do
  [ -e "$f" ] && profiles+=("$(basename "$f" .csv.gz | sed 's/^ncu-train-//')=$f")
done
python3 scripts/ncu_train_breakdown.py "${profiles[@]}" --json "$OUT/ncu-train-breakdown.json"
[ -n "${UNIATTN_PROFILE_KEEP:-}" ] || rm -rf "$MODEL" "$OUT"/run-*
