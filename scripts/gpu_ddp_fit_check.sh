#!/usr/bin/env bash
# Does a LLaMA-3.1-8B-sized model train data-parallel on 2 GPUs? Random weights with the real
# dimensions (32 layers, GQA 32/8, vocab 128256), UniAttn SuperBlocks 4,16,32 as in
# configs/llama31-8b-uniattn.yaml (W_c zero-initialised), stage "full" (every parameter trains),
# bf16 autocast over fp32 master weights, ZeRO-1, activation checkpointing, micro-batch 2 x 1024
# tokens per rank, a few steps. Prints each step's loss, tokens/s and rank 0's peak memory, and
# writes OUT/fit-check.json. Needs about 64 GB of disk (the model, a checkpoint, the final model).
# Usage: scripts/gpu_ddp_fit_check.sh BUILD OUT [precision]   (precision: bf16 or bf16_weights)
set -u -o pipefail
cd "$(dirname "$0")/.."
BUILD=$1 OUT=$2 PRECISION=${3:-bf16}
STEPS=${UNIATTN_FIT_STEPS:-3} MICRO=${UNIATTN_FIT_MICRO:-2}
mkdir -p "$OUT"
t0=$SECONDS
python3 - "$OUT/llama8b" "$OUT/tokens.jsonl" "$((STEPS * MICRO * 2))" <<'PY'
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=False)
torch.manual_seed(0)
with torch.device("cuda"):
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained(sys.argv[1])
g = torch.Generator().manual_seed(1)
with open(sys.argv[2], "w") as f:
    for _ in range(int(sys.argv[3])):
        ids = torch.randint(0, cfg.vocab_size, (1024,), generator=g).tolist()
        f.write(json.dumps({"ids": ids, "loss_mask": [1] * 1024}) + "\n")
PY
echo "model written in $((SECONDS - t0)) s"
args=(-c configs/llama31-8b-uniattn.yaml --fresh --set "model.path=$OUT/llama8b"
  --set model.wc_init=zero --set "model.wc_checkpoint=" --set data.format=tokens --set "data.train=$OUT/tokens.jsonl"
  --set "data.eval=$OUT/tokens.jsonl" --set data.max_length=1024 --set "output_dir=$OUT/run"
  --set "stages=[{name: full, params: all, steps: $STEPS, lr: 7.0e-6}]"
  --set training.global_batch=$((MICRO * 2)) --set training.micro_batch=$MICRO
  --set training.precision=$PRECISION --set training.activation_checkpointing=true
  --set training.progress=false --set checkpoint.every_steps=0 --set eval.every_steps=0)
t0=$SECONDS
pids=()
for r in 0 1; do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29561 \
    timeout -s KILL 900 "$BUILD/uniattn-train" "${args[@]}" >"$OUT/rank$r.log" 2>&1 &
  pids+=($!)
done
wait "${pids[0]}"; rc0=$?
wait "${pids[1]}"; rc1=$?
echo "ranks exited $rc0 $rc1 after $((SECONDS - t0)) s"
tail -3 "$OUT/rank0.log"; tail -3 "$OUT/rank1.log"
python3 - "$OUT" "$PRECISION" "$rc0" "$rc1" <<'PY'
import json, sys
out, precision, rc0, rc1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    mets = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl") if l.strip()]
except OSError:
    mets = []
for m in mets:
    print(f"step {m['step']}: loss {m['loss']:.4f} tokens/s {m['tokens_per_s']:.0f} "
          f"peak {m.get('peak_memory_gib', 0):.1f} GiB")
json.dump({"precision": precision, "exit_codes": [rc0, rc1], "steps": mets,
           "peak_memory_gib_rank0": max((m.get("peak_memory_gib", 0) for m in mets), default=None)},
          open(f"{out}/fit-check.json", "w"), indent=1)
PY
rm -rf "$OUT/llama8b" "$OUT/run/checkpoints" "$OUT/run/final"
