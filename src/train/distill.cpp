// The micro-batch loss (distill.h): cross-entropy, and with distillation the teacher's KL and the
// followers' attention-output MSE.
#include "distill.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <filesystem>

#include "cross_entropy.h"
#include "linear_cross_entropy.h"
#include "model/forward_state.h"
#include "uniattn/error.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn::train_detail {
namespace {

// The per-position weights of [B, L] positions, flattened: position p of a row predicts ids[p + 1]
// and weighs mask[p + 1]; the last position predicts nothing (weight 0).
at::Tensor position_weights(const at::Tensor& mask) {
  const auto l = mask.size(1);
  return at::constant_pad_nd(mask.narrow(1, 1, l - 1), {0, 1}).reshape({-1});
}

// Rows [N, V] (or [N, H]) of a [B, L, *] tensor at the flattened positions `rows`.
at::Tensor scored_rows(const at::Tensor& t, const at::Tensor& rows) {
  return t.reshape({-1, t.size(-1)}).index_select(0, rows);
}

// Summed KL(p_t || p_s) over scored rows, p = softmax(logits / T) in fp32, each row weighted.
at::Tensor kl_sum(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& rows,
                  const at::Tensor& w, double temperature) {
  const auto ls = at::log_softmax(scored_rows(student, rows).to(at::kFloat) / temperature, -1);
  const auto lt =
      at::log_softmax(scored_rows(teacher, rows).to(at::kFloat).to(ls.device()) / temperature, -1);
  const auto per_row = (lt.exp() * (lt - ls)).sum(-1);
  return (per_row * w).sum();
}

// Summed over scored rows: the mean over layers and hidden units of the squared difference.
at::Tensor mse_sum(const std::vector<at::Tensor>& student, const std::vector<at::Tensor>& teacher,
                   const at::Tensor& rows, const at::Tensor& w) {
  UNIATTN_CHECK(student.size() == teacher.size(), "distill.follower_mse: ", student.size(),
                " student attention outputs, ", teacher.size(), " from the teacher");
  at::Tensor per_row;
  for (size_t i = 0; i < student.size(); ++i) {
    const auto s = scored_rows(student[i], rows).to(at::kFloat);
    const auto t = scored_rows(teacher[i], rows).to(at::kFloat).to(s.device());
    const auto m = (s - t).pow(2).mean(-1);
    per_row = per_row.defined() ? per_row + m : m;
  }
  per_row = per_row / static_cast<double>(student.size());
  return (per_row * w).sum();
}

}  // namespace

ModelOutputs forward_with_attention(CausalLM& model, const at::Tensor& ids,
                                    const std::vector<int64_t>& layers) {
  auto s = model->begin(ids, nullptr, ForwardOptions{});
  const int64_t n = model->config().num_layers;
  s->capture = true;
  s->captured_attn_residual.resize(static_cast<size_t>(n));
  s->captured_normed_input.resize(static_cast<size_t>(n));
  ModelOutputs out;
  auto x = model->embed(ids);
  size_t next = 0;
  for (int64_t l = 0; l < n; ++l) {
    const auto in = x;
    x = model->run_layer(l, x, *s);
    const auto k = static_cast<size_t>(l);
    if (next < layers.size() && layers[next] == l) {
      // The layer adds attention to its input: h = x + attn (pre-norm layouts) or
      // x + post_attention_layernorm(attn) (sandwich norms).
      out.attn.push_back(s->captured_attn_residual[k] - in);
      ++next;
    }
    s->captured_attn_residual[k] = at::Tensor();
    s->captured_normed_input[k] = at::Tensor();
  }
  UNIATTN_CHECK(next == layers.size(), "forward_with_attention: layers must be increasing and < ",
                n);
  out.logits = model->logits(x, false);
  return out;
}

std::vector<int64_t> follower_layers(const CausalLM& model) {
  const auto& spec = model->config().uniattn;
  std::vector<int64_t> out;
  for (int64_t l = 0; l < model->config().num_layers; ++l)
    if (spec.is_follower(l)) out.push_back(l);
  return out;
}

Teacher::Teacher(const TrainConfig& c, at::Device device, const CausalLM& student) {
  UNIATTN_CHECK(c.distill, "Teacher: the config has no distill section");
  const auto& d = *c.distill;
  const bool base = d.teacher == "base";
  const std::filesystem::path path = base ? c.model.path : d.teacher;
  std::error_code ec;
  UNIATTN_CHECK(std::filesystem::exists(path, ec), "distill.teacher: ", path, " not found",
                base ? " (teacher base is model.path)" : "");
  LoadOptions lo;
  lo.dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  lo.device = device;
  if (base) lo.uniattn = UniAttnSpec{};  // the model before unification
  try {
    model_ = load_model(path, lo);
  } catch (const Error& e) {
    fail("distill.teacher: ", e.what());
  }
  model_->eval();
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
  const auto& tc = model_->config();
  const auto& sc = student->config();
  UNIATTN_CHECK(tc.vocab_size == sc.vocab_size, "distill.teacher: ", path, " has a vocabulary of ",
                tc.vocab_size, " tokens, the student ", sc.vocab_size);
  UNIATTN_CHECK(d.follower_mse <= 0 || tc.num_layers == sc.num_layers, "distill.teacher: ", path,
                " has ", tc.num_layers, " layers, the student ", sc.num_layers,
                " (distill.follower_mse compares the same layers)");
  UNIATTN_CHECK(d.follower_mse <= 0 || tc.hidden_size == sc.hidden_size, "distill.teacher: ", path,
                " has hidden size ", tc.hidden_size, ", the student ", sc.hidden_size,
                " (distill.follower_mse)");
}

ModelOutputs Teacher::forward(const at::Tensor& ids, const std::vector<int64_t>& layers) {
  at::NoGradGuard ng;
  // The teacher runs in its own dtype: the student's autocast would not change a bf16 model's
  // matmuls, and keeps an fp32 one's (CPU) exact.
  const auto type = ids.device().type();
  const bool was = at::autocast::is_autocast_enabled(type);
  at::autocast::set_autocast_enabled(type, false);
  ModelOutputs out;
  try {
    out = layers.empty() ? ModelOutputs{model_->forward(ids), {}}
                         : forward_with_attention(model_, ids, layers);
  } catch (...) {
    at::autocast::set_autocast_enabled(type, was);
    throw;
  }
  at::autocast::set_autocast_enabled(type, was);
  return out;
}

at::Tensor target_loss_sum(const at::Tensor& logits, const at::Tensor& ids,
                           const at::Tensor& mask) {
  // Position i predicts ids[i + 1]; the last one predicts nothing (a dummy target with
  // weight 0). Scoring all l positions keeps the logits contiguous: the loss reads them in
  // place (narrowing first cost two strided copies, 1.8 ms per step on the LLaMA-8B slice,
  // ncu-train-llama8b-slice-h100.json).
  auto tgt = at::roll(ids, {-1}, {1}).reshape({-1});
  auto ce = cross_entropy_rows(logits.reshape({-1, logits.size(-1)}), tgt);
  return (ce * position_weights(mask)).sum();
}

at::Tensor target_loss_sum_chunked(const CausalLM& model, const at::Tensor& hidden,
                                   const at::Tensor& ids, const at::Tensor& mask) {
  LinearCrossEntropyOptions o;
  o.softcap = model->config().final_logit_softcap;
  const auto tgt = at::roll(ids, {-1}, {1}).reshape({-1});
  return fused_linear_cross_entropy(hidden.reshape({-1, hidden.size(-1)}), model->lm_head_weight(),
                                    tgt, position_weights(mask), o);
}

LossTerms chunked_ce_loss(const CausalLM& model, const at::Tensor& hidden, const at::Tensor& ids,
                          const at::Tensor& mask) {
  LossTerms t;
  t.total = target_loss_sum_chunked(model, hidden, ids, mask);
  t.ce = t.total.detach();
  t.kl = at::zeros({}, t.ce.options());
  t.mse = t.kl;
  return t;
}

LossTerms micro_batch_loss(const ModelOutputs& student, const ModelOutputs* teacher,
                           const TrainDistillConfig* d, const at::Tensor& ids,
                           const at::Tensor& mask) {
  LossTerms t;
  const auto ce = target_loss_sum(student.logits, ids, mask);
  const auto zero = at::zeros({}, ce.options());
  t.ce = ce.detach();
  t.kl = zero;
  t.mse = zero;
  if (!teacher) {
    t.total = ce;
    return t;
  }
  UNIATTN_CHECK(d, "micro_batch_loss: a teacher needs the distill settings");
  // Only the scored positions: the KL's fp32 softmaxes then cost [scored, V], not [B * L, V].
  const auto w = position_weights(mask);
  const auto rows = w.nonzero().reshape({-1});
  const auto ws = w.index_select(0, rows);
  const auto kl = kl_sum(student.logits, teacher->logits, rows, ws, d->temperature);
  t.kl = kl.detach();
  t.total = (1.0 - d->weight) * ce + d->weight * d->temperature * d->temperature * kl;
  if (d->follower_mse > 0 && !student.attn.empty()) {
    const auto mse = mse_sum(student.attn, teacher->attn, rows, ws);
    t.mse = mse.detach();
    t.total = t.total + d->follower_mse * mse;
  }
  return t;
}

}  // namespace uniattn::train_detail
