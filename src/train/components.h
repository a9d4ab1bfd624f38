// The trainer's components, apart from the loop that strings them together (trainer.cpp), in the
// manner of torchtitan: set-up of a run and of each stage (setup.cpp), one optimiser step
// (step.cpp), resumption and checkpoint cadence (checkpointing.cpp), metrics and progress
// (metrics.cpp) and the export of the final model (export.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "distill.h"
#include "internal.h"
#include "state.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn::train_detail {

// ---- set-up (setup.cpp) ----

// training.device ("auto", "cpu", "cuda", "cuda:N"); "auto" and "cuda" take this rank's GPU.
at::Device pick_device(const std::string& device, const DistEnv& env);

// The dtype the trained weights (and so their gradients and AdamW state) are held in: bf16 for
// training.precision bf16_weights; otherwise fp32 master weights (bf16 only inside autocast).
at::ScalarType weight_dtype(const TrainConfig& c);

// What the pieces of one run share: the config, this rank's place in the job, the model and the
// data. Built once by set_up_run; only the model's weights change afterwards.
struct Run {
  Run(const TrainConfig& config, const TrainOptions& options, Comm& comm, at::Device device);
  const TrainConfig& c;
  const TrainOptions& options;
  Comm& comm;
  const at::Device device;
  const bool rank0;
  const bool zero1;     // ZeRO-1: each rank keeps the optimiser state of its share only
  const bool autocast;  // "bf16" autocasts; "bf16_weights" runs on bf16 weights directly
  const int64_t accum;  // micro-batches per rank and optimiser step
  const std::filesystem::path out;
  CausalLM model{nullptr};
  int64_t vocab = 0;
  int32_t pad = 0;
  std::vector<Sequence> train_data, eval_data;
  std::vector<int64_t> stage_steps;  // the number of optimiser steps of each stage
  std::unique_ptr<Teacher> teacher;  // with a distill section (distill.h); null otherwise
  std::vector<int64_t> followers;    // the student's follower layers (distill.follower_mse)
  std::string fingerprint;           // run_fingerprint (fingerprint.h) as JSON text
  // When the last checkpoint was saved (or training started): checkpoint.every_minutes.
  std::chrono::steady_clock::time_point last_checkpoint = std::chrono::steady_clock::now();
};

// Creates output_dir, loads the model (W_c initialised per model.wc_init), the teacher (with a
// distill section) and the data, resolves every stage's parameter set and length, so that a bad
// glob fails before any training, and fingerprints the run.
Run set_up_run(const TrainConfig& c, const TrainOptions& options, Comm& comm, at::Device device);

// What one stage trains, and with what: its parameters, their ZeRO-1 owners, this rank's
// optimiser (null when it owns none of them) and, with several ranks, the gradient reducer.
struct StageTraining {
  StageTraining(const TrainStageConfig& stage_config, int64_t steps)
      : config(stage_config), total_steps(steps) {}
  const TrainStageConfig& config;
  const int64_t total_steps;
  std::vector<at::Tensor> params;
  std::vector<int> owner;  // the rank that steps params[i]
  std::unique_ptr<torch::optim::AdamW> opt;
  std::unique_ptr<GradReducer> reducer;
};

// Makes the stage's parameters (and only those) trainable and builds its optimiser, restoring the
// optimiser's state from `resume_from` when given, then its reducer. Rank 0 announces a stage
// that starts at its first step.
StageTraining set_up_stage(Run& run, const TrainState& st,
                           const std::optional<std::filesystem::path>& resume_from);

// ---- one optimiser step (step.cpp) ----

// Autocast to bf16 on the device for the scope (a disabled one does nothing).
class AutocastScope {
 public:
  AutocastScope(bool enable, at::Device device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  at::DeviceType type_;
  bool on_;
  bool prev_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

struct StepOutcome {
  StepMetrics metrics;      // without eval_loss
  bool stop = false;        // some rank asked to stop after this step
  bool timed_save = false;  // checkpoint.every_minutes have passed (on some rank)
};

// Runs optimiser step st.global_step + 1 (forward and backward over the micro-batches, the
// all-reduced loss, clipping, the NaN policy, the update and the ZeRO-1 broadcast) and advances
// `st`. Throws with nan_policy stop on a non-finite loss.
StepOutcome train_step(Run& run, StageTraining& stage, TrainState& st);

// ---- resumption and checkpoint cadence (checkpointing.cpp) ----

struct StartPoint {
  TrainState state;
  std::optional<std::filesystem::path> resume_dir;  // the checkpoint resumed from
  // Result-changing differences from the checkpoint's fingerprint (allow_changed_config).
  std::vector<std::string> changes;
};

// The latest checkpoint's state and weights when resuming (options.resume) from one, else a fresh
// state. A resume whose fingerprint differs from the checkpoint's throws, listing the differences,
// unless options.allow_changed_config; nothing is written before that check. Rank 0 then drops
// metrics lines of steps that will be redone (all of them on a fresh start).
StartPoint start_or_resume(Run& run);

// Rank 0: output_dir/config.yaml becomes this run's config; config_history.jsonl starts with it
// on a fresh start and gains an entry (step, time, changed keys, the config) on a resume that
// changed any key, which is also printed.
void record_config(const Run& run, const StartPoint& start);

// Whether checkpoint.every_minutes have passed since run.last_checkpoint (this rank's clock).
bool checkpoint_time_due(const Run& run);

// After a stop request, every checkpoint.every_steps steps, when checkpoint.every_minutes have
// passed (`timed`), and at the end of each stage.
bool checkpoint_due(const TrainConfig& c, int64_t global_step, bool stop, bool stage_end,
                    bool timed);

// Collective. A checkpoint at the end of a stage resumes at the next one, without optimiser state.
// Restarts the checkpoint.every_minutes clock.
void save_step_checkpoint(Run& run, const TrainState& st, const StageTraining& stage,
                          bool stage_end);

// ---- metrics and progress (metrics.cpp) ----

double peak_memory_gib(const at::Device& device);

// Rank 0's reporting: metrics.jsonl (appended to: a resume has already dropped the lines it
// redoes), the progress line on stderr and options.on_step. On other ranks it does nothing.
class Reporter {
 public:
  explicit Reporter(const Run& run);
  ~Reporter();
  Reporter(const Reporter&) = delete;
  Reporter& operator=(const Reporter&) = delete;
  // Starts the stage's clock (for the ETA) at step `first_step` of the stage.
  void stage_started(int64_t first_step);
  void step_done(const StepMetrics& m);
  void stage_done();
  void stopped(int64_t global_step);

 private:
  const Run& run_;
  std::FILE* metrics_ = nullptr;
  const bool tty_;
  std::chrono::steady_clock::time_point stage_start_;
  int64_t stage_first_ = 0;
};

// ---- the final model (export.cpp) ----

// Writes the trained model to `dir` in checkpoint.save_dtype, with the tokenizer for text data.
void export_final_model(const TrainConfig& c, CausalLM& model, const std::filesystem::path& dir);

}  // namespace uniattn::train_detail
