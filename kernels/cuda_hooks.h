// Internal: how the CUDA kernels plug into the dispatching entry points without a macro.
// src/attention/dispatch.cpp (compiled in every build) owns the hook table; cuda_backend.cpp
// (compiled only when UNIATTN_CUDA is on) fills it from a static initialiser. A CPU-only build
// leaves the table empty and every call takes the ATen fallback.
#pragma once

#include "shared_softmax.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn::kernels::detail {

// The RMSNorm backward kernel keeps a row of fp32 weight-gradient sums in shared memory: with its
// 256 bytes of reduction scratch, 48 KiB (the default limit, no opt-in) hold 12,224 columns.
inline constexpr int64_t kMaxNormBackwardCols = 12224;

// AdamW's hyper-parameters for one parameter tensor; step counts this update (1 for the first).
struct AdamWHyper {
  double lr = 0, beta1 = 0, beta2 = 0, weight_decay = 0, eps = 0;
  int64_t step = 1;
};

// Inputs reaching a hook are validated, contiguous, on one CUDA device and of a supported dtype and
// head_dim; outputs are allocated by the caller.
struct CudaHooks {
  // allow_library: may use PyTorch's fused cuDNN/flash attention where it computes the same
  // function (no softcap, no window; T < S as two calls merged by lse, once validated); out/lse_out
  // are then replaced by its results.
  void (*prefill)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor* lse_in, const AttnParams& p, bool allow_library,
                  at::Tensor& out, at::Tensor* lse_out) = nullptr;
  // p_row undefined: O only (no probability row written). block_tables (int32 [B, M],
  // contiguous) set: k_cache/v_cache are paged pools [slots, Hkv, D] of blocks of block_size.
  void (*decode_leader)(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& seqlens, const AttnParams& p, at::Tensor& out,
                        at::Tensor& p_row, const at::Tensor* block_tables,
                        int64_t block_size) = nullptr;
  void (*decode_follower)(const at::Tensor& p_row, const at::Tensor& v_cache,
                          const at::Tensor& seqlens, at::Tensor& out,
                          const at::Tensor* block_tables, int64_t block_size) = nullptr;
  std::string (*library_status)() = nullptr;

  // Small fused ops (fused_ops.cu). Inputs: one CUDA device, one dtype among fp32/bf16/fp16,
  // shapes checked by the caller (layers.cpp); outputs allocated by the caller.
  // out = RMSNorm(x [+ delta]); h_out = x + delta when delta is given. x, delta contiguous.
  void (*rms_norm)(const at::Tensor& x, const at::Tensor* delta, const at::Tensor& w, double eps,
                   bool plus_one, at::Tensor* h_out, at::Tensor& out) = nullptr;
  // out[b, h, (pos ? pos[0] : 0) + t] = rotary(x[b, h, t]); x and out need only a contiguous last
  // dim; cos/sin [B|1, 1, T, D].
  void (*rotary)(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                 const at::Tensor* pos, const at::Tensor& out) = nullptr;
  // One decode step's q, k and v [B, H|H_kv, T, D] (last dims contiguous) in one launch:
  // q_out[b, h, t] = rotary(q[b, h, t]); k_dst[b, h, pos[0] + t] = rotary(k[b, h, t]);
  // v_dst[b, h, pos[0] + t] = v[b, h, t]. One dtype, one device; pos int64 on that device.
  void (*rotary_qkv)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& pos,
                     const at::Tensor& q_out, const at::Tensor& k_dst,
                     const at::Tensor& v_dst) = nullptr;
  // out = act(gate) * up; gate and up of one shape, each with a contiguous last dim and rows a
  // common stride apart (flattenable to [rows, cols]); out contiguous.
  void (*gated)(const at::Tensor& gate, const at::Tensor& up, bool gelu, at::Tensor& out) = nullptr;
  // Cross-entropy (cross_entropy.cu): logits [N, V] with a contiguous last dim, targets [N] int64
  // contiguous, loss [N] fp32, stats [2, N] fp32 (each row's max logit, then 1 / its sum of
  // exponentials, for backward). Backward: grad_loss [N] fp32 contiguous, grad_logits [N, V]
  // contiguous in the logits' dtype. Outputs allocated by the caller.
  // Backward of rms_norm and gated (fused_ops_backward.cu), for autograd. rms_norm: grad and x
  // [rows, n] contiguous with rows >= 1, w [n], 1 <= n <= kMaxNormBackwardCols; grad_x [rows, n];
  // grad_w_partial [blocks, n] fp32 with blocks = ceil(rows / rows_per_block) for any
  // rows_per_block >= 1 the caller picks (its rows sum to d loss / d w). gated: five contiguous
  // tensors of one shape.
  void (*rms_norm_backward)(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                            double eps, bool plus_one, at::Tensor& grad_x,
                            at::Tensor& grad_w_partial) = nullptr;
  void (*gated_backward)(const at::Tensor& grad_out, const at::Tensor& gate, const at::Tensor& up,
                         bool gelu, at::Tensor& grad_gate, at::Tensor& grad_up) = nullptr;
  // One AdamW step (adamw.cu) of param, in place with its moments: four contiguous tensors of one
  // dtype (fp32/bf16/fp16) on one device, 16-byte aligned; grad_scale an fp32 device scalar the
  // gradient is divided by, or nullptr.
  void (*adamw)(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                const at::Tensor& exp_avg_sq, const at::Tensor* grad_scale,
                const AdamWHyper& h) = nullptr;
  // y = w . x (+ bias) (+ add) (gemv.cu): x [K] and w [N, K] contiguous and 16-byte aligned,
  // K % 8 == 0, bias, add and y [N] contiguous; one fp16/bf16 dtype on one device.
  void (*gemv)(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias,
               const at::Tensor* add, at::Tensor& y) = nullptr;
  // y[i] = act(w[i] . x) * (w[N + i] . x) for a fused gate/up weight w [2N, K] (gemv.cu), each dot
  // product rounded to the dtype before the activation as gemv + gated would; x and w as gemv's,
  // y [N] contiguous. act: tanh-approximated GELU when gelu, else SiLU.
  void (*gemv_gated)(const at::Tensor& x, const at::Tensor& w, bool gelu, at::Tensor& y) = nullptr;
  void (*cross_entropy_forward)(const at::Tensor& logits, const at::Tensor& targets,
                                int64_t ignore_index, at::Tensor& loss,
                                at::Tensor& stats) = nullptr;
  void (*cross_entropy_backward)(const at::Tensor& logits, const at::Tensor& targets,
                                 const at::Tensor& stats, const at::Tensor& grad_loss,
                                 int64_t ignore_index, at::Tensor& grad_logits) = nullptr;

  // What src/attention/kernel_paths.cpp decides with: the build's images ("sm_80 ... compute_90",
  // CMake's UNIATTN_KERNEL_ARCHS), the current device, a device's properties, and whether op's
  // kernel image loads on a device ("" if it does, else the CUDA error).
  const char* built_archs = nullptr;
  int (*current_device)() = nullptr;
  CudaDeviceInfo (*device_info)(int index) = nullptr;
  std::string (*probe)(KernelOp op, int index) = nullptr;
};

CudaHooks& cuda_hooks();

// "[2,8,1,128]" for error messages; "undefined" for an undefined tensor.
std::string shape_str(const at::Tensor& t);
// Throws uniattn::Error, naming `fn`, unless p's scale is finite, softcap >= 0 and window >= 0.
void check_params(const char* fn, const AttnParams& p);
// The kernel runs when it accepts t (cuda_kernel_supports) and the device takes op's kernel path
// (uniattn/model/kernel_paths.h: compute capability, build images, UNIATTN_DISABLE_KERNELS).
bool hook_ready(KernelOp op, const at::Tensor& t);
// The kernels read q/k/v with 16-byte vector loads: t made contiguous, and copied when its
// storage offset breaks that alignment.
at::Tensor prep(const at::Tensor& t);

// Counts one call of op's CUDA kernel (kernel_call_count()); the hooks above call it.
void count_kernel_call(KernelOp op);

}  // namespace uniattn::kernels::detail
