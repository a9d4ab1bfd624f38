// Paged key/value cache (vLLM's PagedAttention layout, Kwon et al., SOSP 2023): the cache is a pool
// of fixed-size blocks of `block_size` token slots; each sequence owns a block table (its list of
// block ids), so sequences of any length share one pool and join or leave a batch at any step.
// It knows UniAttn roles as KVCache does (LayerRole::keeps_k/keeps_v): leaders and ordinary layers
// keep K and V blocks, Softmax/UniAttn followers V blocks only, CLA followers none. When every
// layer attends through a sliding window (Mistral-7B-v0.1), a row's keys older than its window
// are never read again, so the blocks holding only such keys may be freed (kept_window()); when
// sliding and global layers mix (Gemma-2/3), the sliding layers may get blocks of their own that
// are freed the same way (block group 1).
//
// paged_forward() runs the model over a batch whose rows each have their own cached length (the
// paged counterpart of CausalLM::forward with a KVCache). Rows that feed several tokens (chunked
// prefill) take the ATen path: each layer scatters the new K/V into their slots and gathers every
// row's context through its block table into a padded [B, H, L, D] view, masked by length (and
// window). A batch of one token per row (decode) takes paged_decode_forward(): the decode kernels
// read the pools through the block tables (shared_softmax.h's DecodeKv), and every input lives on
// the device, so a server can capture the step in a CUDA graph per batch size.
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "uniattn/model/causal_lm.h"

namespace uniattn {

class PagedKVCache {
 public:
  // Allocates, per layer that keeps K (V), a pool [blocks * block_size + 1, num_kv_heads,
  // head_dim] of `dtype` on `device` (the last slot is scratch_slot()). With num_sliding_blocks
  // > 0 and a model that mixes sliding-window and global layers (Gemma-2/3), the sliding layers
  // form block group 1 with pools of num_sliding_blocks blocks, addressed by their own block
  // tables (PagedBatch::sliding_block_tables), and keep only their window (vLLM's hybrid KV cache
  // groups); otherwise every layer is in group 0 and shares one block table. Throws
  // uniattn::Error when num_blocks or block_size < 1, or num_sliding_blocks < 0.
  PagedKVCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size,
               at::ScalarType dtype, at::Device device, int64_t num_sliding_blocks = 0);

  int64_t block_size() const { return block_size_; }
  // 1, or 2 when the sliding layers have blocks of their own.
  int num_groups() const { return num_blocks_[1] > 0 ? 2 : 1; }
  // The block group whose tables `layer` reads and writes through.
  int group_of(int64_t layer) const { return group_[layer]; }
  int64_t num_blocks(int group = 0) const { return num_blocks_[group]; }
  bool has_k(int64_t layer) const { return k_[layer].defined(); }
  bool has_v(int64_t layer) const { return v_[layer].defined(); }
  // Slot-major pools [blocks * block_size + 1, heads, head_dim] (blocks of the layer's group);
  // undefined where the layer keeps none. Slot s of a sequence is
  // block_table[s / block_size] * block_size + s % block_size.
  const at::Tensor& k_pool(int64_t layer) const { return k_[layer]; }
  const at::Tensor& v_pool(int64_t layer) const { return v_[layer]; }
  // A slot outside every block of `group`: the padding rows of a decode step (a CUDA graph's
  // batch size above the running batch) write their K/V there.
  int64_t scratch_slot(int group = 0) const { return num_blocks_[group] * block_size_; }
  // Bytes of one block of `group`, summed over its layers (K and V where kept).
  int64_t bytes_per_block(int group = 0) const { return bytes_per_block_[group]; }
  // Bytes per block over all layers of `config`'s cache, or over its sliding (true) or global
  // (false) layers, without allocating one (for sizing the pools).
  static int64_t bytes_per_block(const ModelConfig& config, int64_t block_size,
                                 at::ScalarType dtype);
  static int64_t bytes_per_block(const ModelConfig& config, int64_t block_size,
                                 at::ScalarType dtype, bool sliding_layers);
  // True when some layers of `config` slide and others attend over the whole context.
  static bool mixes_windows(const ModelConfig& config);
  // The sliding window when every layer of `config` uses one (then a row with c cached tokens
  // reads keys from first_key(c) on, and blocks wholly before it may be given back); 0 when some
  // layer attends over the whole context.
  static int64_t kept_window(const ModelConfig& config);
  // The window group `group` keeps: group 0 kept_window(config), group 1 the sliding window.
  int64_t kept_window(int group = 0) const { return kept_window_[group]; }
  // The oldest key position a row with `context_len` cached tokens still reads in `group`: that
  // of its next query's window, max(0, context_len + 1 - kept_window(group)); 0 without one.
  int64_t first_key(int64_t context_len, int group = 0) const {
    const int64_t w = kept_window_[group];
    return w > 0 ? std::max<int64_t>(0, context_len + 1 - w) : 0;
  }
  // Rotary inverse frequencies of the model (global, local), on the pool's device.
  const at::Tensor& inv_freq(bool sliding) const {
    return sliding ? inv_freq_local_ : inv_freq_global_;
  }

 private:
  int64_t block_size_;
  int64_t num_blocks_[2] = {0, 0}, bytes_per_block_[2] = {0, 0}, kept_window_[2] = {0, 0};
  std::vector<int> group_;
  std::vector<at::Tensor> k_, v_;
  at::Tensor inv_freq_global_, inv_freq_local_;
};

// One step's batch (vLLM's AttentionMetadata): row i has `context_lens[i]` tokens already in the
// cache and `query_lens[i]` >= 1 new tokens, the first query_lens[i] entries of its input row
// (right padding after them). Its block table must cover context_lens[i] + query_lens[i] slots;
// in a group with a kept window an entry may be -1 (given back) for a block that holds only
// positions before first_key(context_lens[i], group).
struct PagedBatch {
  std::vector<int64_t> context_lens;
  std::vector<int64_t> query_lens;
  std::vector<std::vector<int32_t>> block_tables;          // group 0
  std::vector<std::vector<int32_t>> sliding_block_tables;  // group 1, when the cache has it
  const std::vector<int32_t>& table(size_t row, int group) const {
    return group == 0 ? block_tables[row] : sliding_block_tables[row];
  }
};

// Runs `model` over input_ids [B, T] (int64; T >= max query_lens) with the paged cache: writes the
// new tokens' K/V into their slots and attends over each row's context and new tokens (positions
// context_lens[i] + j). Returns logits [B, T, vocab] (float32 for fp32 models, else the model
// dtype), or [B, 1, vocab] at each row's last real token when last_only. Throws uniattn::Error
// when the batch is inconsistent (sizes, a block table too short, a block id outside the pool).
at::Tensor paged_forward(CausalLM& model, const at::Tensor& input_ids, PagedKVCache& cache,
                         const PagedBatch& batch, bool last_only);

// The inputs of one decode step (vLLM's decode AttentionMetadata), as tensors the step reads on
// the device: a CUDA graph captured with one set replays with new values copied into it.
struct PagedDecodeInputs {
  at::Tensor block_tables;  // int32 [B, M]: row i's block table, -1 past its end
  at::Tensor seqlens;       // int32 [B]: keys of row i once its token is written (context + 1);
                            // 0 for a padding row
  at::Tensor write_slots;   // int64 [B]: the slot row i's new token goes to (padding rows:
                            // scratch_slot())
  // Group 1's block tables [B, M] and write slots [B] when the cache has it; else undefined.
  at::Tensor sliding_block_tables, sliding_write_slots;
  // The same tensors on `device`.
  PagedDecodeInputs to(at::Device device) const;
};

// Host-side (CPU) inputs of a decode batch (every query_len 1) padded to `rows` >= its size with
// padding rows, block tables to `max_blocks` columns (0: the longest table of either group). Throws
// uniattn::Error when the batch is inconsistent (as paged_forward), a row is not a one-token
// row, a table is longer than max_blocks, or a block the step reads or writes is outside the pool.
PagedDecodeInputs paged_decode_inputs(const PagedKVCache& cache, const PagedBatch& batch,
                                      int64_t rows, int64_t max_blocks);

// One decode step over tokens [B, 1] (int64, on the cache's device) with `inputs` on that device:
// writes each row's new K/V and attends through the block tables. Returns logits [B, 1, vocab]
// (dtype as paged_forward). Nothing is read on the host, so the call can be captured in a CUDA
// graph. Throws uniattn::Error on inconsistent shapes.
at::Tensor paged_decode_forward(CausalLM& model, const at::Tensor& tokens, PagedKVCache& cache,
                                const PagedDecodeInputs& inputs);

}  // namespace uniattn
