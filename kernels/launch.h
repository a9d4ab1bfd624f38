// Internal: raw-pointer launchers of the CUDA kernels (kernels/*.cu). Kept free of ATen so the
// .cu files compile quickly; cuda_backend.cpp converts tensors to these argument blocks.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>

namespace uniattn::kernels::cuda {

// Tuning switches: the integer value of environment variable `name` when it lies in [lo, hi],
// else `fallback`.
inline int env_int(const char* name, int lo, int hi, int fallback) {
  const char* e = std::getenv(name);
  const long v = e ? std::strtol(e, nullptr, 10) : lo - 1L;
  return v >= lo && v <= hi ? static_cast<int>(v) : fallback;
}

// The attention kernels take kHalf and kBFloat16; the small fused ops (fused_ops.cu) also kFloat.
enum class DType { kHalf, kBFloat16, kFloat };

struct PrefillArgs {
  const void* q;        // [B,Hq,T,D]
  const void* k;        // [B,Hkv,S,D]
  const void* v;        // [B,Hkv,S,D]
  const float* lse_in;  // follower: [B,Hq,T] from the leader; nullptr for the leader
  void* out;            // [B,Hq,T,D]
  float* lse_out;       // leader: [B,Hq,T]
  int B, Hq, Hkv, T, S, D;
  float scale, softcap;  // softcap 0 = off
  int64_t window;        // 0 = unlimited
};

// Runs the leader (lse_in == nullptr) or the follower kernel. Returns the launch error.
cudaError_t launch_prefill(const PrefillArgs& a, DType dt, cudaStream_t stream);

struct DecodeArgs {
  const void* q;       // leader: [B,Hq,1,D]
  const void* k;       // leader: [B,Hkv,S,D], or a paged pool [slots,Hkv,D] (block_table set)
  const void* v;       // [B,Hkv,S,D], or a paged pool [slots,Hkv,D]
  const int* seqlens;  // [B], device
  float* p_row;        // [B,Hq,S] fp32: leader writes (nullptr: not wanted), follower reads
  void* out;           // [B,Hq,1,D]
  float* ws;           // workspace of decode_workspace_floats() floats
  int B, Hq, Hkv, S, D;
  float scale, softcap;
  int64_t window;
  int splits, chunk;  // from plan_decode()
  // Paged layout (vLLM's PagedAttention): key j of row b sits in slot
  // block_table[b * max_blocks + j / block_size] * block_size + j % block_size of the pools, and
  // S = max_blocks * block_size. nullptr: the static layout.
  const int* block_table;
  int block_size, max_blocks;
  int block_shift;  // log2(block_size) for a power of two (shift and mask per key), else -1
};

// Chooses the number of split-K partitions from S (the cache capacity), not from the lengths, so a
// captured graph stays valid when the lengths change; each row's filled keys are then shared
// evenly among the splits on the device (a.chunk is the share at full capacity).
void plan_decode(DecodeArgs& a, int num_sms, bool leader);
int64_t decode_workspace_floats(const DecodeArgs& a);

cudaError_t launch_decode_leader(const DecodeArgs& a, DType dt, cudaStream_t stream);
cudaError_t launch_decode_follower(const DecodeArgs& a, DType dt, cudaStream_t stream);

// ---- small fused ops (fused_ops.cu) -----------------------------------------------------------
// Each reproduces, rounding step for rounding step, the ATen expression it replaces (layers.cpp),
// so the fused and unfused models agree up to reduction order.

struct NormArgs {
  const void* x;      // [rows, n] contiguous
  const void* delta;  // optional [rows, n]: normalise h = x + delta (rounded to the dtype)
  const void* w;      // [n]
  void* h_out;        // [rows, n], written when delta is set
  void* out;          // [rows, n]
  int64_t rows;
  int n;
  float eps;
  bool plus_one;  // Gemma: normed * (1 + w) in fp32; else w * (normed rounded to the dtype)
};
cudaError_t launch_rms_norm(const NormArgs& a, DType dt, cudaStream_t stream);

// One block of heads of a rotary launch: x [B,H,T,D] -> out [B,H,*,D], last dims contiguous.
struct RotaryHeads {
  const void* x;
  void* out;
  int H;
  bool rotate;            // else copied unchanged (a decode step's V, written beside its K)
  bool at_pos;            // row t goes to position *pos + t (a cache slot), else to t
  int64_t x_b, x_h, x_t;  // strides of x (elements)
  int64_t o_b, o_h, o_t;  // strides of out
};
struct RotaryArgs {
  const void* cos;     // [B,1,T,D]
  const void* sin;     // same strides as cos
  const int64_t* pos;  // device scalar for blocks with at_pos (graph-safe decode into a cache)
  int B, T, D;
  int64_t c_b, c_t;  // strides of cos/sin
  // Up to three blocks in one launch: a decode step's q (rotated in place of a copy), k (rotated
  // into its cache slot) and v (copied into its slot) cost one kernel instead of three.
  RotaryHeads heads[3];
  int blocks;
};
cudaError_t launch_rotary(const RotaryArgs& a, DType dt, cudaStream_t stream);

struct GatedArgs {
  const void* gate;  // [rows, cols], rows in_stride elements apart, last dim contiguous
  const void* up;    // same layout as gate
  void* out;         // [rows, cols] contiguous
  int64_t n;         // rows * cols
  int64_t cols, in_stride;
  bool gelu;  // tanh-approximated GELU (Gemma); else SiLU
};
cudaError_t launch_gated(const GatedArgs& a, DType dt, cudaStream_t stream);

// ---- backward of the small fused ops (fused_ops_backward.cu) -----------------------------------
struct NormBackwardArgs {
  const void* grad;       // [rows, n] contiguous: d loss / d out
  const void* x;          // [rows, n] contiguous: the forward's input
  const void* w;          // [n]
  void* grad_x;           // [rows, n] contiguous
  float* grad_w_partial;  // [ceil(rows / rows_per_block), n]: per-block sums of d loss / d w
  int64_t rows;
  int n;  // at most detail::kMaxNormBackwardCols (cuda_hooks.h)
  int rows_per_block;
  float eps;
  bool plus_one;  // Gemma's (1 + w)
};
cudaError_t launch_rms_norm_backward(const NormBackwardArgs& a, DType dt, cudaStream_t stream);
struct GatedBackwardArgs {
  const void* grad_out;  // [n] contiguous, like the four below
  const void* gate;
  const void* up;
  void* grad_gate;
  void* grad_up;
  int64_t n;
  bool gelu;
};
cudaError_t launch_gated_backward(const GatedBackwardArgs& a, DType dt, cudaStream_t stream);

// ---- cross-entropy (cross_entropy.cu)
// ------------------------------------------------------------
struct CrossEntropyArgs {
  const void* logits;      // [rows, vocab], rows row_stride elements apart, last dim contiguous
  const int64_t* targets;  // [rows]
  float* loss;             // forward: [rows], lse - z[target] (0 for ignore_index, NaN off-vocab)
  float* row_max;          // forward writes, backward reads: [rows], the row's max logit m
  float* inv_sum;          // the same: [rows], 1 / sum_j exp(z_j - m)
  const float* grad_loss;  // backward: [rows], d total / d loss[row]
  void* grad_logits;       // backward: [rows, vocab] contiguous, the logits' dtype
  int64_t rows, vocab, row_stride;
  int64_t ignore_index;  // a target of this value has no loss and no gradient (-100 in torch)
};
cudaError_t launch_cross_entropy_forward(const CrossEntropyArgs& a, DType dt, cudaStream_t stream);
cudaError_t launch_cross_entropy_backward(const CrossEntropyArgs& a, DType dt, cudaStream_t stream);

// ---- AdamW (adamw.cu) --------------------------------------------------------------------------
struct AdamWArgs {
  void* param;              // [n], contiguous, 16-byte aligned like the three below
  const void* grad;         // [n], the parameter's dtype
  void* exp_avg;            // [n], the parameter's dtype
  void* exp_avg_sq;         // [n], the parameter's dtype
  const float* grad_scale;  // device scalar the gradient is divided by; nullptr: 1
  int64_t n;
  float lr, beta1, beta2, weight_decay, eps;
  float bias_correction1;       // 1 - beta1^step
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};
cudaError_t launch_adamw(const AdamWArgs& a, DType dt, int num_sms, cudaStream_t stream);

// ---- GEMV for decode batch 1 (gemv.cu) ---------------------------------------------------------
// y = w . x (+ bias) (+ add) for one input row, fp16/bf16, fp32 accumulation and one rounding of
// each output (what at::linear / at::addmm with beta = 1 compute).
enum class GemvEpilogue { kNone, kSiluGated, kGeluGated };
struct GemvArgs {
  const void* x;     // [K], 16-byte aligned
  const void* w;     // [N, K] contiguous, 16-byte aligned; K % 8 == 0 ([2N, K] when gated)
  const void* bias;  // [N], or nullptr
  const void* add;   // [N], or nullptr
  void* y;           // [N]
  int64_t N, K;
  // Gated: y[i] = act(W[i] . x) * (W[N + i] . x), each dot product rounded to the dtype first (a
  // fused gate/up projection and its activation, as gated_activation computes them unfused);
  // bias and add must be null.
  GemvEpilogue epilogue = GemvEpilogue::kNone;
};
// cudaErrorInvalidValue for K % 8 != 0, K above 2^31, N of 2^30 or more, fp32, or a gated call with
// bias or add.
cudaError_t launch_gemv(const GemvArgs& a, DType dt, cudaStream_t stream);

// ---- image probes -------------------------------------------------------------------------------
// Load one kernel of the file on the current device (cudaFuncGetAttributes; PTX is JIT-compiled
// then) and return the error when the build has no image the device can run. Each .cu file is
// built for the same architectures, so one kernel stands for its file. The error is cleared.
cudaError_t probe_prefill_image();
cudaError_t probe_decode_image();
cudaError_t probe_fused_image();
cudaError_t probe_gemv_image();

}  // namespace uniattn::kernels::cuda
