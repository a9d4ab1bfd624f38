#include "uniattn/model/kv_cache.h"

#include "uniattn/error.h"
#include "uniattn/model/layer_role.h"

namespace uniattn {

KVCache::KVCache(const ModelConfig& c, int64_t batch, int64_t max_seq, at::ScalarType dtype,
                 at::Device device)
    : batch_(batch), max_seq_(max_seq), k_(c.num_layers), v_(c.num_layers) {
  UNIATTN_CHECK(batch > 0 && max_seq > 0, "KV cache: batch and max_seq must be positive");
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  for (const LayerRole& r : layer_roles(c)) {
    if (r.keeps_k) k_[r.layer] = at::zeros({batch, c.num_kv_heads, max_seq, c.head_dim}, opts);
    if (r.keeps_v) v_[r.layer] = at::zeros({batch, c.num_kv_heads, max_seq, c.head_dim}, opts);
  }
}

void KVCache::advance(int64_t n) {
  UNIATTN_CHECK(length_ + n <= max_seq_, "KV cache overflow: ", length_, " + ", n, " > ", max_seq_);
  length_ += n;
}

at::Tensor KVCache::write(std::vector<at::Tensor>& buf, int64_t layer, const at::Tensor& x,
                          const char* what) {
  UNIATTN_CHECK(buf[layer].defined(), "KV cache: layer ", layer, " keeps no ", what);
  const int64_t t = x.size(2);
  UNIATTN_CHECK(x.size(0) == batch_, "KV cache: batch ", x.size(0), " != ", batch_);
  UNIATTN_CHECK(length_ + t <= max_seq_, "KV cache overflow at layer ", layer, ": ", length_, " + ",
                t, " > ", max_seq_, " tokens");
  buf[layer].narrow(2, length_, t).copy_(x);
  return buf[layer].narrow(2, 0, length_ + t);
}

at::Tensor KVCache::write_k(int64_t layer, const at::Tensor& k) { return write(k_, layer, k, "K"); }
at::Tensor KVCache::write_v(int64_t layer, const at::Tensor& v) { return write(v_, layer, v, "V"); }

const at::Tensor& KVCache::write_k_at(int64_t layer, const at::Tensor& k, const at::Tensor& pos) {
  UNIATTN_CHECK(k_[layer].defined(), "KV cache: layer ", layer, " keeps no K");
  k_[layer].index_copy_(2, pos, k);
  return k_[layer];
}

const at::Tensor& KVCache::write_v_at(int64_t layer, const at::Tensor& v, const at::Tensor& pos) {
  UNIATTN_CHECK(v_[layer].defined(), "KV cache: layer ", layer, " keeps no V");
  v_[layer].index_copy_(2, pos, v);
  return v_[layer];
}

int64_t KVCache::bytes_per_token() const {
  int64_t b = 0;
  for (const auto* bufs : {&k_, &v_})
    for (const auto& t : *bufs)
      if (t.defined()) b += t.size(1) * t.size(3) * static_cast<int64_t>(t.element_size());
  return b;
}

int64_t KVCache::total_bytes() const { return bytes_per_token() * batch_ * max_seq_; }

}  // namespace uniattn
