// The data-parallel gradient all-reduce: buckets in backward order, launched as they fill (see
// GradReducer in internal.h).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <memory>

#include "train/internal.h"
#include "uniattn/error.h"

namespace uniattn::train_detail {

namespace {

// Runs after AccumulateGrad has added this backward's gradient into .grad: the gradient of the
// step is then complete for this parameter (earlier micro-batches included).
struct AccumulatedHook : torch::autograd::PostAccumulateGradHook {
  AccumulatedHook(GradReducer* r, size_t k) : reducer(r), param(k) {}
  void operator()(const torch::autograd::Variable& /*tensor*/) override {
    reducer->on_accumulated(param);
  }
  GradReducer* reducer;
  size_t param;
};

}  // namespace

GradReducer::GradReducer(Comm& comm, const std::vector<at::Tensor>& params, double bucket_bytes)
    : comm_(comm), params_(params) {
  views_ = !params_.empty();
  for (const auto& p : params_) {
    UNIATTN_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kBFloat16,
                  "data-parallel training needs fp32 or bf16 weights, got ", p.scalar_type());
    views_ &= p.scalar_type() == at::kFloat && p.is_contiguous();
  }
  // Buckets in reverse parameter order: the order in which backward produces gradients.
  bucket_of_.resize(params_.size());
  offset_of_.resize(params_.size());
  seen_.assign(params_.size(), false);
  Bucket cur;
  int64_t cur_numel = 0;
  const auto flush = [&] {
    if (cur.params.empty()) return;
    cur.flat = at::zeros({cur_numel}, params_[cur.params[0]].options().dtype(at::kFloat));
    buckets_.push_back(std::move(cur));
    cur = Bucket();
    cur_numel = 0;
  };
  for (size_t k = params_.size(); k-- > 0;) {
    bucket_of_[k] = buckets_.size();
    offset_of_[k] = cur_numel;
    cur.params.push_back(k);
    cur.offsets.push_back(cur_numel);
    cur_numel += params_[k].numel();
    if (static_cast<double>(cur_numel) * 4.0 >= bucket_bytes) flush();
  }
  flush();
  for (size_t k = 0; k < params_.size(); ++k)
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k],
                                                   std::make_unique<AccumulatedHook>(this, k));
  zero_grad();
}

GradReducer::~GradReducer() {
  for (auto& p : params_) {
    torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
    // The views would keep the buckets alive after the step they belong to.
    if (views_) p.mutable_grad().reset();
  }
}

at::Tensor GradReducer::slot_of(size_t k) {
  const auto& p = params_[k];
  return buckets_[bucket_of_[k]].flat.narrow(0, offset_of_[k], p.numel()).view(p.sizes());
}

void GradReducer::zero_grad() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& b : buckets_) b.flat.zero_();
  for (size_t k = 0; k < params_.size(); ++k) {
    if (!views_) {
      params_[k].mutable_grad().reset();
      continue;
    }
    auto& g = params_[k].mutable_grad();
    // Re-point only what no longer is the bucket slice (the trainer may have dropped it).
    if (!g.defined() || !g.is_alias_of(buckets_[bucket_of_[k]].flat)) g = slot_of(k);
  }
}

void GradReducer::arm(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = on;
  std::fill(seen_.begin(), seen_.end(), false);
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.work.reset();
  }
  next_launch_ = 0;
}

void GradReducer::on_accumulated(size_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_ || seen_[k]) return;
  seen_[k] = true;
  // With views the bucket already holds the accumulated gradient.
  if (!views_) slot_of(k).copy_(params_[k].grad());
  --buckets_[bucket_of_[k]].pending;
  launch_ready();
}

void GradReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    auto& b = buckets_[next_launch_++];
    b.work = comm_.allreduce_async(b.flat);
  }
}

void GradReducer::finish() {
  std::lock_guard<std::mutex> lock(mu_);
  // Parameters whose gradient never arrived in the last backward (unused in that graph) still
  // contribute what earlier micro-batches accumulated, or zeros.
  for (size_t k = 0; k < params_.size(); ++k) {
    if (seen_[k]) continue;
    seen_[k] = true;
    if (!views_) {
      const auto& g = params_[k].grad();
      if (g.defined())
        slot_of(k).copy_(g);
      else
        slot_of(k).zero_();
    }
    --buckets_[bucket_of_[k]].pending;
  }
  launch_ready();
  for (auto& b : buckets_) {
    Comm::wait(b.work);
    if (views_) continue;
    for (size_t s = 0; s < b.params.size(); ++s) {
      auto& p = params_[b.params[s]];
      auto src = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(src);
      else
        p.mutable_grad() = src.to(p.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    }
  }
  armed_ = false;
}

}  // namespace uniattn::train_detail
