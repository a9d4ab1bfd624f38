// Attention kernels for UniAttn's shared-Softmax path (Xiong et al., arXiv 2502.00439; a follower
// attends with its leader's probabilities).
//
// A SuperBlock leader computes the attention probabilities P; its followers reuse them with their
// own V. These entry points give the leader what a follower needs (the row log-sum-exp in prefill,
// the normalised probability row in decode) and let a follower skip Q, K and the online softmax.
//
// Layout: every tensor is [batch, heads, seq, head_dim] and contiguous (non-contiguous inputs are
// copied). Hq query heads, Hkv KV heads; query head h reads KV head h / (Hq / Hkv) (GQA).
// Dispatch: CUDA tensors in bf16/fp16 with head_dim 64, 128 or 256 run the custom CUDA kernels
// (fp32 accumulation) when the library was built with CUDA and the GPU takes the kernel path
// (uniattn/model/kernel_paths.h) (prefill without softcap/window uses PyTorch's cuDNN or flash
// attention, see prefill_leader_custom); everything else runs the
// fallback, which materialises the logits and computes in fp32 (fp64 for fp64 inputs). Every
// function throws uniattn::Error naming the tensor at fault on a bad shape, dtype or device.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace uniattn::kernels {

struct AttnParams {
  float scale;  // multiplies QK^T (usually 1/sqrt(head_dim) or Gemma's query_pre_attn)
  float softcap =
      0.f;             // Gemma-2: logits = softcap * tanh(logits / softcap) before masking; 0 = off
  int64_t window = 0;  // sliding window: query i sees keys j with i - window < j <= i; 0 = off
};

// ---- prefill (causal) ------------------------------------------------------------------------
// q [B,Hq,T,D], k/v [B,Hkv,S,D] with S >= T: query t sits at key position S - T + t.
// Returns O [B,Hq,T,D] (dtype of q) and lse [B,Hq,T] fp32, the natural-log log-sum-exp of the
// scaled, capped and masked logits of each row.
std::tuple<at::Tensor, at::Tensor> prefill_leader(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const AttnParams& p);

// A follower: O = exp(logits(q_leader, k_leader) - lse_leader) . v_follower. No online max/sum and
// nothing of size T x S is stored (in the CUDA kernel). v_follower [B,Hkv,S,D].
at::Tensor prefill_follower(const at::Tensor& q_leader, const at::Tensor& k_leader,
                            const at::Tensor& lse_leader, const at::Tensor& v_follower,
                            const AttnParams& p);

// ---- decode (one query per sequence) ----------------------------------------------------------
// q [B,Hq,1,D]; k_cache/v_cache [B,Hkv,S_max,D]; cache_seqlens int32 [B] on q's device: keys
// [0, len_b) are valid and the query sits at position len_b - 1 (the window counts from there).
// Lengths stay on the device (no host sync), so the calls can be captured in a CUDA graph and
// replayed with new lengths. Lengths are clamped to [0, S_max]; a row with length 0 gives O = 0.
// Returns O [B,Hq,1,D] and p_row [B,Hq,S_max] fp32: over keys [0, len_b) the normalised
// probabilities (zero outside the window); entries from len_b on are unspecified (the CUDA kernel
// neither reads nor writes them, so a step costs the filled length, not the capacity; the fallback
// writes zeros there). decode_follower reads [0, len_b) only.
// fp32 because the followers multiply it directly: it is Hq*4 bytes per position against
// Hkv*D*2 bytes of V (6% at Hq/Hkv = 4, D = 128), and bf16 probabilities would add a 0.4%
// relative error per element to every follower of the group.
std::tuple<at::Tensor, at::Tensor> decode_leader(const at::Tensor& q, const at::Tensor& k_cache,
                                                 const at::Tensor& v_cache,
                                                 const at::Tensor& cache_seqlens,
                                                 const AttnParams& p);

// Plain decode attention for a layer whose probabilities nobody reuses (no followers): the
// leader's kernel without the probability row (no P writes, no normalisation pass). Returns O.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                            const AttnParams& p);

// O [B,Hq,1,D] = p_row . V_cache over keys [0, len_b); reads only V (once per KV head) and
// neither p_row nor V past len_b.
at::Tensor decode_follower(const at::Tensor& p_row, const at::Tensor& v_cache,
                           const at::Tensor& cache_seqlens, int64_t num_q_heads);

// Preallocated-output variants for CUDA graphs / static buffers: `out` [B,Hq,1,D] in q's (v's)
// dtype and `p_row` [B,Hq,S_max] fp32, both contiguous on the inputs' device. The kernel leaves
// p_row's entries from len_b on as they were.
void decode_leader_out(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& cache_seqlens, const AttnParams& p, at::Tensor& out,
                       at::Tensor& p_row);
void decode_follower_out(const at::Tensor& p_row, const at::Tensor& v_cache,
                         const at::Tensor& cache_seqlens, int64_t num_q_heads, at::Tensor& out);

// ---- decode through a paged KV cache (vLLM's PagedAttention layout, Kwon et al., SOSP 2023) ----
// One layer's cache as the decode kernels read it. Static: k/v [B,Hkv,S,D] as above. Paged: k/v
// are pools [num_slots, Hkv, D] shared by all sequences, and row b's key j sits in slot
// block_tables[b][j / block_size] * block_size + j % block_size; the logical capacity is
// S = M * block_size (p_row is [B,Hq,S]). Entries past a row's length are never read. Below its
// window an entry may be -1 (a block given back): the leader does not read there, the follower
// (whose probabilities are 0 there) skips it, and the fallback reads zeros. Other entries must
// name blocks of the pools.
struct DecodeKv {
  at::Tensor k, v;          // k undefined for a follower (V only)
  at::Tensor block_tables;  // int32 [B, M] on the pools' device; undefined: static layout
  int64_t block_size = 0;   // paged: slots per block (>= 1)
  bool paged() const { return block_tables.defined(); }
  int64_t capacity() const;  // S
  int64_t batch() const;     // B
};

// As decode_leader / decode_attention / decode_follower above, over either layout; the static
// layout calls those. Paged inputs take the CUDA kernels where the static ones would (q and the
// pools bf16/fp16, head_dim 64/128/256, block_tables int32 on their device); else the fallback
// gathers each row's keys [0, S) through its block table into the static layout. Throws
// uniattn::Error naming the tensor at fault (shape, dtype, device, a block_size < 1).
std::tuple<at::Tensor, at::Tensor> decode_leader(const at::Tensor& q, const DecodeKv& kv,
                                                 const at::Tensor& cache_seqlens,
                                                 const AttnParams& p);
at::Tensor decode_attention(const at::Tensor& q, const DecodeKv& kv,
                            const at::Tensor& cache_seqlens, const AttnParams& p);
at::Tensor decode_follower(const at::Tensor& p_row, const DecodeKv& kv,
                           const at::Tensor& cache_seqlens, int64_t num_q_heads);
// The paged cache's keys (k) or values (v) [0, S) of every row in the static layout [B,Hkv,S,D]
// (zeros where the block table holds -1): the fallback's input, and the tests' oracle.
at::Tensor gather_paged(const at::Tensor& pool, const DecodeKv& kv);

// ---- explicit paths (tests, benchmarks) -------------------------------------------------------
// The ATen fallback, whatever the device and dtype.
std::tuple<at::Tensor, at::Tensor> prefill_leader_fallback(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const AttnParams& p);
at::Tensor prefill_follower_fallback(const at::Tensor& q_leader, const at::Tensor& k_leader,
                                     const at::Tensor& lse_leader, const at::Tensor& v_follower,
                                     const AttnParams& p);
std::tuple<at::Tensor, at::Tensor> decode_leader_fallback(const at::Tensor& q,
                                                          const at::Tensor& k_cache,
                                                          const at::Tensor& v_cache,
                                                          const at::Tensor& cache_seqlens,
                                                          const AttnParams& p);
at::Tensor decode_follower_fallback(const at::Tensor& p_row, const at::Tensor& v_cache,
                                    const at::Tensor& cache_seqlens, int64_t num_q_heads);

// The uniattn CUDA kernels only. Without softcap and window, prefill_leader and prefill_follower
// run PyTorch's fused cuDNN or flash attention instead (faster on Hopper; for the follower,
// softmax(q_leader k_leader^T) v_follower is the same function as exp(logits - lse) v): for
// T == S one causal call, for a chunk (T < S) a call over the context without a mask and one
// over the chunk with the square causal mask, merged by their log-sum-exps, once a leader's
// chunk validated that against our kernel (kernels/cuda_backend.cpp); these variants skip that
// shortcut (tests, benchmarks). Unsupported inputs still fall back to ATen.
std::tuple<at::Tensor, at::Tensor> prefill_leader_custom(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const AttnParams& p);
at::Tensor prefill_follower_custom(const at::Tensor& q_leader, const at::Tensor& k_leader,
                                   const at::Tensor& lse_leader, const at::Tensor& v_follower,
                                   const AttnParams& p);

// Which library kernel the plain causal prefill leader uses now and why (validation result or
// the reason a candidate was dropped). "" in builds without CUDA.
std::string prefill_library_status();

// True when this build has the CUDA kernels and they accept these inputs (CUDA device, bf16/fp16,
// head_dim 64/128/256). The dispatching functions above run a kernel when this holds and the
// device takes that operation's kernel path (uniattn::kernel_enabled: compute capability >= 8.0,
// an image in the build for it, not disabled by UNIATTN_DISABLE_KERNELS); else the fallback.
bool cuda_kernels_available();
bool cuda_kernel_supports(const at::Tensor& t);

}  // namespace uniattn::kernels
