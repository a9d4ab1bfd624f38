// The training loss of one micro-batch: the response-token cross-entropy and, with a distill
// section (TrainDistillConfig), knowledge distillation from a frozen teacher (Hinton et al. 2015,
// arXiv 1503.02531): KL(p_teacher || p_student) of the temperature-softened next-token
// distributions on the same positions the cross-entropy scores, and optionally the MSE between
// the followers' attention outputs and the teacher's at the same layers. docs/training.md,
// "Distillation".
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "uniattn/config/train_config.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn::train_detail {

// What the teacher (or a student) computed on a micro-batch.
struct ModelOutputs {
  at::Tensor logits;  // [B, L, V], the model's dtype
  // For each layer asked for, in that order: the attention sub-layer's contribution to the
  // residual stream, [B, L, hidden] (h - x of the layer: the attention output, after
  // post_attention_layernorm where the model has sandwich norms).
  std::vector<at::Tensor> attn;
};

// Runs `model` over ids [B, L] (no cache, no padding mask: right padding never influences real
// tokens) layer by layer, keeping the attention outputs of `layers`. Differentiable in grad mode;
// activation checkpointing does not apply.
ModelOutputs forward_with_attention(CausalLM& model, const at::Tensor& ids,
                                    const std::vector<int64_t>& layers);

// The follower layers of a (unified) model, in increasing order; empty for variant none.
std::vector<int64_t> follower_layers(const CausalLM& model);

// The frozen teacher of distill.teacher, loaded once per process (each data-parallel rank holds
// its own): "base" is model.path loaded as variant none (the model before unification), anything
// else a model directory or GGUF loaded as its config describes. bf16 on CUDA, fp32 on CPU; no
// parameter requires gradients. Not part of the training checkpoints (the run's fingerprint
// hashes its files instead).
class Teacher {
 public:
  // Throws uniattn::Error naming distill.teacher when the path does not exist or the model does
  // not load, when its vocabulary differs from the student's, and (follower_mse > 0) when its
  // layer count differs.
  Teacher(const TrainConfig& c, at::Device device, const CausalLM& student);
  // Logits and the attention outputs of `layers` under no-grad, without autocast.
  ModelOutputs forward(const at::Tensor& ids, const std::vector<int64_t>& layers);
  CausalLM& model() { return model_; }

 private:
  CausalLM model_{nullptr};
};

// One micro-batch's loss as sums over its scored positions (position p scored with weight
// mask[:, p + 1], as the cross-entropy is), to be divided by the global batch's scored-token
// count. Without distillation total == ce and kl == mse == 0.
struct LossTerms {
  at::Tensor total;  // differentiable: (1 - w) ce + w T^2 kl + follower_mse mse
  at::Tensor ce;     // summed token cross-entropy (fp32 scalar, detached)
  at::Tensor kl;     // summed KL(p_t || p_s) at temperature T, per scored token
  at::Tensor mse;    // summed, per scored token, mean over followers and hidden of (a_s - a_t)^2
};

// The summed cross-entropy of the target tokens: logits [B, L, V], ids [B, L] int64, mask [B, L]
// float (mask[i]: ids[i] is scored, predicted at position i - 1).
at::Tensor target_loss_sum(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& mask);

// target_loss_sum from the final-normed hidden states [B, L, H] (ForwardOptions::hidden_only)
// through `model`'s LM head and final soft-cap, chunked (fused_linear_cross_entropy): the logits
// of the whole micro-batch never exist. Differentiable w.r.t. hidden and the LM head weight.
at::Tensor target_loss_sum_chunked(const CausalLM& model, const at::Tensor& hidden,
                                   const at::Tensor& ids, const at::Tensor& mask);

// LossTerms of a micro-batch that does not distil, from target_loss_sum_chunked.
LossTerms chunked_ce_loss(const CausalLM& model, const at::Tensor& hidden, const at::Tensor& ids,
                          const at::Tensor& mask);

// The loss of a micro-batch from the student's outputs and, when `teacher` is given, the
// teacher's on the same ids (its attn for the layers whose student attn are given, same order).
// `d` must be given with `teacher`. Logits are compared in fp32.
LossTerms micro_batch_loss(const ModelOutputs& student, const ModelOutputs* teacher,
                           const TrainDistillConfig* d, const at::Tensor& ids,
                           const at::Tensor& mask);

}  // namespace uniattn::train_detail
