#include "fused_adamw.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "cuda_hooks.h"
#include "uniattn/error.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn {

namespace {
// Whether adamw.cu takes a bucket: CUDA tensors of one dtype (fp32/bf16/fp16), contiguous and
// 16-byte aligned, with the kernel path open (UNIATTN_DISABLE_KERNELS=adamw closes it).
bool adamw_kernel_applies(const std::vector<at::Tensor>& params,
                          const std::vector<at::Tensor>& grads,
                          const std::vector<at::Tensor>& exp_avgs,
                          const std::vector<at::Tensor>& exp_avg_sqs) {
  if (!kernels::detail::cuda_hooks().adamw || params.empty() || !params[0].is_cuda()) return false;
  const auto dt = params[0].scalar_type();
  if (dt != at::kFloat && dt != at::kBFloat16 && dt != at::kHalf) return false;
  if (!kernel_enabled(KernelOp::AdamW, params[0].device())) return false;
  for (size_t i = 0; i < params.size(); ++i) {
    // What ATen's kernel also requires of its lists (it throws; the ATen call below will too).
    const auto fits = [&](const at::Tensor& t) {
      return t.scalar_type() == dt && t.is_contiguous() && t.device() == params[i].device() &&
             t.numel() == params[i].numel() &&
             reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
    };
    if (!fits(params[i]) || !fits(grads[i]) || !fits(exp_avgs[i]) || !fits(exp_avg_sqs[i]))
      return false;
  }
  return true;
}
}  // namespace

at::Tensor FusedAdamW::step(LossClosure closure) { return step_scaled(std::move(closure), {}); }

at::Tensor FusedAdamW::step_clipped(const at::Tensor& clip_coef) {
  // The kernels divide each gradient by grad_scale (their AMP unscaling input).
  return step_scaled(nullptr,
                     clip_coef.defined() ? at::reciprocal(clip_coef.to(at::kFloat)) : at::Tensor());
}

at::Tensor FusedAdamW::step_scaled(LossClosure closure, const at::Tensor& grad_scale) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode grad(true);
    loss = closure();
  }
  struct Lists {
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs;
    std::vector<int64_t> step_counts;
  };
  for (auto& group : param_groups_) {
    auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
    const bool amsgrad = o.amsgrad();
    // The kernel takes tensors of one device and dtype per call.
    std::map<std::tuple<int, int, int>, Lists> buckets;
    for (auto& p : group.params()) {
      const auto& g = p.grad();
      if (!g.defined()) continue;
      UNIATTN_CHECK(!g.is_sparse(), "FusedAdamW: sparse gradients are not supported");
      auto& slot = state_[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0);
        s->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        s->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        if (amsgrad) s->max_exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        slot = std::move(s);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      if (amsgrad && !s.max_exp_avg_sq().defined())
        s.max_exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
      s.step(s.step() + 1);  // counted before the update, as AdamW does
      auto& l = buckets[{static_cast<int>(p.device().type()), static_cast<int>(p.device().index()),
                         static_cast<int>(p.scalar_type())}];
      l.params.push_back(p);
      l.grads.push_back(g);
      l.exp_avgs.push_back(s.exp_avg());
      l.exp_avg_sqs.push_back(s.exp_avg_sq());
      if (amsgrad) l.max_exp_avg_sqs.push_back(s.max_exp_avg_sq());
      l.step_counts.push_back(s.step());
    }
    const auto [beta1, beta2] = o.betas();
    for (auto& [key, l] : buckets) {
      std::optional<at::Tensor> scale;
      if (grad_scale.defined()) scale = grad_scale.to(l.params[0].device());
      if (!amsgrad && adamw_kernel_applies(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs)) {
        kernels::detail::AdamWHyper h{o.lr(), beta1, beta2, o.weight_decay(), o.eps()};
        for (size_t i = 0; i < l.params.size(); ++i) {
          h.step = l.step_counts[i];
          kernels::detail::cuda_hooks().adamw(l.params[i], l.grads[i], l.exp_avgs[i],
                                              l.exp_avg_sqs[i], scale ? &*scale : nullptr, h);
          // Written through raw pointers: bump the version counters as ATen's in-place kernel
          // does, so autograd still refuses a graph that saved the old values.
          for (auto* t : {&l.params[i], &l.exp_avgs[i], &l.exp_avg_sqs[i]})
            t->unsafeGetTensorImpl()->bump_version();
        }
        continue;
      }
      at::_fused_adamw_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, l.max_exp_avg_sqs,
                        device_steps(l.params, l.step_counts), o.lr(), beta1, beta2,
                        o.weight_decay(), o.eps(), amsgrad, /*maximize=*/false, scale);
    }
  }
  return loss;
}

std::vector<at::Tensor> FusedAdamW::device_steps(const std::vector<at::Tensor>& params,
                                                 const std::vector<int64_t>& counts) {
  std::vector<at::Tensor> steps, advance;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    auto& m = steps_[p.unsafeGetTensorImpl()];
    if (!m.value.defined() || m.value.device() != p.device()) {
      m.value = at::zeros({}, p.options().dtype(at::kFloat));
      m.step = 0;
    }
    if (m.step == counts[i] - 1)
      advance.push_back(m.value);
    else
      m.value.fill_(static_cast<double>(counts[i]));
    m.step = counts[i];
    steps.push_back(m.value);
  }
  if (!advance.empty()) at::_foreach_add_(advance, 1.0);
  return steps;
}

namespace {
std::vector<at::Tensor> defined_grads(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return grads;
}

GradClip clip_of_grads(const std::vector<at::Tensor>& grads, double max_norm) {
  if (grads.empty()) return {};
  at::NoGradGuard no_grad;
  // bf16 / fp16 gradients (training.precision bf16_weights) get their norms in fp32, as
  // squares summed in 8 bits of mantissa would be coarse; fp64 ones keep fp64.
  bool narrow = true;
  for (const auto& g : grads)
    narrow &= g.scalar_type() == at::kFloat || g.scalar_type() == at::kBFloat16 ||
              g.scalar_type() == at::kHalf;
  auto norms = at::_foreach_norm(grads, 2,
                                 narrow ? std::optional<at::ScalarType>(at::kFloat) : std::nullopt);
  at::Tensor total;
  if (norms.size() == 1) {
    total = norms[0];
  } else {
    for (auto& n : norms) n = n.to(norms[0].device());
    total = at::stack(norms).norm(2);
  }
  GradClip clip;
  clip.norm = total.item<double>();
  // The coefficient min(1, max_norm / (norm + 1e-6)) is exactly 1 when the norm is within bounds:
  // no multiplication (a read and write of every gradient) is needed then.
  if (std::isfinite(clip.norm) && max_norm / (clip.norm + 1e-6) >= 1.0) return clip;
  clip.coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
  return clip;
}

}  // namespace

GradClip grad_clip_coefficient(const std::vector<at::Tensor>& params, double max_norm) {
  return clip_of_grads(defined_grads(params), max_norm);
}

double clip_grad_norm_foreach(const std::vector<at::Tensor>& params, double max_norm) {
  const auto grads = defined_grads(params);
  const auto clip = clip_of_grads(grads, max_norm);
  if (!clip.coef.defined()) return clip.norm;
  at::NoGradGuard no_grad;
  // One coefficient tensor per device and dtype, in the gradients' dtype: the foreach kernel takes
  // its fast (multi-tensor) path only then, and otherwise falls back to one casting kernel per
  // gradient (measured: 7.5 ms instead of about 2.7 for a 4-layer LLaMA-8B slice in bf16).
  // torch's clip_grad_norm_ computes a bf16 coefficient for bf16 gradients too.
  std::map<std::tuple<int, int, int>, std::vector<at::Tensor>> groups;
  for (const auto& g : grads)
    groups[{static_cast<int>(g.device().type()), static_cast<int>(g.device().index()),
            static_cast<int>(g.scalar_type())}]
        .push_back(g);
  for (auto& [key, list] : groups)
    at::_foreach_mul_(list, clip.coef.to(list[0].device(), list[0].scalar_type()));
  return clip.norm;
}

}  // namespace uniattn
