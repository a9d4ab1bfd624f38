#include "decoder_layer.h"

#include <ATen/autocast_mode.h>

#include "attention/reference.h"
#include "shared_softmax.h"
#include "uniattn/error.h"
#include "uniattn/model/kernel_paths.h"
#include "uniattn/model/paged_kv_cache.h"

namespace uniattn {
namespace {
// Our CUDA kernels are forward-only and take one dtype: training (grad mode) and autocast
// regions (fp32 rotary output next to bf16 projections) take the SDPA / math path.
bool inference_kernels_allowed() {
  return !at::GradMode::is_enabled() && !at::autocast::is_autocast_enabled(at::kCUDA);
}

// A paged prefill step's per-row shapes for `layer` when its attention runs the kernels row by
// row (inference on inputs the kernels take): SDPA takes no per-row causal offset without a
// [B, 1, T, L] mask, and with one (and GQA) it runs a slower backend. Else nullptr.
const PrefillRows* paged_rows(const ForwardState& s, const at::Tensor& q, int64_t layer) {
  if (!s.paged || s.path == AttentionPath::Reference || !kernels::cuda_kernel_supports(q) ||
      !kernel_enabled(KernelOp::PrefillAttention, q.device()) || !inference_kernels_allowed())
    return nullptr;
  return &s.paged->group[s.paged->cache->group_of(layer)].rows;
}
}  // namespace

AttentionImpl::AttentionImpl(std::shared_ptr<const ModelConfig> cp, int64_t layer,
                             const at::TensorOptions& opts)
    : cfg_(std::move(cp)), layer_(layer), role_(layer_role(*cfg_, layer)) {
  const auto& c = *cfg_;
  sliding_ = c.layer_is_sliding(layer);

  auto lin = [&](int64_t in, int64_t out, bool bias) { return Proj(in, out, bias, opts); };
  const int64_t q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  Proj wc_block{nullptr};
  if (role_.owns_wc && role_.owns_v && !role_.owns_q && !role_.owns_k && !c.attention_bias) {
    // W_c's input is the layer's normalised input xn, the same tensor v_proj reads (method.md
    // section 3, every family: Gemma's sandwich norm acts on the sum after W_c, not on its
    // input), so the two weights are row blocks of one allocation. Initialised block by block
    // in the order of the unfused layer (v_proj, o_proj, then w_c), so seeded models do not change.
    auto vw = v_wc_.allocate(c.hidden_size, {kv_out, c.hidden_size}, opts, /*init=*/false);
    at::NoGradGuard ng;
    vw[0]->weight.normal_(0.0, 0.02);
    v_proj = register_module("v_proj", vw[0]);
    wc_block = vw[1];
  } else if (role_.owns_q && role_.owns_k && role_.owns_v && !c.attention_bias) {
    // q, k and v as row blocks of one weight: one GEMM in decode (FusedProjections).
    auto qkv = qkv_.allocate(c.hidden_size, {q_out, kv_out, kv_out}, opts);
    q_proj = register_module("q_proj", qkv[0]);
    k_proj = register_module("k_proj", qkv[1]);
    v_proj = register_module("v_proj", qkv[2]);
  } else {
    if (role_.owns_q)
      q_proj = register_module("q_proj", lin(c.hidden_size, q_out, c.attention_bias));
    if (role_.owns_k)
      k_proj = register_module("k_proj", lin(c.hidden_size, kv_out, c.attention_bias));
    if (role_.owns_v)
      v_proj = register_module("v_proj", lin(c.hidden_size, kv_out, c.attention_bias));
  }
  o_proj = register_module("o_proj", lin(q_out, c.hidden_size, c.attention_bias));
  if (role_.owns_wc) {
    at::NoGradGuard ng;
    if (wc_block) wc_block->weight.normal_(0.0, 0.02);  // the draw Proj's constructor makes
    w_c = register_module(
        "w_c", wc_block ? wc_block : lin(c.hidden_size, c.hidden_size, c.attention_bias));
    // Zero compensation until calibrated or trained: the layer starts as plain Softmax sharing.
    w_c->weight.zero_();
    if (w_c->bias.defined()) w_c->bias.zero_();
  }
  if (c.qk_norm) {
    if (q_proj) q_norm_ = register_norm(*this, "q_norm", c.head_dim, c.norm_plus_one, opts);
    if (k_proj) k_norm_ = register_norm(*this, "k_norm", c.head_dim, c.norm_plus_one, opts);
  }
}

at::Tensor AttentionImpl::project(const Proj& proj, const at::Tensor& xn, int64_t heads) const {
  const int64_t b = xn.size(0), t = xn.size(1);
  return proj->forward(xn).view({b, t, heads, cfg_->head_dim}).transpose(1, 2);
}

std::array<at::Tensor, 3> AttentionImpl::project_qkv(const at::Tensor& xn) const {
  const auto& c = *cfg_;
  if (auto y = qkv_.forward(xn, {q_proj, k_proj, v_proj}); !y.empty()) {
    const int64_t b = xn.size(0), t = xn.size(1);
    auto heads = [&](const at::Tensor& part, int64_t h) {
      return part.view({b, t, h, c.head_dim}).transpose(1, 2);
    };
    return {heads(y[0], c.num_heads), heads(y[1], c.num_kv_heads), heads(y[2], c.num_kv_heads)};
  }
  return {project(q_proj, xn, c.num_heads), project(k_proj, xn, c.num_kv_heads),
          project(v_proj, xn, c.num_kv_heads)};
}

at::Tensor AttentionImpl::rope_and_norm(at::Tensor x, const at::Tensor& norm_weight,
                                        ForwardState& s) const {
  if (norm_weight.defined()) x = rms_norm(x, norm_weight, cfg_->rms_norm_eps, cfg_->norm_plus_one);
  const auto& [cos, sin] = sliding_ ? s.rope_sliding : s.rope_global;
  return apply_rotary(x, cos, sin);
}

at::Tensor AttentionImpl::follower_v(const at::Tensor& xn, const at::Tensor& v_lin) const {
  if (!v_lin.defined()) return project(v_proj, xn, cfg_->num_kv_heads);
  const int64_t b = xn.size(0), t = xn.size(1);
  return v_lin.view({b, t, cfg_->num_kv_heads, cfg_->head_dim}).transpose(1, 2);
}

at::Tensor AttentionImpl::forward(const at::Tensor& xn, ForwardState& s) {
  const auto& c = *cfg_;
  const int64_t b = xn.size(0), t = xn.size(1);
  // A UniAttn follower's V and W_c xn from one GEMM where FusedProjections applies (no grad,
  // few rows); training and long prefills run them apart, as below.
  at::Tensor v_lin, wc_out;
  if (w_c) {
    if (auto y = v_wc_.forward(xn, {v_proj, w_c}); !y.empty()) {
      v_lin = y[0];
      wc_out = y[1];
    }
  }
  auto out = s.decode() ? decode_attention(xn, v_lin, s) : prefill_attention(xn, v_lin, s);
  auto attn = out.transpose(1, 2).reshape({b, t, c.num_heads * c.head_dim});
  if (wc_out.defined()) {
    // W_c xn + o_proj(out) as one GEMM with beta = 1 (no bias: fusion needs none).
    return linear_forward(attn, o_proj->weight, {}, wc_out);
  }
  auto a = o_proj->forward(attn);
  if (w_c) {
    // o_proj(out) + W_c xn as one GEMM with beta = 1 (no separate add kernel).
    a = linear_forward(xn, w_c->weight, w_c->bias, a);
  }
  return a;
}

kernels::AttnParams AttentionImpl::kernel_params() const {
  const auto& c = *cfg_;
  return {static_cast<float>(c.attention_scale()), static_cast<float>(c.attn_logit_softcap),
          sliding_ ? c.sliding_window : 0};
}

at::Tensor AttentionImpl::prefill_attention(const at::Tensor& xn, const at::Tensor& v_lin,
                                            ForwardState& s) {
  const auto& c = *cfg_;
  const AttnMath math{c.attention_scale(), c.attn_logit_softcap};
  const at::Tensor& mask = sliding_ ? s.mask_sliding : s.mask_global;
  const bool causal = sliding_ ? s.causal_sliding : s.causal_global;
  const bool reference = s.path == AttentionPath::Reference;
  const bool kernels = !reference && xn.is_cuda() && s.unpadded && inference_kernels_allowed();
  const auto p = kernel_params();
  if (!is_follower()) {
    auto [q_lin, k_lin, v] = project_qkv(xn);
    auto q = rope_and_norm(q_lin, q_norm_, s);
    auto k = rope_and_norm(k_lin, k_norm_, s);
    if (s.cache) {
      k = s.cache->write_k(layer_, k);
      v = s.cache->write_v(layer_, v);
    } else if (s.paged) {
      k = s.paged->write_k(layer_, k);
      v = s.paged->write_v(layer_, v);
    }
    at::Tensor out, probs, lse;
    if (reference) {
      probs = reference_probs(q, k, mask, math);
      out = apply_probs(probs, v);
    } else if (const PrefillRows* rows = paged_rows(s, q, layer_)) {
      std::tie(out, lse) = prefill_leader_rows(q, k, v, p, *rows);
    } else if (kernels) {
      q = q.contiguous(), k = k.contiguous(), v = v.contiguous();
      std::tie(out, lse) = kernels::prefill_leader(q, k, v, p);
    } else {
      out = fused_attention(q, k, v, mask, causal, math);
    }
    if (role_.has_followers()) s.shared[layer_] = SharedAttention{q, k, v, probs, lse};
    return out;
  }
  const SharedAttention& lead = s.shared[role_.leader];
  if (role_.reuse == Reuse::KeyValue) {  // CLA: own q against the leader's K and V
    auto q = rope_and_norm(project(q_proj, xn, c.num_heads), q_norm_, s);
    if (reference) return apply_probs(reference_probs(q, lead.k, mask, math), lead.v);
    if (const PrefillRows* rows = paged_rows(s, q, layer_))
      return std::get<0>(prefill_leader_rows(q, lead.k, lead.v, p, *rows));
    if (kernels)
      return std::get<0>(
          kernels::prefill_leader(q.contiguous(), lead.k.contiguous(), lead.v.contiguous(), p));
    return fused_attention(q, lead.k, lead.v, mask, causal, math);
  }
  auto v = follower_v(xn, v_lin);
  if (s.cache) v = s.cache->write_v(layer_, v);
  if (s.paged) v = s.paged->write_v(layer_, v);
  // P_leader . V_f == Attention(Q_leader, K_leader, V_f): no q, k or RoPE here.
  if (reference) return apply_probs(lead.probs, v);
  // Callers that assemble the leader's state themselves (calibration) may carry no lse.
  const PrefillRows* rows = lead.lse.defined() ? paged_rows(s, lead.q, layer_) : nullptr;
  if (rows) return prefill_follower_rows(lead.q, lead.k, lead.lse, v, p, *rows);
  if (kernels && lead.lse.defined())
    return kernels::prefill_follower(lead.q.contiguous(), lead.k.contiguous(), lead.lse,
                                     v.contiguous(), p);
  return fused_attention(lead.q, lead.k, v, mask, causal, math);
}

namespace {
// Layer `layer`'s decode cache as the kernels read it: the static buffers, or the paged pools
// with this step's block tables.
kernels::DecodeKv decode_kv(int64_t layer, const ForwardState& s) {
  if (const PagedDecode* pd = s.paged_decode) {
    const PagedKVCache& c = *pd->cache;
    return {c.k_pool(layer), c.v_pool(layer), pd->block_tables[c.group_of(layer)], c.block_size()};
  }
  return {s.cache->k_buffer(layer), s.cache->v_buffer(layer), {}, 0};
}
}  // namespace

void AttentionImpl::write_decode_kv(const at::Tensor& k, const at::Tensor& v,
                                    ForwardState& s) const {
  const auto& [cos, sin] = sliding_ ? s.rope_sliding : s.rope_global;
  if (const PagedDecode* pd = s.paged_decode) {
    auto write = [&](const at::Tensor& pool, const at::Tensor& x, const char* what) {
      UNIATTN_CHECK(pool.defined(), "paged KV cache: layer ", layer_, " keeps no ", what);
      const auto& slots = pd->write_slots[pd->cache->group_of(layer_)];
      pool.index_copy_(0, slots, x.reshape({x.size(0), x.size(1), x.size(3)}));
    };
    if (k.defined()) write(pd->cache->k_pool(layer_), apply_rotary(k, cos, sin), "K");
    write(pd->cache->v_pool(layer_), v, "V");
    return;
  }
  const auto& pos = s.decode_position;
  if (k.defined()) {
    // RoPE writes K straight into its cache slot (one kernel, no intermediate K tensor).
    UNIATTN_CHECK(s.cache->has_k(layer_), "KV cache: layer ", layer_, " keeps no K");
    apply_rotary_into(k, cos, sin, s.cache->k_buffer(layer_), pos);
  }
  s.cache->write_v_at(layer_, v, pos);
}

at::Tensor AttentionImpl::decode_rope_and_cache(const at::Tensor& q_lin, at::Tensor k,
                                                const at::Tensor& v, ForwardState& s) const {
  const auto& c = *cfg_;
  if (!q_norm_.defined() && !k_norm_.defined() && !s.paged_decode && s.cache->has_k(layer_) &&
      s.cache->has_v(layer_)) {
    const auto& [cos, sin] = sliding_ ? s.rope_sliding : s.rope_global;
    auto q = at::empty(q_lin.sizes(), q_lin.options());
    if (apply_rotary_qkv_into(q_lin, k, v, cos, sin, q, s.cache->k_buffer(layer_),
                              s.cache->v_buffer(layer_), s.decode_position))
      return q;
  }
  auto q = rope_and_norm(q_lin, q_norm_, s).contiguous();
  if (k_norm_.defined()) k = rms_norm(k, k_norm_, c.rms_norm_eps, c.norm_plus_one);
  write_decode_kv(k, v, s);
  return q;
}

at::Tensor AttentionImpl::decode_attention(const at::Tensor& xn, const at::Tensor& v_lin,
                                           ForwardState& s) {
  const auto& c = *cfg_;
  const auto p = kernel_params();
  if (!is_follower()) {
    auto [q_lin, k, v] = project_qkv(xn);
    auto q = decode_rope_and_cache(q_lin, k, v, s);
    const auto kv = decode_kv(layer_, s);
    // A leader's kernel also writes the normalised probability row its followers reuse; a layer
    // whose followers reuse no probabilities (none, or CLA ones that read K and V) skips that row.
    if (role_.reuse != Reuse::Softmax) return kernels::decode_attention(q, kv, s.cache_seqlens, p);
    auto [out, p_row] = kernels::decode_leader(q, kv, s.cache_seqlens, p);
    s.shared[layer_] = SharedAttention{q, kv.k, kv.v, p_row, {}};
    return out;
  }
  if (role_.reuse == Reuse::KeyValue) {
    // A CLA follower's probabilities are read by nobody: the kernel without the P row (no P
    // writes, no normalisation pass), O bit for bit the same. It reads its leader's K and V.
    auto q = rope_and_norm(project(q_proj, xn, c.num_heads), q_norm_, s).contiguous();
    return kernels::decode_attention(q, decode_kv(role_.leader, s), s.cache_seqlens, p);
  }
  write_decode_kv({}, follower_v(xn, v_lin), s);
  // Reads only this layer's V: P_row . V.
  return kernels::decode_follower(s.shared[role_.leader].probs, decode_kv(layer_, s),
                                  s.cache_seqlens, c.num_heads);
}

DecoderLayerImpl::DecoderLayerImpl(std::shared_ptr<const ModelConfig> cp, int64_t layer,
                                   const at::TensorOptions& o)
    : cfg_(std::move(cp)), layer_(layer) {
  const auto& c = *cfg_;
  self_attn = register_module("self_attn", Attention(cfg_, layer, o));
  mlp = register_module("mlp", Mlp(c, o));
  auto norm = [&](const char* name) {
    return register_norm(*this, name, c.hidden_size, c.norm_plus_one, o);
  };
  input_layernorm = norm("input_layernorm");
  post_attention_layernorm = norm("post_attention_layernorm");
  if (c.sandwich_norms) {
    pre_feedforward_layernorm = norm("pre_feedforward_layernorm");
    post_feedforward_layernorm = norm("post_feedforward_layernorm");
  }
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, ForwardState& s) {
  auto [h, m] = forward_deferred(x, {}, s);
  return h + m;
}

std::pair<at::Tensor, at::Tensor> DecoderLayerImpl::forward_deferred(const at::Tensor& x_in,
                                                                     const at::Tensor& pending,
                                                                     ForwardState& s) {
  const auto& c = *cfg_;
  const double eps = c.rms_norm_eps;
  const bool p1 = c.norm_plus_one;
  at::Tensor x, xn;
  if (pending.defined())
    std::tie(x, xn) = add_rms_norm(x_in, pending, input_layernorm, eps, p1);
  else
    x = x_in, xn = rms_norm(x, input_layernorm, eps, p1);
  auto a = self_attn->forward(xn, s);
  if (c.sandwich_norms) a = rms_norm(a, post_attention_layernorm, eps, p1);
  // The residual add and the MLP's input norm run as one kernel where the fused ops apply.
  const auto& mlp_norm = c.sandwich_norms ? pre_feedforward_layernorm : post_attention_layernorm;
  auto [h, hn] = add_rms_norm(x, a, mlp_norm, eps, p1);
  if (s.capture) {
    s.captured_attn_residual[layer_] = h;
    s.captured_normed_input[layer_] = xn;
  }
  auto m = mlp->forward(hn);
  if (c.sandwich_norms) m = rms_norm(m, post_feedforward_layernorm, eps, p1);
  return {h, m};
}

}  // namespace uniattn
