// One optimiser step: the learning rate of the cosine schedule, forward and backward over this
// rank's micro-batches (the gradient all-reduce overlapping the last backward), the loss and stop
// request and the timed-checkpoint flag summed over ranks, clipping, the NaN policy, AdamW and the
// ZeRO-1 broadcast.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numbers>

#include "components.h"
#include "train/optim/fused_adamw.h"
#include "uniattn/error.h"

namespace uniattn {

double cosine_lr_factor(int64_t step, int64_t total, double warmup_ratio, double min_ratio) {
  const auto warm = static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total)));
  if (step < warm)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warm));
  const double progress =
      static_cast<double>(step - warm) / static_cast<double>(std::max<int64_t>(1, total - warm));
  return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

namespace train_detail {

AutocastScope::AutocastScope(bool enable, at::Device device) : type_(device.type()), on_(enable) {
  if (!on_) return;
  prev_ = at::autocast::is_autocast_enabled(type_);
  prev_dtype_ = at::autocast::get_autocast_dtype(type_);
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
}

AutocastScope::~AutocastScope() {
  if (!on_) return;
  at::autocast::set_autocast_enabled(type_, prev_);
  at::autocast::set_autocast_dtype(type_, prev_dtype_);
  at::autocast::clear_cache();
}

namespace {
using Clock = std::chrono::steady_clock;

struct BatchTokens {
  int64_t targets = 0;  // scored positions: the loss is normalised by them
  int64_t inputs = 0;   // all positions: the throughput counts them
};

BatchTokens count_tokens(const std::vector<Sequence>& data, const std::vector<int64_t>& batch) {
  BatchTokens t;
  for (auto i : batch) {
    t.targets += data[static_cast<size_t>(i)].target_tokens();
    t.inputs += static_cast<int64_t>(data[static_cast<size_t>(i)].ids.size());
  }
  return t;
}

// A micro-batch's (or a rank's) summed loss and its parts (distill.h, LossTerms).
struct LossParts {
  double total = 0.0, ce = 0.0, kl = 0.0, mse = 0.0;
  LossParts& operator+=(const LossParts& o) {
    total += o.total, ce += o.ce, kl += o.kl, mse += o.mse;
    return *this;
  }
};

// Whether this stage distils, and whether it needs the followers' attention outputs.
bool distilling(const Run& run, const StageTraining& stage) {
  return run.teacher && stage.config.distill;
}
bool follower_mse_on(const Run& run, const StageTraining& stage) {
  return distilling(run, stage) && run.c.distill->follower_mse > 0;
}

// Distillation compares the full logits; every other stage can take the chunked LM head + CE.
bool chunked_ce_on(const Run& run, const StageTraining& stage) {
  return run.c.training.fused_linear_cross_entropy && !distilling(run, stage);
}

// The student's forward and its loss (under the caller's autocast); `teacher` when distilling.
LossTerms student_loss(Run& run, const StageTraining& stage, const at::Tensor& ids,
                       const at::Tensor& mask, const ModelOutputs* teacher) {
  ForwardOptions fo;
  fo.recompute = run.c.training.activation_checkpointing;
  if (chunked_ce_on(run, stage)) {
    fo.hidden_only = true;
    return chunked_ce_loss(run.model, run.model->forward(ids, nullptr, fo), ids, mask);
  }
  ModelOutputs student;
  if (follower_mse_on(run, stage))
    student = forward_with_attention(run.model, ids, run.followers);
  else
    student.logits = run.model->forward(ids, nullptr, fo);
  return micro_batch_loss(student, teacher, teacher ? &*run.c.distill : nullptr, ids, mask);
}

// Forward and backward of micro-batch `m` of this rank's share of `batch`; returns its summed
// loss. `targets` are those of the whole global batch (known on every rank), so that the summed
// gradients equal those of one process running the full batch. With distillation the teacher
// runs first, under no-grad and outside the student's autocast.
LossParts micro_batch_backward(Run& run, StageTraining& stage, const std::vector<int64_t>& batch,
                               int64_t m, int64_t targets, bool inject_nan) {
  const auto& c = run.c;
  const int64_t per_rank = c.training.global_batch / run.comm.world();
  const auto first = batch.begin() + run.comm.rank() * per_rank + m * c.training.micro_batch;
  std::vector<int64_t> idx(first, first + c.training.micro_batch);
  at::Tensor ids, mask;
  collate(run.train_data, idx, run.pad, ids, mask);
  ids = ids.to(run.device);
  mask = mask.to(run.device);
  if (stage.reducer) stage.reducer->arm(m == run.accum - 1);
  const bool kd = distilling(run, stage), attn = follower_mse_on(run, stage);
  ModelOutputs teacher;
  if (kd) teacher = run.teacher->forward(ids, attn ? run.followers : std::vector<int64_t>{});
  at::Tensor loss, parts;
  {
    AutocastScope ac(run.autocast, run.device);
    const auto t = student_loss(run, stage, ids, mask, kd ? &teacher : nullptr);
    auto sum = t.total;
    if (inject_nan) sum = sum * std::numeric_limits<double>::quiet_NaN();
    loss = sum / static_cast<double>(targets);
    // One device-to-host copy for the four numbers.
    parts = at::stack({sum.detach().to(at::kFloat), t.ce.to(at::kFloat), t.kl.to(at::kFloat),
                       t.mse.to(at::kFloat)})
                .to(at::kDouble)
                .cpu();
  }
  loss.backward();
  const auto* p = parts.data_ptr<double>();
  return {p[0], p[1], p[2], p[3]};
}

// Accumulates the step's gradients over this rank's micro-batches and sums them over ranks;
// returns this rank's summed loss.
LossParts accumulate_gradients(Run& run, StageTraining& stage, const std::vector<int64_t>& batch,
                               int64_t targets, bool inject_nan) {
  if (stage.reducer)
    stage.reducer->zero_grad();
  else
    for (auto& p : stage.params) p.mutable_grad().reset();
  LossParts local_sum;
  for (int64_t m = 0; m < run.accum; ++m)
    local_sum += micro_batch_backward(run, stage, batch, m, targets, inject_nan);
  if (stage.reducer) stage.reducer->finish();
  return local_sum;
}

struct SyncedLoss {
  LossParts loss;           // means over the global batch's target tokens
  bool stop = false;        // any rank's stop request stops all
  bool timed_save = false;  // any rank's checkpoint.every_minutes clock makes all checkpoint
};

// One all-reduce carries the loss, the stop request and the timed checkpoint (ranks' clocks
// differ; the checkpoint is collective, so they must agree).
SyncedLoss all_reduce_loss_and_flags(Run& run, const LossParts& local, bool want_stop,
                                     bool want_save, int64_t targets) {
  auto sync = at::tensor(
      {local.total, local.ce, local.kl, local.mse, want_stop ? 1.0 : 0.0, want_save ? 1.0 : 0.0},
      at::kDouble);
  if (run.device.is_cuda()) sync = sync.to(run.device);
  run.comm.allreduce_sum(sync);
  sync = sync.cpu();
  const auto* v = sync.data_ptr<double>();
  const auto n = static_cast<double>(targets);
  return {{v[0] / n, v[1] / n, v[2] / n, v[3] / n}, v[4] > 0, v[5] > 0};
}

bool stop_requested(const Run& run, int64_t global_step) {
  const auto& debug = run.c.debug;
  return (run.options.stop && run.options.stop->load()) ||
         (debug.stop_after_steps > 0 && global_step + 1 >= debug.stop_after_steps);
}

// ZeRO-1: each owner broadcasts its updated parameters, coalesced into one flat tensor.
void broadcast_owned_parameters(Comm& comm, const StageTraining& stage) {
  at::NoGradGuard ng;
  const auto& params = stage.params;
  for (int r = 0; r < comm.world(); ++r) {
    std::vector<at::Tensor> group;
    for (size_t i = 0; i < params.size(); ++i)
      if (stage.owner[i] == r) group.push_back(params[i].detach().reshape({-1}));
    if (group.empty()) continue;
    auto flat = at::cat(group);
    comm.broadcast(flat, r);
    int64_t off = 0;
    for (size_t i = 0; i < params.size(); ++i)
      if (stage.owner[i] == r) {
        params[i].detach().copy_(flat.narrow(0, off, params[i].numel()).view(params[i].sizes()));
        off += params[i].numel();
      }
  }
}

// training.nan_policy for a step whose loss or gradient norm is not finite: stop throws, skip
// drops the gradients so that no parameter moves.
void skip_non_finite_step(Run& run, StageTraining& stage, StepMetrics& mt) {
  if (run.c.training.nan_policy == "stop")
    fail("non-finite loss (", mt.loss, ", grad norm ", mt.grad_norm, ") at step ", mt.step,
         " (stage ", stage.config.name, ", step ", mt.stage_step, " of ", stage.total_steps,
         "); lower the learning rate or set training.nan_policy: skip");
  mt.skipped = true;
  for (auto& p : stage.params) p.mutable_grad().reset();
  if (run.rank0)
    std::fprintf(stderr, "\n[train] step %lld: non-finite loss, update skipped\n",
                 static_cast<long long>(mt.step));
}

}  // namespace

StepOutcome train_step(Run& run, StageTraining& stage, TrainState& st) {
  const auto& c = run.c;
  const auto& sc = stage.config;
  const auto t0 = Clock::now();
  const double lr =
      sc.lr * cosine_lr_factor(st.stage_step, stage.total_steps, sc.warmup_ratio, sc.min_lr_ratio);
  if (stage.opt)
    for (auto& g : stage.opt->param_groups()) g.options().set_lr(lr);
  const auto batch =
      batch_indices(static_cast<int64_t>(run.train_data.size()), c.training.global_batch,
                    c.training.seed, st.stage, st.stage_step, c.data.shuffle);
  const BatchTokens tokens = count_tokens(run.train_data, batch);
  const bool inject_nan = c.debug.inject_nan_at_step == st.global_step + 1;
  UNIATTN_CHECK(
      !(c.debug.fail_at_step == st.global_step + 1 && c.debug.fail_rank == run.comm.rank()),
      "debug.fail_at_step: injected failure at step ", st.global_step + 1);
  const LossParts local_sum = accumulate_gradients(run, stage, batch, tokens.targets, inject_nan);
  const auto synced = all_reduce_loss_and_flags(run, local_sum, stop_requested(run, st.global_step),
                                                checkpoint_time_due(run), tokens.targets);
  StepOutcome out;
  StepMetrics& mt = out.metrics;
  out.stop = synced.stop;
  out.timed_save = synced.timed_save;
  mt.step = st.global_step + 1;
  mt.stage = sc.name;
  mt.stage_step = st.stage_step + 1;
  mt.stage_steps = stage.total_steps;
  mt.loss = synced.loss.total;
  if (distilling(run, stage)) {
    mt.ce = synced.loss.ce;
    mt.kl = synced.loss.kl;
    if (follower_mse_on(run, stage)) mt.mse = synced.loss.mse;
  }
  mt.lr = lr;
  // Every rank holds the full summed gradients, so the norm (and the clip) agree. The fused
  // optimiser applies the clip coefficient inside its kernel, saving a pass over the gradients.
  auto* fused = dynamic_cast<FusedAdamW*>(stage.opt.get());
  GradClip clip;
  {
    at::NoGradGuard ng;
    const double max_norm = c.training.grad_clip > 0 ? c.training.grad_clip : 1e30;
    if (fused)
      clip = grad_clip_coefficient(stage.params, max_norm);
    else
      clip.norm = clip_grad_norm_foreach(stage.params, max_norm);
    mt.grad_norm = clip.norm;
  }
  if (!std::isfinite(mt.loss) || !std::isfinite(mt.grad_norm)) {
    skip_non_finite_step(run, stage, mt);
  } else {
    if (fused)
      fused->step_clipped(clip.coef);
    else if (stage.opt)
      stage.opt->step();
    if (run.zero1) broadcast_owned_parameters(run.comm, stage);
    st.tokens += tokens.targets;
    st.last_loss = mt.loss;
  }
  ++st.global_step;
  ++st.stage_step;
  mt.tokens = st.tokens;
  mt.peak_memory_gib = peak_memory_gib(run.device);
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  mt.tokens_per_s = static_cast<double>(tokens.inputs) / std::max(dt, 1e-9);
  return out;
}

}  // namespace train_detail
}  // namespace uniattn
