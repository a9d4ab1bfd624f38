// Two-stage post-training (Xiong et al., arXiv 2502.00439; docs/training.md) driven by a
// TrainConfig: stage 1 trains W_c, stage 2 everything (or any list of stages and parameter sets),
// AdamW with a cosine schedule per stage, bf16 autocast over fp32 master weights, gradient
// accumulation and clipping, held-out evaluation, atomic resumable checkpoints, and data
// parallelism over c10d (NCCL on CUDA, Gloo on CPU) with bucketed all-reduce overlapped with
// backward and ZeRO-1 sharded optimiser state. See docs/training.md.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "uniattn/config/train_config.h"

namespace uniattn {

// Where this process sits in a data-parallel job (torchrun-style environment).
struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (all optional: absent = one
  // process). Throws uniattn::Error on a malformed or inconsistent value.
  static DistEnv from_env();
};

// One line of metrics.jsonl.
struct StepMetrics {
  int64_t step = 0;  // global optimiser step, 1-based
  std::string stage;
  int64_t stage_step = 0, stage_steps = 0;
  // The training loss per target token of the global batch: the cross-entropy, or with
  // distillation (1 - w) ce + w T^2 kl + follower_mse mse (TrainDistillConfig).
  double loss = 0.0;
  // With distillation in this stage: its parts, per target token (mse with follower_mse only).
  std::optional<double> ce, kl, mse;
  double lr = 0.0;
  int64_t tokens = 0;         // target tokens seen so far (all ranks)
  double tokens_per_s = 0.0;  // input tokens (all ranks) per second, this step
  double grad_norm = 0.0;
  std::optional<double> eval_loss;
  bool skipped = false;          // non-finite loss skipped (nan_policy: skip)
  double peak_memory_gib = 0.0;  // CUDA: peak allocated device memory so far (this rank); 0 on CPU
};

struct TrainOptions {
  bool resume = true;  // continue from output_dir/checkpoints/latest when present
  // A resume whose config keys that change the result, data contents or model differ from the
  // checkpoint's (its fingerprint) is refused, naming each difference; true continues anyway and
  // records the change (stderr, TrainResult::config_changes, output_dir/config_history.jsonl).
  bool allow_changed_config = false;
  // Set from a signal handler: the trainer checkpoints after the current step and returns.
  const std::atomic<bool>* stop = nullptr;
  std::function<void(const StepMetrics&)> on_step;  // rank 0 only
  DistEnv dist;                                     // default: a single process
};

struct TrainResult {
  bool interrupted = false;  // stopped by `stop` or debug.stop_after_steps
  int64_t steps = 0;         // global steps completed (including resumed ones)
  int64_t resumed_from = 0;  // 0: fresh start
  double last_loss = 0.0;
  std::filesystem::path final_model;  // output_dir/final when the run finished
  // Result-changing differences from the resumed checkpoint, accepted by allow_changed_config
  // ("stages[1].lr: 0.001 -> 0.002", "data.train (contents): ..."); empty otherwise.
  std::vector<std::string> config_changes;
};

// Runs (or resumes) the training the config describes. Rank 0 writes output_dir/metrics.jsonl,
// output_dir/config.yaml (the config in force), output_dir/config_history.jsonl (the config at
// the start and at every resume that changed it), checkpoints under output_dir/checkpoints/ and
// the final model in output_dir/final. Throws uniattn::Error on bad inputs (files, shapes, a
// parameter glob matching nothing, a checkpoint of another world size), on a resume with changed
// inputs without options.allow_changed_config (before anything in output_dir is written), and on
// a non-finite loss with nan_policy stop (the message names the step).
TrainResult train(const TrainConfig& config, const TrainOptions& options = {});

// HF-style cosine schedule with linear warm-up: the LR factor of step `step` (0-based) of a stage
// of `total` steps, warm-up ceil(warmup_ratio * total) steps, decaying to min_ratio.
double cosine_lr_factor(int64_t step, int64_t total, double warmup_ratio, double min_ratio);

}  // namespace uniattn
