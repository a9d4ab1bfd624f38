// One decoder layer and its SuperBlock-aware attention.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <array>

#include "forward_state.h"
#include "layers.h"
#include "shared_softmax.h"
#include "uniattn/config/model_config.h"
#include "uniattn/model/layer_role.h"

namespace uniattn {

// Self-attention of layer `layer`. Its role (LayerRole, from the config's UniAttn spec):
// - ordinary layer or leader: q/k/v/o projections, RoPE, K and V cached;
// - Softmax/UniAttn follower: v and o only (plus w_c for UniAttn); attends with the leader's
//   q and k, i.e. reuses the leader's probability map with its own V;
// - CLA follower: q and o only; attends with the leader's k and v.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(std::shared_ptr<const ModelConfig> c, int64_t layer, const at::TensorOptions& o);
  // xn: the normalised input [B, T, hidden]. Returns o_proj(attention) (+ w_c(xn) in UniAttn
  // followers), before any post-attention norm and the residual add.
  at::Tensor forward(const at::Tensor& xn, ForwardState& state);

  const LayerRole& role() const { return role_; }
  bool is_follower() const { return role_.is_follower(); }
  int64_t leader() const { return role_.leader; }

  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr}, w_c{nullptr};

 private:
  // v_lin: a Softmax/UniAttn follower's v_proj(xn) [B, T, kv_out] when forward() has already
  // computed it (together with W_c xn); undefined otherwise.
  at::Tensor prefill_attention(const at::Tensor& xn, const at::Tensor& v_lin, ForwardState& s);
  // Graph-safe single-token step over the whole cache buffers (static or paged) with device-side
  // lengths.
  at::Tensor decode_attention(const at::Tensor& xn, const at::Tensor& v_lin, ForwardState& s);
  // Writes a decode step's new K (k [B,Hkv,1,D] before RoPE; undefined for a follower) and V
  // into this layer's cache, static or paged.
  void write_decode_kv(const at::Tensor& k, const at::Tensor& v, ForwardState& s) const;
  // A leader's decode step after its projections: q with RoPE (and q_norm) applied, returned
  // contiguous [B,Hq,1,D], with k (RoPE, k_norm) and v written into the cache. One kernel for all
  // three where apply_rotary_qkv_into applies (static cache, no q/k norm).
  at::Tensor decode_rope_and_cache(const at::Tensor& q_lin, at::Tensor k, const at::Tensor& v,
                                   ForwardState& s) const;
  // A follower's V heads [B, Hkv, T, D]: from v_lin when given, else its own projection.
  at::Tensor follower_v(const at::Tensor& xn, const at::Tensor& v_lin) const;
  kernels::AttnParams kernel_params() const;
  at::Tensor project(const Proj& proj, const at::Tensor& xn, int64_t heads) const;
  // q [B,Hq,T,D], k and v [B,Hkv,T,D] (before RoPE); one GEMM where qkv_ applies.
  std::array<at::Tensor, 3> project_qkv(const at::Tensor& xn) const;
  at::Tensor rope_and_norm(at::Tensor x, const at::Tensor& norm_weight, ForwardState& s) const;

  std::shared_ptr<const ModelConfig> cfg_;
  int64_t layer_;
  LayerRole role_;
  bool sliding_;
  at::Tensor q_norm_, k_norm_;  // Gemma-3
  FusedProjections qkv_;        // q/k/v weights of leaders and ordinary layers
  // v_proj and w_c of a UniAttn follower: both read xn, so small inference batches run them as
  // one GEMM with the weight [W_v; W_c] (rows of one allocation, the parameters stay separate).
  FusedProjections v_wc_;
};
TORCH_MODULE(Attention);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(std::shared_ptr<const ModelConfig> c, int64_t layer, const at::TensorOptions& o);
  at::Tensor forward(const at::Tensor& x, ForwardState& state);
  // The same layer with its closing residual add left to the caller: returns (h, m), the layer's
  // output being h + m. `pending`, when defined, is the previous layer's m: the input is then
  // x + pending, added by this layer's input norm (one fused kernel where there were two, the
  // sum rounded exactly as the separate add rounds it).
  std::pair<at::Tensor, at::Tensor> forward_deferred(const at::Tensor& x, const at::Tensor& pending,
                                                     ForwardState& state);

  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  at::Tensor input_layernorm, post_attention_layernorm;
  at::Tensor pre_feedforward_layernorm, post_feedforward_layernorm;  // Gemma sandwich norms

 private:
  std::shared_ptr<const ModelConfig> cfg_;
  int64_t layer_;
};
TORCH_MODULE(DecoderLayer);

}  // namespace uniattn
