// What one forward pass carries from layer to layer: positions, masks, rotary tables, the cache,
// and what each leader hands its followers.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "attention/prefill_rows.h"
#include "layers.h"
#include "uniattn/model/causal_lm.h"
#include "uniattn/model/kv_cache.h"

namespace uniattn {

class PagedKVCache;

// The paged path (paged_forward, uniattn/model/paged_kv_cache.h): where each new token's K/V go in
// the block pool and which slots each row's context is read from.
struct PagedStep {
  PagedKVCache* cache = nullptr;
  at::Tensor write_rows;     // int64 [N]: the real tokens' rows in the flattened [B * T] input
  struct Group {             // per block group of the cache (PagedKVCache::group_of)
    at::Tensor write_slots;  // int64 [N]: the real tokens' slots in the group's pools
    at::Tensor read_slots;   // int64 [B, L]: row i's slots for keys 0..L-1 (masked past its end)
    at::Tensor key_start;    // int64 [B]: the position of row i's key 0 (0 unless a kept window)
    // Row i's real queries (the first query_lens[i] of T) and keys read (the first key_lens[i]
    // of L), on the host: the attention kernels' per-row shapes.
    PrefillRows rows;
  } group[2];
  // Writes x [B, H, T, D] (the new tokens' K or V) into the layer's pool and returns the rows'
  // contexts [B, H, L, D] gathered through their block tables.
  at::Tensor write_k(int64_t layer, const at::Tensor& x) const;
  at::Tensor write_v(int64_t layer, const at::Tensor& x) const;
};

// The graph-safe paged decode step (paged_decode_forward): one new token per row, everything on
// the device, so the step can be captured in a CUDA graph per batch size and replayed.
struct PagedDecode {
  PagedKVCache* cache = nullptr;
  at::Tensor block_tables[2];  // per block group, int32 [B, M]: row i's blocks (-1: none)
  at::Tensor write_slots[2];   // per block group, int64 [B]: the slot of row i's new token
};

// A leader's attention inputs, kept for its followers during one forward pass.
struct SharedAttention {
  at::Tensor q;      // [B, Hq, T, D], after RoPE (and q-norm)
  at::Tensor k, v;   // [B, Hkv, S, D] over the whole attended sequence (cache included)
  at::Tensor probs;  // reference path: fp32 [B, Hq, T, S]; graph decode: the P row [B, Hq, S_max]
  at::Tensor lse;    // when the attention op returned it: fp32 [B, Hq, T]
};

struct ForwardState {
  int64_t past = 0;    // tokens already in the cache
  int64_t tokens = 0;  // new tokens this pass
  KVCache* cache = nullptr;
  const PagedStep* paged = nullptr;           // instead of `cache` on the paged path
  const PagedDecode* paged_decode = nullptr;  // instead of `cache` on the paged decode path
  AttentionPath path = AttentionPath::Fused;
  // bool [B|1, 1, T, S], true where a query may attend a key; one for global, one for sliding
  // layers (undefined when the model has none of that kind).
  at::Tensor mask_global, mask_sliding;
  // No padding mask: the attention kernels (keys [0, S) all valid, queries the last T) apply.
  bool unpadded = true;
  // The mask of that kind is exactly causal over T == S positions (no cache, no padding, window
  // at least T): SDPA may run is_causal (its flash kernel) instead of taking the mask.
  bool causal_global = false, causal_sliding = false;
  // Graph-safe decode (ForwardOptions::decode_position): position int64 [1], and the per-row
  // number of valid keys int32 [B] after this token is written (also set by paged_decode).
  at::Tensor decode_position, cache_seqlens;
  bool decode() const { return decode_position.defined() || paged_decode; }
  std::pair<at::Tensor, at::Tensor> rope_global, rope_sliding;
  std::vector<SharedAttention> shared;  // indexed by layer
  // Calibration hooks: when set, run_layer stores the post-attention residual and the normed
  // input of each layer here.
  bool capture = false;
  std::vector<at::Tensor> captured_attn_residual, captured_normed_input;
};

}  // namespace uniattn
