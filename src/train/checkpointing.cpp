// When the trainer checkpoints and how it resumes; the checkpoint format itself is state.cpp's.
#include <torch/optim/adamw.h>

#include "components.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn::train_detail {

StartPoint start_or_resume(Run& run) {
  const auto& c = run.c;
  StartPoint start;
  start.state.zero1 = run.zero1;
  start.state.weights_dtype = weight_dtype(c);
  if (run.options.resume) start.resume_dir = latest_checkpoint(run.out);
  if (!start.resume_dir) {
    if (run.rank0) remove_tree(run.out / "metrics.jsonl");
    return start;
  }
  const auto& dir = *start.resume_dir;
  TrainState& st = start.state;
  st = read_state(dir, run.comm.world(), run.zero1);
  st.zero1 = run.zero1;
  // The optimiser state has the weights' dtype, and the fused kernel wants them to agree.
  const auto wd = weight_dtype(c);
  UNIATTN_CHECK(st.weights_dtype == wd, dir, ": its weights and optimizer state are ",
                st.weights_dtype, ", but training.precision ", c.training.precision, " trains ", wd,
                " weights: resume with the precision it was written with (bf16 and fp32 share "
                "fp32 weights; bf16_weights has bf16 ones)");
  UNIATTN_CHECK(st.stage <= static_cast<int64_t>(c.stages.size()), dir, ": stage ", st.stage,
                " is beyond the config's ", c.stages.size(), " stages");
  load_weights(dir, run.model);
  // Steps after the checkpoint are redone, and logged again.
  if (run.rank0) truncate_metrics(run.out / "metrics.jsonl", st.global_step);
  return start;
}

bool checkpoint_due(const TrainConfig& c, int64_t global_step, bool stop, bool stage_end) {
  const bool periodic = c.checkpoint.every_steps > 0 && global_step % c.checkpoint.every_steps == 0;
  return stop || periodic || stage_end;
}

void save_step_checkpoint(Run& run, const TrainState& st, const StageTraining& stage,
                          bool stage_end) {
  TrainState snap = st;
  if (stage_end) {
    // A finished stage resumes at the next one with a fresh optimiser.
    snap.stage = st.stage + 1;
    snap.stage_step = 0;
  }
  save_checkpoint(run.out, snap, run.model, stage_end ? nullptr : stage.opt.get(), run.comm,
                  run.c.checkpoint.keep_last);
}

}  // namespace uniattn::train_detail
