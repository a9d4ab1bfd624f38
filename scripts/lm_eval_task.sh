# Sourced by scripts/lm_eval_check.sh and scripts/lm_eval_serve_check.sh: the one definition of
# the lm-evaluation-harness task both score, so that their accuracies compare with uniattn-eval's.

# write_local_mc_task TASK_DIR ITEMS_JSONL: a multiple_choice task over a local JSON-lines file
# ({"question" (the whole context), "choices", "answer"} per line): context = question,
# continuation = " " + choice, acc and acc_norm by log-likelihood (lm_eval's standard output type).
write_local_mc_task() {
  cat > "$1/local_mc.yaml" <<EOF
task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: $2
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
EOF
}
