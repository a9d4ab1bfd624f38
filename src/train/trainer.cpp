// The training loop: stages with their trainable parameter sets, each a run of optimiser steps
// followed by evaluation, reporting and checkpoints as they fall due, then the final model. The
// pieces are in components.h: set-up (setup.cpp), the step with its data-parallel parts
// (step.cpp: bucketed all-reduce during the last micro-batch's backward; ZeRO-1: each rank steps
// its own parameters, then broadcasts), checkpoints (checkpointing.cpp, state.cpp), metrics and
// progress (metrics.cpp) and export (export.cpp).
#include <ATen/ATen.h>

#include <exception>

#ifdef UNIATTN_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "components.h"
#include "uniattn/error.h"
#include "uniattn/eval/response_loss.h"
#include "uniattn/io/file_io.h"

namespace uniattn {
namespace {
using namespace train_detail;

// The held-out loss of the current weights.
double run_eval(CausalLM& model, const std::vector<Sequence>& eval_data, const TrainConfig& c,
                int32_t pad, bool autocast, at::Device device) {
  AutocastScope ac(autocast, device);
  // Examples are already cut to data.max_length; the same rule again keeps the loss defined as in
  // uniattn-eval and calibration (docs/evaluation.md, "Held-out response loss").
  return response_loss(
             model, eval_data,
             {.max_len = c.data.max_length, .batch_tokens = c.eval.batch_tokens, .pad_id = pad})
      .loss;
}

// Every eval.every_steps steps and at the end of each stage, when there is held-out data.
bool eval_due(const Run& run, int64_t global_step, bool stage_end) {
  const int64_t every = run.c.eval.every_steps;
  return !run.eval_data.empty() && ((every > 0 && global_step % every == 0) || stage_end);
}

// Trains stage st.stage from step st.stage_step to its end. Returns false when a stop request
// ended the run (its checkpoint saved); `resume_dir` is consumed by the first stage trained.
bool train_stage(Run& run, TrainState& st, std::optional<std::filesystem::path>& resume_dir,
                 Reporter& reporter, TrainResult& result) {
  // A stage resumed at its first step starts with a fresh optimiser, as one not resumed.
  const bool restore_optimizer = resume_dir && st.stage_step > 0;
  StageTraining stage = set_up_stage(run, st, restore_optimizer ? resume_dir : std::nullopt);
  resume_dir.reset();
  reporter.stage_started(st.stage_step);
  while (st.stage_step < stage.total_steps) {
    auto [mt, stop_now, timed_save] = train_step(run, stage, st);
    const bool stage_end = st.stage_step == stage.total_steps;
    if (eval_due(run, st.global_step, stage_end))
      mt.eval_loss = run_eval(run.model, run.eval_data, run.c, run.pad, run.autocast, run.device);
    reporter.step_done(mt);
    result.last_loss = mt.loss;
    if (checkpoint_due(run.c, st.global_step, stop_now, stage_end, timed_save))
      save_step_checkpoint(run, st, stage, stage_end);
    if (stop_now) {
      reporter.stopped(st.global_step);
      return false;
    }
  }
  reporter.stage_done();
  return true;
}

// Everything after the process group exists; train() reports a failure here to the other ranks.
TrainResult run_training(const TrainConfig& c, const TrainOptions& options, Comm& comm,
                         const at::Device device) {
  Run run = set_up_run(c, options, comm, device);
  StartPoint start = start_or_resume(run);
  record_config(run, start);
  auto& [st, resume_dir, changes] = start;
  TrainResult result;
  if (resume_dir) result.resumed_from = st.global_step;
  result.config_changes = changes;
  Reporter reporter(run);
  run.last_checkpoint = std::chrono::steady_clock::now();
  for (; st.stage < static_cast<int64_t>(c.stages.size()); ++st.stage, st.stage_step = 0)
    if (!train_stage(run, st, resume_dir, reporter, result)) {
      result.interrupted = true;
      result.steps = st.global_step;
      return result;
    }
  result.steps = st.global_step;
  result.final_model = run.out / "final";
  if (run.rank0) export_final_model(c, run.model, result.final_model);
  comm.barrier();
  return result;
}

}  // namespace

TrainResult train(const TrainConfig& c, const TrainOptions& options) {
  const DistEnv& env = options.dist;
  const at::Device device = pick_device(c.training.device, env);
  UNIATTN_CHECK(c.training.global_batch % (c.training.micro_batch * env.world_size) == 0,
                "training.global_batch (", c.training.global_batch,
                ") must be a multiple of micro_batch x world size (", c.training.micro_batch, " x ",
                env.world_size, ")");
  // Each rank's own GPU is its current device, for the main thread's allocations and for NCCL
  // (otherwise every rank would also open a context on GPU 0).
#ifdef UNIATTN_WITH_CUDA
  if (device.is_cuda()) c10::cuda::set_device(device.index());
#endif
  Comm comm(env, c.distributed.backend, device.is_cuda(), c.distributed.timeout_s);
  try {
    return run_training(c, options, comm, device);
  } catch (const std::exception& e) {
    if (const auto first = comm.report_failure(e.what()))
      fail(*first, " (rank ", comm.rank(), " then stopped with: ", e.what(), ")");
    throw;
  }
}

}  // namespace uniattn
