// The trainer's optimiser step and gradient clipping as multi-tensor (foreach / fused) ops, so a
// step launches a handful of kernels instead of several per parameter tensor.
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/optim/adamw.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace uniattn {

// torch::optim::AdamW whose step() updates every parameter of a group with one call of the fused
// kernel at::_fused_adamw_ (per device and dtype; CUDA and CPU), or, for CUDA tensors of
// fp32/bf16/fp16 without amsgrad, with kernels/adamw.cu, one launch per tensor at nearly the copy
// bandwidth (KernelOp::AdamW; the same arithmetic). The update is AdamW's: decoupled
// weight decay p *= 1 - lr * wd, then p -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) +
// eps). param_groups and the per-parameter AdamWParamState (step, exp_avg, exp_avg_sq,
// max_exp_avg_sq) are AdamW's own, so save()/load() and checkpoints are interchangeable with
// torch::optim::AdamW. Parameters without a gradient are skipped, as AdamW does. Throws
// c10::Error (from ATen) for sparse gradients or a dtype the kernel does not support.
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  at::Tensor step(LossClosure closure = nullptr) override;
  // step() with every gradient multiplied by `clip_coef` (an fp32 scalar tensor, e.g.
  // GradClip::coef; undefined: 1) inside the fused kernel, which divides by its grad_scale
  // argument 1 / clip_coef in fp32. Saves clip_grad_norm_foreach's separate multiplication (a read
  // and write of every gradient). The gradients are unspecified afterwards: ATen's kernel writes
  // them back divided, the adamw kernel (see step()) leaves them.
  at::Tensor step_clipped(const at::Tensor& clip_coef);

 private:
  // step() with each gradient divided by grad_scale (an fp32 scalar tensor; undefined: 1).
  at::Tensor step_scaled(LossClosure closure, const at::Tensor& grad_scale);
  // The device step counts at::_fused_adamw_ reads for `params` (counts[i] this update), from
  // the mirrors below; only its path keeps them, the adamw kernel takes the counts by value.
  std::vector<at::Tensor> device_steps(const std::vector<at::Tensor>& params,
                                       const std::vector<int64_t>& counts);
  // at::_fused_adamw_ reads each parameter's step count from a float scalar tensor on its device.
  // They mirror AdamWParamState::step (the source of truth, e.g. after load()): a mirror one behind
  // is advanced on the device with one foreach add, any other is refilled.
  struct StepMirror {
    at::Tensor value;
    int64_t step = -1;
  };
  std::unordered_map<const void*, StepMirror> steps_;
};

// The global L2 norm of the gradients of `params` (those that have one) and the clip coefficient
// min(1, max_norm / (norm + 1e-6)) of torch::nn::utils::clip_grad_norm_, leaving the gradients
// as they are. norm is computed in fp32 for fp32/bf16/fp16 gradients (fp64 for fp64 ones), with
// at::_foreach_norm and one synchronisation to read it; 0 when no parameter has a gradient.
// coef is a scalar tensor (the norm's dtype) on the first gradient's device, undefined when the
// coefficient is exactly 1 (also when there are no gradients); NaN when the norm is not finite.
struct GradClip {
  double norm = 0.0;
  at::Tensor coef;
};
GradClip grad_clip_coefficient(const std::vector<at::Tensor>& params, double max_norm);

// Clips the gradients of `params` (those that have one) in place to a global L2 norm of at most
// `max_norm`, as torch::nn::utils::clip_grad_norm_ does: every gradient is multiplied by
// min(1, max_norm / (total_norm + 1e-6)); the norm is computed in fp32 for fp32/bf16/fp16
// gradients (in fp64 for fp64 ones). Returns the total norm before clipping (inf/NaN when a
// gradient is non-finite; the gradients are then scaled by NaN as torch's version does), or 0
// when no parameter has a gradient. Uses at::_foreach_norm and at::_foreach_mul_ and synchronises
// with the device once, to read the norm; when the coefficient is 1 nothing is multiplied. The
// coefficient is applied in the gradients' dtype (bf16 for bf16 gradients, as torch does).
double clip_grad_norm_foreach(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace uniattn
