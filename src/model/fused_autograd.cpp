// fused_autograd.h: three torch::autograd::Function wrappers over the kernel hooks.
#include "fused_autograd.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "cuda_hooks.h"

namespace uniattn {
namespace {

using kernels::detail::cuda_hooks;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows each block of the RMSNorm backward kernel takes; its per-block weight-gradient sums are
// then added by one ATen sum (4096 rows of 4096: 512 x 4096 fp32 partial sums, 8 MB).
constexpr int64_t kNormRowsPerBlock = 8;

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            double eps, bool plus_one) {
    const auto xc = x.contiguous(), wc = w.contiguous();
    auto out = at::empty_like(xc);
    cuda_hooks().rms_norm(xc, nullptr, wc, eps, plus_one, nullptr, out);
    ctx->save_for_backward({xc, wc});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["plus_one"] = plus_one;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    const int64_t n = x.size(-1), rows = x.numel() / n;
    const auto g = grad_out[0].contiguous();
    auto grad_x = at::empty_like(x);
    auto partial =
        at::empty({std::max<int64_t>(1, (rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock), n},
                  x.options().dtype(at::kFloat));
    cuda_hooks().rms_norm_backward(g, x, w, ctx->saved_data["eps"].toDouble(),
                                   ctx->saved_data["plus_one"].toBool(), grad_x, partial);
    // The kernel writes the per-block sums anyway; only their sum is skipped for a frozen weight.
    auto grad_w = ctx->needs_input_grad(1) ? partial.sum(0).to(w.scalar_type()) : at::Tensor();
    return {grad_x, grad_w, at::Tensor(), at::Tensor()};
  }
};

class RotaryFunction : public torch::autograd::Function<RotaryFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    auto out = at::empty(x.sizes(), x.options());
    cuda_hooks().rotary(x, cos, sin, nullptr, out);
    // The kernel reads sin with cos's strides: keep both in one (contiguous) layout.
    ctx->save_for_backward({cos.contiguous(), sin.contiguous().neg()});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto g = grad_out[0].contiguous();
    auto grad_x = at::empty_like(g);
    cuda_hooks().rotary(g, saved[0], saved[1], nullptr, grad_x);
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

class GatedFunction : public torch::autograd::Function<GatedFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up,
                            bool gelu) {
    const auto gc = gate.contiguous(), uc = up.contiguous();
    const int64_t cols = gc.size(-1);
    auto out = at::empty_like(gc);
    cuda_hooks().gated(gc.view({-1, cols}), uc.view({-1, cols}), gelu, out);
    ctx->save_for_backward({gc, uc});
    ctx->saved_data["gelu"] = gelu;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto g = grad_out[0].contiguous();
    auto grad_gate = at::empty_like(saved[0]), grad_up = at::empty_like(saved[1]);
    cuda_hooks().gated_backward(g, saved[0], saved[1], ctx->saved_data["gelu"].toBool(), grad_gate,
                                grad_up);
    return {grad_gate, grad_up, at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm_autograd(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one) {
  return RmsNormFunction::apply(x, w, eps, plus_one);
}

at::Tensor rotary_autograd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return RotaryFunction::apply(x, cos, sin);
}

at::Tensor gated_autograd(const at::Tensor& gate, const at::Tensor& up, bool gelu) {
  return GatedFunction::apply(gate, up, gelu);
}

}  // namespace uniattn
