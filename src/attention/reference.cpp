#include "reference.h"

#include "model/layers.h"

namespace uniattn {

namespace {
at::Tensor expand_kv(const at::Tensor& kv, int64_t q_heads) {
  const int64_t groups = q_heads / kv.size(1);
  return groups == 1 ? kv : kv.repeat_interleave(groups, 1);
}
}  // namespace

at::Tensor reference_probs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& mask,
                           const AttnMath& m) {
  const auto acc = accumulation_type(q.scalar_type());
  auto kf = expand_kv(k, q.size(1)).to(acc);
  auto scores = at::matmul(q.to(acc), kf.transpose(-1, -2)) * m.scale;
  if (m.softcap > 0) scores = at::tanh(scores / m.softcap) * m.softcap;
  if (mask.defined())
    scores = scores.masked_fill(at::logical_not(mask), -std::numeric_limits<float>::infinity());
  return at::softmax(scores, -1);
}

at::Tensor apply_probs(const at::Tensor& probs, const at::Tensor& v) {
  auto vf = expand_kv(v, probs.size(1)).to(probs.scalar_type());
  return at::matmul(probs, vf).to(v.scalar_type());
}

at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask, bool causal, const AttnMath& m) {
  if (m.softcap > 0) {
    // SDPA cannot soft-cap logits. Until the CUDA kernel takes over, compute in the input dtype
    // chunked over queries so the map never exceeds one chunk.
    const int64_t chunk = 256;
    std::vector<at::Tensor> outs;
    for (int64_t t0 = 0; t0 < q.size(2); t0 += chunk) {
      const int64_t n = std::min(chunk, q.size(2) - t0);
      auto qc = q.narrow(2, t0, n);
      auto mc = mask.defined() ? mask.narrow(2, t0, n) : mask;
      outs.push_back(apply_probs(reference_probs(qc, k, mc, m), v));
    }
    return outs.size() == 1 ? outs[0] : at::cat(outs, 2);
  }
  const bool gqa = q.size(1) != k.size(1);
  const bool use_causal = causal && q.size(2) == k.size(2);
  std::optional<at::Tensor> attn_mask;
  if (mask.defined() && !use_causal) attn_mask = mask;
  return at::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, use_causal, m.scale, gqa);
}

}  // namespace uniattn
