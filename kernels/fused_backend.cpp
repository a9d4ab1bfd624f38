// Registers the small fused ops (fused_ops.cu) with the hook table and turns validated tensors into
// the launchers' raw argument blocks. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>

#include "cuda_hooks.h"
#include "launch.h"
#include "uniattn/error.h"

namespace uniattn::kernels {
namespace {

cuda::DType small_op_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return cuda::DType::kHalf;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kFloat:
      return cuda::DType::kFloat;
    default:
      fail("fused op: unsupported dtype ", t.scalar_type());
  }
}

void check(cudaError_t e, const char* what) {
  UNIATTN_CHECK(e == cudaSuccess, what, ": CUDA kernel launch failed: ", cudaGetErrorString(e));
}

void rms_norm_cuda(const at::Tensor& x, const at::Tensor* delta, const at::Tensor& w, double eps,
                   bool plus_one, at::Tensor* h_out, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  detail::count_kernel_call(KernelOp::RmsNorm);
  const int64_t n = x.size(-1);
  UNIATTN_CHECK(n > 0 && n <= (1 << 20), "rms_norm: row length ", n, " out of range");
  cuda::NormArgs a{};
  a.x = x.data_ptr();
  a.delta = delta ? delta->data_ptr() : nullptr;
  a.w = w.data_ptr();
  a.h_out = h_out ? h_out->data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.rows = x.numel() / n;
  UNIATTN_CHECK(a.rows <= INT32_MAX, "rms_norm: ", a.rows, " rows exceed the CUDA grid");
  a.n = static_cast<int>(n);
  a.eps = static_cast<float>(eps);
  a.plus_one = plus_one;
  check(cuda::launch_rms_norm(a, small_op_dtype(x), at::cuda::getCurrentCUDAStream()), "rms_norm");
}

cuda::RotaryHeads rotary_heads(const at::Tensor& x, const at::Tensor& out, bool rotate,
                               bool at_pos) {
  return {x.data_ptr(),  out.data_ptr(), static_cast<int>(x.size(1)),
          rotate,        at_pos,         x.stride(0),
          x.stride(1),   x.stride(2),    out.stride(0),
          out.stride(1), out.stride(2)};
}

// One launch over `blocks` (x [B, H_j, T, D] each; one B, T, D).
void launch_rotary_blocks(const at::Tensor& x0, const at::Tensor& cos, const at::Tensor& sin,
                          const at::Tensor* pos, std::initializer_list<cuda::RotaryHeads> blocks) {
  const c10::cuda::CUDAGuard guard(x0.device());
  detail::count_kernel_call(KernelOp::Rotary);
  cuda::RotaryArgs a{};
  a.cos = cos.data_ptr();
  a.sin = sin.data_ptr();
  a.pos = pos ? pos->data_ptr<int64_t>() : nullptr;
  a.B = static_cast<int>(x0.size(0));
  a.T = static_cast<int>(x0.size(2));
  a.D = static_cast<int>(x0.size(3));
  // A [1, 1, T, D] table serves every batch row.
  a.c_b = cos.size(0) == 1 ? 0 : cos.stride(0), a.c_t = cos.stride(2);
  UNIATTN_CHECK(blocks.size() <= 3, "rotary: at most three blocks of heads per launch");
  for (const auto& b : blocks) a.heads[a.blocks++] = b;
  check(cuda::launch_rotary(a, small_op_dtype(x0), at::cuda::getCurrentCUDAStream()), "rotary");
}

void rotary_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                 const at::Tensor* pos, const at::Tensor& out) {
  launch_rotary_blocks(x, cos, sin, pos, {rotary_heads(x, out, true, pos != nullptr)});
}

void rotary_qkv_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& pos,
                     const at::Tensor& q_out, const at::Tensor& k_dst, const at::Tensor& v_dst) {
  launch_rotary_blocks(q, cos, sin, &pos,
                       {rotary_heads(q, q_out, true, false), rotary_heads(k, k_dst, true, true),
                        rotary_heads(v, v_dst, false, true)});
}

void gated_cuda(const at::Tensor& gate, const at::Tensor& up, bool gelu, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(gate.device());
  detail::count_kernel_call(KernelOp::GatedActivation);
  const int64_t cols = gate.size(1);  // gate/up arrive as [rows, cols] views
  const int64_t in_stride = gate.size(0) > 1 ? gate.stride(0) : cols;
  cuda::GatedArgs a{gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(), cols,
                    in_stride,       gelu};
  check(cuda::launch_gated(a, small_op_dtype(gate), at::cuda::getCurrentCUDAStream()),
        "gated activation");
}

void rms_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                            double eps, bool plus_one, at::Tensor& grad_x,
                            at::Tensor& grad_w_partial) {
  const c10::cuda::CUDAGuard guard(x.device());
  detail::count_kernel_call(KernelOp::RmsNorm);
  const int64_t n = x.size(-1);
  UNIATTN_CHECK(n > 0 && n <= detail::kMaxNormBackwardCols && x.numel() > 0,
                "rms_norm backward: row length ", n, " or rows ",
                x.numel() / std::max<int64_t>(n, 1), " out of range");
  cuda::NormBackwardArgs a{};
  a.grad = grad.data_ptr();
  a.x = x.data_ptr();
  a.w = w.data_ptr();
  a.grad_x = grad_x.data_ptr();
  a.grad_w_partial = grad_w_partial.data_ptr<float>();
  a.rows = x.numel() / n;
  a.n = static_cast<int>(n);
  const int64_t blocks = grad_w_partial.size(0);
  a.rows_per_block = static_cast<int>((a.rows + blocks - 1) / std::max<int64_t>(blocks, 1));
  UNIATTN_CHECK(blocks >= 1 && blocks <= INT32_MAX &&
                    (a.rows + a.rows_per_block - 1) / a.rows_per_block == blocks,
                "rms_norm backward: ", blocks, " partial rows do not tile ", a.rows, " rows");
  a.eps = static_cast<float>(eps);
  a.plus_one = plus_one;
  check(cuda::launch_rms_norm_backward(a, small_op_dtype(x), at::cuda::getCurrentCUDAStream()),
        "rms_norm backward");
}

void gated_backward_cuda(const at::Tensor& grad_out, const at::Tensor& gate, const at::Tensor& up,
                         bool gelu, at::Tensor& grad_gate, at::Tensor& grad_up) {
  const c10::cuda::CUDAGuard guard(gate.device());
  detail::count_kernel_call(KernelOp::GatedActivation);
  cuda::GatedBackwardArgs a{
      grad_out.data_ptr(), gate.data_ptr(), up.data_ptr(), grad_gate.data_ptr(),
      grad_up.data_ptr(),  gate.numel(),    gelu};
  check(cuda::launch_gated_backward(a, small_op_dtype(gate), at::cuda::getCurrentCUDAStream()),
        "gated activation backward");
}

cuda::CrossEntropyArgs cross_entropy_args(const at::Tensor& logits, const at::Tensor& targets,
                                          int64_t ignore_index) {
  UNIATTN_CHECK(logits.size(0) <= INT32_MAX, "cross_entropy: ", logits.size(0),
                " rows exceed the CUDA grid");
  cuda::CrossEntropyArgs a{};
  a.logits = logits.data_ptr();
  a.targets = targets.data_ptr<int64_t>();
  a.rows = logits.size(0);
  a.vocab = logits.size(1);
  a.row_stride = logits.size(0) > 1 ? logits.stride(0) : logits.size(1);
  a.ignore_index = ignore_index;
  return a;
}

void cross_entropy_forward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                int64_t ignore_index, at::Tensor& loss, at::Tensor& stats) {
  const c10::cuda::CUDAGuard guard(logits.device());
  detail::count_kernel_call(KernelOp::CrossEntropy);
  auto a = cross_entropy_args(logits, targets, ignore_index);
  a.loss = loss.data_ptr<float>();
  a.row_max = stats.data_ptr<float>();
  a.inv_sum = a.row_max + a.rows;
  check(cuda::launch_cross_entropy_forward(a, small_op_dtype(logits),
                                           at::cuda::getCurrentCUDAStream()),
        "cross_entropy forward");
}

void cross_entropy_backward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                 const at::Tensor& stats, const at::Tensor& grad_loss,
                                 int64_t ignore_index, at::Tensor& grad_logits) {
  const c10::cuda::CUDAGuard guard(logits.device());
  detail::count_kernel_call(KernelOp::CrossEntropy);
  auto a = cross_entropy_args(logits, targets, ignore_index);
  // Read only; the argument block is shared with forward.
  a.row_max = const_cast<float*>(stats.data_ptr<float>());
  a.inv_sum = a.row_max + a.rows;
  a.grad_loss = grad_loss.data_ptr<float>();
  a.grad_logits = grad_logits.data_ptr();
  check(cuda::launch_cross_entropy_backward(a, small_op_dtype(logits),
                                            at::cuda::getCurrentCUDAStream()),
        "cross_entropy backward");
}

void adamw_cuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                const at::Tensor& exp_avg_sq, const at::Tensor* grad_scale,
                const detail::AdamWHyper& h) {
  const c10::cuda::CUDAGuard guard(param.device());
  detail::count_kernel_call(KernelOp::AdamW);
  cuda::AdamWArgs a{};
  a.param = param.data_ptr();
  a.grad = grad.data_ptr();
  a.exp_avg = exp_avg.data_ptr();
  a.exp_avg_sq = exp_avg_sq.data_ptr();
  a.grad_scale = grad_scale ? grad_scale->data_ptr<float>() : nullptr;
  a.n = param.numel();
  a.lr = static_cast<float>(h.lr);
  a.beta1 = static_cast<float>(h.beta1);
  a.beta2 = static_cast<float>(h.beta2);
  a.weight_decay = static_cast<float>(h.weight_decay);
  a.eps = static_cast<float>(h.eps);
  const auto step = static_cast<double>(h.step);
  a.bias_correction1 = static_cast<float>(1.0 - std::pow(h.beta1, step));
  a.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(h.beta2, step)));
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  check(cuda::launch_adamw(a, small_op_dtype(param), sms, at::cuda::getCurrentCUDAStream()),
        "adamw");
}

// y = w . x with w [N, K]: the arguments every GEMV call shares.
cuda::GemvArgs gemv_args(const at::Tensor& x, const at::Tensor& w, at::Tensor& y) {
  cuda::GemvArgs a{};
  a.x = x.data_ptr();
  a.w = w.data_ptr();
  a.y = y.data_ptr();
  a.N = w.size(0), a.K = w.size(1);
  return a;
}

void run_gemv(const cuda::GemvArgs& a, const at::Tensor& x, const char* what) {
  const c10::cuda::CUDAGuard guard(x.device());
  detail::count_kernel_call(KernelOp::Gemv);
  check(cuda::launch_gemv(a, small_op_dtype(x), at::cuda::getCurrentCUDAStream()), what);
}

void gemv_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias,
               const at::Tensor* add, at::Tensor& y) {
  auto a = gemv_args(x, w, y);
  a.bias = bias ? bias->data_ptr() : nullptr;
  a.add = add ? add->data_ptr() : nullptr;
  run_gemv(a, x, "gemv");
}

void gemv_gated_cuda(const at::Tensor& x, const at::Tensor& w, bool gelu, at::Tensor& y) {
  auto a = gemv_args(x, w, y);
  a.N /= 2;  // w is [gate; up]
  a.epilogue = gelu ? cuda::GemvEpilogue::kGeluGated : cuda::GemvEpilogue::kSiluGated;
  run_gemv(a, x, "gated gemv");
}

[[maybe_unused]] const bool registered = [] {
  auto& h = detail::cuda_hooks();
  h.gemv = &gemv_cuda;
  h.gemv_gated = &gemv_gated_cuda;
  h.rms_norm = &rms_norm_cuda;
  h.rotary = &rotary_cuda;
  h.rotary_qkv = &rotary_qkv_cuda;
  h.gated = &gated_cuda;
  h.rms_norm_backward = &rms_norm_backward_cuda;
  h.gated_backward = &gated_backward_cuda;
  h.adamw = &adamw_cuda;
  h.cross_entropy_forward = &cross_entropy_forward_cuda;
  h.cross_entropy_backward = &cross_entropy_backward_cuda;
  return true;
}();

}  // namespace
}  // namespace uniattn::kernels
