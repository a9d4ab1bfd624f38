// Autograd functions over the small fused kernels, for training: forward runs the inference kernel
// (kernels/fused_ops.cu), backward a kernel of kernels/fused_ops_backward.cu (RMSNorm, gated
// activation) or the rotary kernel itself. layers.cpp takes them for CUDA inputs that require
// grad; shapes and dtypes are checked there, and the hooks must be registered.
#pragma once
#include <ATen/core/Tensor.h>

namespace uniattn {

// RMSNorm of x [..., n] with weight w [n] (one dtype, x not empty, n <= kMaxNormBackwardCols of
// kernels/cuda_hooks.h);
// differentiable in x and w.
at::Tensor rms_norm_autograd(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one);
// Rotary embedding of x [B, H, T, D] with cos/sin [B|1, 1, T, D] (no grad); differentiable in x:
// the gradient of a rotation by theta is the rotation by -theta, i.e. the kernel with -sin. That
// holds for tables whose two halves are equal, as rope_tables builds them (cat(freqs, freqs)).
at::Tensor rotary_autograd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// act(gate) * up for gate/up of one shape and dtype; differentiable in both.
at::Tensor gated_autograd(const at::Tensor& gate, const at::Tensor& up, bool gelu);

}  // namespace uniattn
