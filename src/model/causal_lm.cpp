#include <cmath>

#include <torch/nn/modules/container/modulelist.h>

#include "decoder_layer.h"
#include "forward_state.h"
#include "layers.h"
#include "train/recompute.h"
#include "uniattn/error.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

CausalLMImpl::CausalLMImpl(const ModelConfig& config, const at::TensorOptions& options)
    : config_(std::make_shared<const ModelConfig>(config)) {
  const auto o = options.dtype(options.dtype_opt().value_or(caffe2::TypeMeta::Make<float>()));
  const auto& c = *config_;
  c.validate();
  // "model." holds embeddings, layers and the final norm, as in HF checkpoints.
  struct Body : torch::nn::Module {};
  auto body = register_module("model", std::make_shared<Body>());
  embed_weight_ = register_weight(*body, "embed_tokens",
                                  at::empty({c.vocab_size, c.hidden_size}, o).normal_(0.0, 0.02));
  auto list = body->register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto layer = std::make_shared<DecoderLayerImpl>(config_, l, o);
    list->push_back(layer);
    layers_.push_back(layer);
  }
  final_norm_weight_ = register_norm(*body, "norm", c.hidden_size, c.norm_plus_one, o);
  // Kept in fp32 outside the module's buffers, so model->to(bf16) cannot round them.
  auto freq_opts = at::TensorOptions().dtype(at::kFloat).device(o.device());
  inv_freq_global_ = rope_inv_freq(c.rope, c.head_dim).to(freq_opts);
  inv_freq_local_ = rope_inv_freq(c.rope_local, c.head_dim).to(freq_opts);
  if (!c.tie_word_embeddings)
    lm_head_weight_ = register_weight(
        *this, "lm_head", at::empty({c.vocab_size, c.hidden_size}, o).normal_(0.0, 0.02));
}

std::shared_ptr<DecoderLayerImpl> CausalLMImpl::layer(int64_t i) const { return layers_.at(i); }

at::ScalarType CausalLMImpl::dtype() const { return embed_weight_.scalar_type(); }
at::Device CausalLMImpl::device() const { return embed_weight_.device(); }

at::Tensor CausalLMImpl::embed(const at::Tensor& input_ids) {
  auto x = at::embedding(embed_weight_, input_ids);
  if (config_->scale_embeddings) {
    // Gemma scales by sqrt(hidden) rounded to the activation dtype, as HF does.
    auto scale =
        at::scalar_tensor(std::sqrt(static_cast<double>(config_->hidden_size)), x.options());
    x = x * scale;
  }
  return x;
}

namespace {
// Bool mask [B|1, 1, T, S]: query t (absolute index past + t) may see key j when j <= past + t,
// j > past + t - window (if window), and key j is not padding. A query always sees itself, so a
// padding row never turns into an all-masked (NaN) softmax row.
at::Tensor build_mask(int64_t past, int64_t t, int64_t window, const at::Tensor& key_valid,
                      at::Device device) {
  const int64_t s = past + t;
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  auto qi = at::arange(past, s, opts).unsqueeze(1);  // [T, 1]
  auto kj = at::arange(0, s, opts).unsqueeze(0);     // [1, S]
  auto m = kj <= qi;
  if (window > 0) m = m & (kj > qi - window);
  m = m.unsqueeze(0).unsqueeze(0);  // [1, 1, T, S]
  if (key_valid.defined()) {
    m = m & key_valid.to(at::kBool).view({key_valid.size(0), 1, 1, s});
    m = m | (kj == qi).unsqueeze(0).unsqueeze(0);
  }
  return m;
}
}  // namespace

std::shared_ptr<ForwardState> CausalLMImpl::begin(const at::Tensor& input_ids, KVCache* cache,
                                                  const ForwardOptions& o) {
  const auto& c = *config_;
  UNIATTN_CHECK(input_ids.dim() == 2, "input_ids must be [batch, tokens], got ", input_ids.sizes());
  auto s = std::make_shared<ForwardState>();
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  s->past = cache ? cache->length() : 0;
  s->tokens = t;
  s->cache = cache;
  s->path = o.path;
  s->shared.resize(c.num_layers);
  const int64_t total = s->past + t;
  if (cache) {
    UNIATTN_CHECK(cache->batch() == b, "KV cache batch ", cache->batch(), " != input batch ", b);
    UNIATTN_CHECK(total <= cache->max_seq(), "KV cache holds ", cache->max_seq(),
                  " tokens; this step needs ", total);
  }
  const auto dev = input_ids.device();
  at::Tensor positions;
  if (o.decode_position.defined()) {
    UNIATTN_CHECK(cache && t == 1 && !o.attention_mask.defined(),
                  "decode_position needs a KV cache, one new token per row and no attention_mask");
    s->decode_position = o.decode_position;
    positions = o.decode_position.view({1, 1}).expand({b, 1});
    s->cache_seqlens = (o.decode_position + 1).to(at::kInt).expand({b}).contiguous();
  } else if (o.attention_mask.defined()) {
    UNIATTN_CHECK(o.attention_mask.dim() == 2 && o.attention_mask.size(0) == b &&
                      o.attention_mask.size(1) == total,
                  "attention_mask must be [", b, ", ", total, "], got ", o.attention_mask.sizes());
    auto am = o.attention_mask.to(dev).to(at::kLong);
    positions = (am.cumsum(1) - 1).clamp_min(0).narrow(1, s->past, t);
    s->unpadded = false;
  } else {
    positions = at::arange(s->past, total, at::TensorOptions().dtype(at::kLong).device(dev))
                    .unsqueeze(0)
                    .expand({b, t});
  }
  bool any_sliding = false, any_global = false;
  for (int64_t l = 0; l < c.num_layers; ++l)
    (c.layer_is_sliding(l) ? any_sliding : any_global) = true;
  const auto dt = dtype();
  // Follow the model to its device once (a prefill runs before any CUDA-graph capture).
  if (inv_freq_global_.device() != dev) {
    inv_freq_global_ = inv_freq_global_.to(dev);
    inv_freq_local_ = inv_freq_local_.to(dev);
  }
  at::Tensor key_valid = o.attention_mask.defined() ? o.attention_mask.to(dev) : at::Tensor();
  // The decode kernels mask by length and window themselves.
  const bool masks = !s->decode();
  const bool plain = masks && s->past == 0 && !o.attention_mask.defined();
  s->causal_global = plain;
  s->causal_sliding = plain && (c.sliding_window <= 0 || c.sliding_window >= t);
  if (any_global) {
    if (masks) s->mask_global = build_mask(s->past, t, 0, key_valid, dev);
    s->rope_global = rope_tables(inv_freq_global_, positions, dt);
  }
  if (any_sliding) {
    if (masks) s->mask_sliding = build_mask(s->past, t, c.sliding_window, key_valid, dev);
    s->rope_sliding = rope_tables(inv_freq_local_, positions, dt);
  }
  return s;
}

at::Tensor CausalLMImpl::run_layer(int64_t l, const at::Tensor& hidden, ForwardState& s) {
  return layers_.at(l)->forward(hidden, s);
}

at::Tensor CausalLMImpl::logits(const at::Tensor& hidden, bool last_only) {
  return logits_after(hidden, {}, last_only);
}

at::Tensor CausalLMImpl::final_hidden(const at::Tensor& hidden, const at::Tensor& pending,
                                      bool last_only) {
  const auto last = [&](const at::Tensor& t) {
    return last_only ? t.narrow(1, t.size(1) - 1, 1) : t;
  };
  auto x = last(hidden);
  const double eps = config_->rms_norm_eps;
  const bool p1 = config_->norm_plus_one;
  return pending.defined() ? add_rms_norm(x, last(pending), final_norm_weight_, eps, p1).second
                           : rms_norm(x, final_norm_weight_, eps, p1);
}

const at::Tensor& CausalLMImpl::lm_head_weight() const {
  return config_->tie_word_embeddings ? embed_weight_ : lm_head_weight_;
}

at::Tensor CausalLMImpl::logits_after(const at::Tensor& hidden, const at::Tensor& pending,
                                      bool last_only) {
  auto out = linear_forward(final_hidden(hidden, pending, last_only), lm_head_weight());
  if (config_->final_logit_softcap > 0) {
    const double cap = config_->final_logit_softcap;
    out = at::tanh(out / cap) * cap;
  }
  return out;
}

at::Tensor CausalLMImpl::head(const at::Tensor& hidden, const at::Tensor& pending,
                              const ForwardOptions& o) {
  return o.hidden_only ? final_hidden(hidden, pending, o.last_only)
                       : logits_after(hidden, pending, o.last_only);
}

at::Tensor CausalLMImpl::forward(const at::Tensor& input_ids, KVCache* cache,
                                 const ForwardOptions& options) {
  auto state = begin(input_ids, cache, options);
  auto x = embed(input_ids);
  if (options.recompute && at::GradMode::is_enabled() && !cache) {
    const auto base = recompute_base_state(*state);
    for (const auto& [first, last] : checkpoint_units(*config_))
      x = run_unit_recomputed(*this, first, last, x, base);
  } else {
    // Each layer's closing residual add is done by the next layer's input norm (and the last
    // one's by the final norm): add_rms_norm fuses the two where the fused kernels apply.
    at::Tensor pending;
    for (int64_t l = 0; l < config_->num_layers; ++l)
      std::tie(x, pending) = layers_.at(l)->forward_deferred(x, pending, *state);
    if (cache && !options.decode_position.defined()) cache->advance(input_ids.size(1));
    return head(x, pending, options);
  }
  if (cache && !options.decode_position.defined()) cache->advance(input_ids.size(1));
  return head(x, {}, options);
}

}  // namespace uniattn
