// Preallocated (static) key/value cache that knows UniAttn roles (LayerRole::keeps_k/keeps_v):
// leaders and ordinary layers keep K and V, Softmax/UniAttn followers keep V only (they attend
// with their leader's K), CLA followers keep nothing (they read their leader's K and V).
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "uniattn/config/model_config.h"

namespace uniattn {

class KVCache {
 public:
  // Allocates [batch, num_kv_heads, max_seq, head_dim] buffers for what each layer keeps.
  KVCache(const ModelConfig& config, int64_t batch, int64_t max_seq, at::ScalarType dtype,
          at::Device device);

  int64_t batch() const { return batch_; }
  int64_t max_seq() const { return max_seq_; }
  // Tokens already stored for every sequence of the batch.
  int64_t length() const { return length_; }
  // Marks `n` more tokens as stored; call after a forward pass has written every layer.
  void advance(int64_t n);
  void reset() { length_ = 0; }

  bool has_k(int64_t layer) const { return k_[layer].defined(); }
  bool has_v(int64_t layer) const { return v_[layer].defined(); }
  // Writes new entries [batch, heads, t, head_dim] at positions [length(), length() + t) and
  // returns the valid prefix [batch, heads, length() + t, head_dim] (a view of the buffer).
  at::Tensor write_k(int64_t layer, const at::Tensor& k);
  at::Tensor write_v(int64_t layer, const at::Tensor& v);
  // Writes one token per row [batch, heads, 1, head_dim] at the device-side position `pos`
  // (int64 [1]); graph-safe. Returns the whole buffer.
  const at::Tensor& write_k_at(int64_t layer, const at::Tensor& k, const at::Tensor& pos);
  const at::Tensor& write_v_at(int64_t layer, const at::Tensor& v, const at::Tensor& pos);
  // Full buffers (for kernels that take device-side lengths).
  const at::Tensor& k_buffer(int64_t layer) const { return k_[layer]; }
  const at::Tensor& v_buffer(int64_t layer) const { return v_[layer]; }

  // Bytes the cache holds per token of one sequence, summed over layers.
  int64_t bytes_per_token() const;
  int64_t total_bytes() const;

 private:
  at::Tensor write(std::vector<at::Tensor>& buf, int64_t layer, const at::Tensor& x,
                   const char* what);
  int64_t batch_, max_seq_, length_ = 0;
  std::vector<at::Tensor> k_, v_;
};

}  // namespace uniattn
