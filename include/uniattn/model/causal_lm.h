// The decoder: LLaMA, Mistral and Gemma-2/3 causal LMs whose attention knows UniAttn
// SuperBlocks. Parameter names follow Hugging Face ("model.layers.3.self_attn.q_proj.weight");
// a follower's compensation W_c is "model.layers.N.self_attn.w_c.weight", and followers own no
// q_proj/k_proj (Softmax/UniAttn) or k_proj/v_proj (CLA).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>

#include "uniattn/config/model_config.h"
#include "uniattn/model/kv_cache.h"

namespace uniattn {

enum class AttentionPath {
  Fused,      // fused attention (SDPA / our kernels): no L x L tensor is stored
  Reference,  // explicit fp32 softmax with the probability map materialised; runs anywhere
};

struct ForwardOptions {
  bool last_only = false;  // logits for the last position only
  AttentionPath path = AttentionPath::Fused;
  // Optional [batch, past + new] mask, 1 for real tokens and 0 for (left) padding; positions are
  // counted over real tokens only.
  at::Tensor attention_mask;
  // Graph-safe single-token decode: int64 [1] on the model's device holding the cache position
  // the new tokens are written at (the cache length before this step, equal for every row). With
  // it, nothing in the step depends on host-side lengths, so the step can be captured in a CUDA
  // graph and replayed; forward() then leaves cache->advance() to the caller. Needs a cache, one
  // new token per row and no attention_mask.
  at::Tensor decode_position;
  // Activation checkpointing for training: in grad mode without a cache, each checkpoint unit
  // (a UniAttn SuperBlock from its leader to its last follower, or a layer in no SuperBlock)
  // keeps only its input in forward and is recomputed in backward, trading one extra forward
  // per step for the unit's activations. Loss and gradients equal those without it; parameter
  // gradients are accumulated during the backward pass (reentrant, as PyTorch's checkpoint).
  // Ignored without grad mode or with a cache.
  bool recompute = false;
  // Return the final-normed hidden states [batch, new_tokens or 1, hidden] (the LM head's input,
  // model dtype or fp32 under autocast) instead of logits, for losses that apply the LM head
  // themselves in chunks (uniattn-train's training.fused_linear_cross_entropy): logits =
  // softcap(hidden @ lm_head_weight()^T) with config().final_logit_softcap.
  bool hidden_only = false;
};

class DecoderLayerImpl;
struct ForwardState;

class CausalLMImpl : public torch::nn::Module {
 public:
  // Parameters are created with `options` (dtype, device) and initialised as HF does
  // (N(0, 0.02) weights, unit norms, zero W_c); load_model() then overwrites them.
  explicit CausalLMImpl(const ModelConfig& config, const at::TensorOptions& options = {});

  // input_ids [batch, new_tokens] (int64) -> logits [batch, new_tokens or 1, vocab] (float32 for
  // fp32 models, else the model dtype). With a cache, the new tokens follow the cached ones and
  // their K/V are appended (call cache->advance afterwards is done here).
  at::Tensor forward(const at::Tensor& input_ids, KVCache* cache = nullptr,
                     const ForwardOptions& options = {});

  // Pieces of forward() for calibration and analysis code that walks the layers itself.
  at::Tensor embed(const at::Tensor& input_ids);
  std::shared_ptr<ForwardState> begin(const at::Tensor& input_ids, KVCache* cache,
                                      const ForwardOptions& options);
  at::Tensor run_layer(int64_t layer, const at::Tensor& hidden, ForwardState& state);
  at::Tensor logits(const at::Tensor& hidden, bool last_only);
  std::shared_ptr<DecoderLayerImpl> layer(int64_t i) const;
  // The LM head's weight [vocab, hidden]: model.embed_tokens.weight when the embeddings are tied,
  // else lm_head.weight (the parameter itself, so gradients reach it).
  const at::Tensor& lm_head_weight() const;

  const ModelConfig& config() const { return *config_; }
  at::ScalarType dtype() const;
  at::Device device() const;

 private:
  // logits(hidden + pending): the final norm adds the last layer's deferred residual.
  at::Tensor logits_after(const at::Tensor& hidden, const at::Tensor& pending, bool last_only);
  // The final norm of hidden + pending (pending may be undefined), last position only if asked.
  at::Tensor final_hidden(const at::Tensor& hidden, const at::Tensor& pending, bool last_only);
  // What forward() returns from the last layer's output: logits, or options.hidden_only's states.
  at::Tensor head(const at::Tensor& hidden, const at::Tensor& pending, const ForwardOptions& o);
  std::shared_ptr<const ModelConfig> config_;
  std::vector<std::shared_ptr<DecoderLayerImpl>> layers_;
  at::Tensor embed_weight_, final_norm_weight_, lm_head_weight_;
  at::Tensor inv_freq_global_, inv_freq_local_;  // fp32 rotary frequencies
};
TORCH_MODULE(CausalLM);

}  // namespace uniattn
