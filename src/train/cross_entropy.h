// Per-row cross-entropy over the vocabulary, differentiable with respect to the logits, without
// the fp32 copy of the logits that ATen's loss makes (kernels/cross_entropy.cu).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace uniattn {

// loss[i] = logsumexp(logits[i]) - logits[i, targets[i]], an fp32 [N] tensor: the value of
// at::cross_entropy_loss(logits.to(kFloat), targets, {}, Reduction::None, ignore_index).
// - logits [N, V]: any floating dtype (the kernel takes bf16 and fp16; fp32 and fp64 take the
//   ATen expression); targets [N] int64 on the same device. Rows whose target is ignore_index have
//   loss 0 and gradient 0.
// - The gradient with respect to the logits, g[i] * (softmax(logits[i]) - onehot(targets[i])), is
//   computed in fp32 and rounded to the logits' dtype, as autograd's cast back from fp32 logits
//   rounds it.
// - On CUDA, where the cross_entropy kernel path is taken (uniattn/model/kernel_paths.h), forward
//   reads the logits once and backward reads them once and writes the gradient; nothing of size
//   [N, V] is kept but the logits themselves. A target outside [0, V) (other than ignore_index)
//   then gives a NaN loss for its row, where ATen raises a device-side assert; elsewhere ATen's
//   expression runs and throws.
// Throws uniattn::Error on mismatched shapes, dtypes or devices.
at::Tensor cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets,
                              int64_t ignore_index = -100);

}  // namespace uniattn
