// The LM head and the cross-entropy in one autograd function that never holds the logits of all
// rows at once, in the manner of Liger-Kernel's FusedLinearCrossEntropy (Hsu et al. 2024, arXiv
// 2410.10989) and Apple's cut-cross-entropy (Wijmans et al. 2024, arXiv 2411.09009): the forward
// pass walks row chunks, computing each chunk's logits, its loss and at once its gradients with
// respect to the hidden states and the LM head weight; backward only scales those by the incoming
// gradient. ATen ops only (no kernel of its own).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace uniattn {

struct LinearCrossEntropyOptions {
  // > 0: logits = softcap * tanh((h W^T) / softcap) (Gemma-2's final_logit_softcapping).
  double softcap = 0.0;
  // Rows per chunk; 0 picks about 512 MiB of fp32 chunk logits (kDefaultChunkBytes / (4 V)
  // rows, a multiple of 128 when that is at least 128).
  int64_t chunk_rows = 0;
  // The dtype of the two matmuls; unset: the autocast dtype where autocast is on for h's device
  // (as at::matmul would run under it), else h's dtype.
  std::optional<at::ScalarType> compute_dtype;
};

// Bytes of fp32 logits one chunk may hold when LinearCrossEntropyOptions::chunk_rows is 0.
inline constexpr int64_t kDefaultChunkBytes = int64_t{512} << 20;

// The rows per chunk that `o` gives for n rows and a vocabulary of v: at least 1, at most n.
int64_t linear_cross_entropy_chunk_rows(const LinearCrossEntropyOptions& o, int64_t n, int64_t v);

// sum_i weights[i] * CE(softcap(hidden[i] @ weight^T), targets[i]): an fp32 scalar (fp64 when
// the matmuls are fp64) equal to (at::cross_entropy_loss(logits.float(), targets, {}, None) *
// weights).sum() on the full logits.
// - hidden [N, H] and weight [V, H]: any floating dtypes; weight may be the tied input embedding
//   (its gradient goes to the tensor passed). targets [N] int64, in [0, V) where the weight is
//   not 0. weights [N] float; weights get no gradient.
// - Rows of weight 0 are skipped: their loss and gradients are exactly 0.
// - Logits are computed in the compute dtype; their log-softmax and (softmax - onehot) * w in
//   fp32 (fp64), which is rounded to the compute dtype for the two gradient matmuls.
// - Gradients are computed in forward, only for inputs that require grad, and kept until
//   backward (N x H and V x H elements): hidden's in its dtype; weight's summed over chunks in
//   weight's dtype (fp32 master weights: each chunk's product added in fp32; bf16 weights: the
//   GEMM adds into the bf16 sum, one rounding per chunk).
// Not twice differentiable; a second backward through the same call throws. Throws
// uniattn::Error on mismatched shapes, dtypes or devices.
at::Tensor fused_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& targets, const at::Tensor& weights,
                                      const LinearCrossEntropyOptions& options = {});

}  // namespace uniattn
