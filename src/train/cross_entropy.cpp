// cross_entropy_rows (cross_entropy.h): an autograd function over the CUDA kernel pair, or ATen's
// fp32 expression where the kernel does not apply.
#include "cross_entropy.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "cuda_hooks.h"
#include "uniattn/error.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool kernel_applies(const at::Tensor& logits) {
  const auto& h = kernels::detail::cuda_hooks();
  if (!h.cross_entropy_forward || !logits.is_cuda()) return false;
  const auto dt = logits.scalar_type();
  // fp32 logits have no copy to save, and ATen's log-softmax is more accurate in fp32 (its
  // probabilities carry ~4x less rounding than exp(z - max) / sum, measured on the H200).
  if (dt != at::kBFloat16 && dt != at::kHalf) return false;
  return kernel_enabled(KernelOp::CrossEntropy, logits.device());
}

class CrossEntropyRows : public torch::autograd::Function<CrossEntropyRows> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& targets, int64_t ignore_index) {
    // The kernels read rows with a contiguous last dim; anything else is copied once.
    const auto z = logits.stride(1) == 1 ? logits : logits.contiguous();
    const auto t = targets.contiguous();
    const auto fp32 = logits.options().dtype(at::kFloat);
    auto loss = at::empty({z.size(0)}, fp32), stats = at::empty({2, z.size(0)}, fp32);
    kernels::detail::cuda_hooks().cross_entropy_forward(z, t, ignore_index, loss, stats);
    ctx->save_for_backward({z, t, stats});
    ctx->saved_data["ignore_index"] = ignore_index;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto& z = saved[0];
    const auto g = grad_out[0].to(at::kFloat).expand({z.size(0)}).contiguous();
    auto grad = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
    kernels::detail::cuda_hooks().cross_entropy_backward(
        z, saved[1], saved[2], g, ctx->saved_data["ignore_index"].toInt(), grad);
    return {grad, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets,
                              int64_t ignore_index) {
  UNIATTN_CHECK(logits.dim() == 2 && logits.is_floating_point(),
                "cross_entropy_rows: logits must be floating point [N, V], got ",
                logits.scalar_type(), " ", logits.sizes());
  UNIATTN_CHECK(
      targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong,
      "cross_entropy_rows: targets must be int64 [", logits.size(0), "], got ",
      targets.scalar_type(), " ", targets.sizes());
  UNIATTN_CHECK(targets.device() == logits.device(), "cross_entropy_rows: logits on ",
                logits.device(), " and targets on ", targets.device());
  if (!kernel_applies(logits) || logits.size(1) == 0)
    return at::cross_entropy_loss(logits.to(at::kFloat), targets, {}, at::Reduction::None,
                                  ignore_index);
  return CrossEntropyRows::apply(logits, targets, ignore_index);
}

}  // namespace uniattn
