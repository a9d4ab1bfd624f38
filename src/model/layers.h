// Building blocks shared by every architecture: RMSNorm, rotary embeddings, the gated MLP.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <vector>

#include "uniattn/config/model_config.h"

namespace uniattn {

// fp32 for half types and fp32, fp64 for fp64 (gradient checks run the model in fp64).
inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The small per-token ops below run as one fused CUDA kernel each (kernels/fused_ops.cu) when
// their inputs are CUDA tensors of one dtype (fp32, bf16, fp16), through the autograd functions
// of fused_autograd.h (a backward kernel each) when they require grad; otherwise,
// and inside an AtenOpsScope, as the ATen expressions of Hugging Face's formulas (*_aten). Both
// round at the same points, so they differ only by summation order.
//
// AtenOpsScope: while alive, this thread takes the ATen path. Activation checkpointing runs its
// graph-free forward under it, so forward and recomputation round identically; uniattn-bench's
// unfused baseline runs under it to measure what the fused kernels buy.
class AtenOpsScope {
 public:
  AtenOpsScope();
  ~AtenOpsScope();
  AtenOpsScope(const AtenOpsScope&) = delete;
  AtenOpsScope& operator=(const AtenOpsScope&) = delete;

 private:
  bool prev_;
};

// RMSNorm as Hugging Face computes it: normalise in fp32; LLaMA multiplies by w after casting
// back, Gemma multiplies by (1 + w) in fp32 before casting.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool plus_one);
at::Tensor rms_norm_aten(const at::Tensor& x, const at::Tensor& weight, double eps, bool plus_one);
// The residual add and the norm after it: returns {h = x + delta, rms_norm(h)}.
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                               const at::Tensor& weight, double eps, bool plus_one);

// Rotary inverse frequencies [head_dim / 2] (float32, CPU) for one RopeConfig, with linear or
// Llama-3 scaling applied.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);
// cos and sin [batch, 1, tokens, head_dim] for integer positions [batch, tokens], in `dtype`.
// `inv_freq` must already be on the positions' device (the model keeps it as a buffer), so this
// launches no host-to-device copy and is safe inside CUDA graph capture.
std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& inv_freq,
                                              const at::Tensor& positions, at::ScalarType dtype);

// x [batch, heads, tokens, head_dim] rotated with the "rotate half" convention HF checkpoints use.
// The fused path returns a contiguous tensor.
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor apply_rotary_aten(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// Graph-safe decode: writes rotary(x) [B, H, T, D] into dst [B, H, S_max, D] at positions
// [pos, pos + T) (pos: int64 [1] on the device), without a host sync.
void apply_rotary_into(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& dst, const at::Tensor& pos);
// A decode step's three writes in one kernel: q_out = rotary(q), k_dst[:, :, pos + t] =
// rotary(k), v_dst[:, :, pos + t] = v, with q [B, H, T, D], k and v [B, Hkv, T, D] (last dims
// contiguous, one dtype and CUDA device, no gradient), q_out [B, H, T, D], k_dst and v_dst
// [B, Hkv, S_max, D] and pos int64 [1] on the device; the caller keeps pos + T <= S_max (the
// position is read on the device, as apply_rotary_into's is). Each value equals apply_rotary's and
// apply_rotary_into's. Returns false, having written nothing, where the kernel does not apply
// (the caller then runs those functions).
bool apply_rotary_qkv_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& q_out,
                           const at::Tensor& k_dst, const at::Tensor& v_dst, const at::Tensor& pos);

// act(gate) * up, act SiLU or tanh-approximated GELU.
at::Tensor gated_activation(const at::Tensor& gate, const at::Tensor& up, Activation act);
at::Tensor gated_activation_aten(const at::Tensor& gate, const at::Tensor& up, Activation act);

// y = x . weight^T (+ bias) (+ add): at::linear's function, plus at::addmm's C (beta = 1) when add
// is given. x [..., in], weight [out, in], bias [out] (optional), add [..., out] (optional, x's
// leading shape); y [..., out] in x's dtype. A single row (decode at batch 1) with no gradient,
// fp16/bf16 on CUDA outside autocast, in % 8 == 0 and a contiguous 16-byte aligned weight runs
// the GEMV kernel (KernelOp::Gemv, kernels/gemv.cu): no split-K pass, and on sm_90+ launched with
// PDL, so its launch overlaps the end of the kernel before it. Everything else runs ATen.
// Throws (ATen's error) on mismatched shapes.
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias = {}, const at::Tensor& add = {});

// act(x . W_gate^T) * (x . W_up^T) for gate_up = [W_gate; W_up] [2 * out, in] (a fused gate/up
// block), x [..., in] -> [..., out], when linear_forward would take the GEMV kernel for x and
// gate_up and gated_activation its kernel: one kernel, rounding where linear_forward then
// gated_activation round (bit-equal where linear_forward also takes two rows per warp, 16,384 rows
// or more; else the fp32 sums differ in order). Otherwise undefined (the caller runs those two).
at::Tensor gated_linear_forward(const at::Tensor& x, const at::Tensor& gate_up, Activation act);

// A bias-optional linear projection whose parameters are created directly with the given
// options (dtype, device) and initialised N(0, 0.02) as HF initialises decoders: building an
// 8B-parameter model on the GPU then takes no CPU-side initialisation or copy.
class ProjImpl : public torch::nn::Module {
 public:
  ProjImpl(int64_t in, int64_t out, bool bias, const at::TensorOptions& options);
  // A bias-free projection whose parameter is `weight` as given (a row block of a
  // FusedProjections allocation).
  explicit ProjImpl(at::Tensor weight);
  at::Tensor forward(const at::Tensor& x) const { return linear_forward(x, weight, bias); }
  at::Tensor weight, bias;
};
TORCH_MODULE(Proj);

// Bias-free projections of one input (q/k/v, gate/up) whose weights are row blocks of one
// allocation, so that small inference batches run them as one GEMM: at decode batch 1 the K and V
// projections alone run far below HBM bandwidth, and each launch costs a few microseconds. Every
// Proj keeps its own parameter (a view into the block), so names, checkpoints and training are
// unchanged; if a parameter is re-pointed (set_data, as calibration's weight sharing does) the
// fused GEMM is no longer used.
class FusedProjections {
 public:
  // Allocates [sum(outs), in] with `options`, initialised N(0, 0.02) (left uninitialised with
  // init = false: the caller fills each block), and returns one Proj per block.
  std::vector<Proj> allocate(int64_t in, const std::vector<int64_t>& outs,
                             const at::TensorOptions& options, bool init = true);
  // x [..., in] -> one output per block ([..., out_i], views into one GEMM's result) when no
  // gradient is needed, x has at most kMaxRows rows and every Proj still points into the
  // allocation; otherwise an empty vector (the caller runs the projections one by one).
  std::vector<at::Tensor> forward(const at::Tensor& x, const std::vector<Proj>& projs) const;
  // The allocation [sum(outs), in] itself under forward()'s conditions, else undefined.
  at::Tensor block(const at::Tensor& x, const std::vector<Proj>& projs) const;
  // The fused GEMM's output y [..., sum(outs)] as one view [..., out_i] per block.
  std::vector<at::Tensor> split(const at::Tensor& y) const;
  static constexpr int64_t kMaxRows = 16;

 private:
  std::vector<int64_t> outs_;  // rows per block; the block itself lives only in the parameters
};

// down(act(gate(x)) * up(x)); act is SiLU (LLaMA/Mistral) or tanh-approximated GELU (Gemma).
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& c, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  Activation act_;
  FusedProjections gate_up_;
};
TORCH_MODULE(Mlp);

// Registers `value` as parameter "<name>.weight" of `owner` (through a holder sub-module, so the
// name matches Hugging Face's for norms and embeddings) and returns it.
at::Tensor register_weight(torch::nn::Module& owner, const std::string& name, at::Tensor value);
// An RMSNorm weight: ones, or zeros for Gemma's (1 + w) form.
at::Tensor register_norm(torch::nn::Module& owner, const std::string& name, int64_t dim,
                         bool plus_one, const at::TensorOptions& options = {});

}  // namespace uniattn
