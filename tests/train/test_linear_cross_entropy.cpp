// fused_linear_cross_entropy (src/train/linear_cross_entropy.h): the chunked LM head +
// cross-entropy against the unfused computation (full logits, at::cross_entropy_loss, autograd)
// in fp64 and fp32, for chunks that divide N, do not, hold one row or more than N; with
// zero-weight rows, soft-capping, a frozen or a tied weight, a scaled upstream gradient; under
// CPU bf16 autocast and on bf16 weights; and through the models' hidden_only forward (Gemma-2:
// tied embeddings and a final soft-cap; LLaMA with activation checkpointing).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "model/model_test_util.h"
#include "train/linear_cross_entropy.h"
#include "uniattn/error.h"
#include "uniattn/model/checkpoint.h"

using namespace uniattn;

namespace {

struct Inputs {
  at::Tensor h, w, targets, weights;
};

// N rows of H hidden units over a vocabulary of V; every third row has weight 0, the others
// weights in [0.5, 1.5).
Inputs make_inputs(int64_t n, int64_t h, int64_t v, at::ScalarType dtype, uint64_t seed = 7) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto o = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.h = at::randn({n, h}, gen, o).to(dtype);
  in.w = (at::randn({v, h}, gen, o) * 0.3).to(dtype);
  in.targets = at::randint(v, {n}, gen, at::TensorOptions().dtype(at::kLong));
  in.weights = (at::rand({n}, gen, o) + 0.5).to(at::kFloat);
  for (int64_t i = 0; i < n; i += 3) in.weights.narrow(0, i, 1).zero_();
  return in;
}

struct Grads {
  double loss = 0;
  at::Tensor h, w;  // undefined where the input needs no gradient
};

// Leaf copies of h and w (requiring grad as asked), and the gradients of scale * loss(h, w).
template <class LossFn>
Grads grads_of(const Inputs& in, LossFn loss_fn, double scale, bool grad_w = true) {
  auto h = in.h.detach().clone().set_requires_grad(true);
  auto w = in.w.detach().clone().set_requires_grad(grad_w);
  const auto loss = loss_fn(h, w);
  (loss * scale).backward();
  Grads g;
  g.loss = loss.template item<double>();
  g.h = h.grad();
  if (grad_w) g.w = w.grad();
  return g;
}

// The unfused loss: full logits in the inputs' dtype, fp32 (or fp64) cross-entropy.
at::Tensor reference_loss(const at::Tensor& h, const at::Tensor& w, const Inputs& in,
                          double softcap) {
  auto logits = at::matmul(h, w.t());
  if (softcap > 0) logits = at::tanh(logits / softcap) * softcap;
  const auto acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto ce = at::cross_entropy_loss(logits.to(acc), in.targets, {}, at::Reduction::None);
  return (ce * in.weights.to(acc)).sum();
}

at::Tensor fused_loss(const at::Tensor& h, const at::Tensor& w, const Inputs& in, double softcap,
                      int64_t chunk) {
  LinearCrossEntropyOptions o;
  o.softcap = softcap;
  o.chunk_rows = chunk;
  return fused_linear_cross_entropy(h, w, in.targets, in.weights, o);
}

// |a - b| <= rel * max |b| over the tensor (both defined or both undefined).
// Checks |a - b| <= rel * max |b| over the tensor (both defined or both undefined); returns
// max |a - b| / max |b|.
double expect_close(const at::Tensor& a, const at::Tensor& b, double rel, const char* what) {
  EXPECT_EQ(a.defined(), b.defined()) << what;
  if (!a.defined() || !b.defined()) return 0;
  EXPECT_EQ(a.sizes(), b.sizes()) << what;
  if (a.sizes() != b.sizes()) return 1;
  EXPECT_EQ(a.scalar_type(), b.scalar_type()) << what;
  const double scale = b.abs().max().to(at::kDouble).item<double>();
  const double d = test::max_abs_diff(a, b);
  EXPECT_LE(d, rel * scale) << what << ": max diff " << d << ", scale " << scale;
  return d / scale;
}

void expect_same(const Grads& a, const Grads& b, double rel) {
  EXPECT_NEAR(a.loss, b.loss, rel * std::abs(b.loss));
  const double dh = expect_close(a.h, b.h, rel, "grad h");
  const double dw = expect_close(a.w, b.w, rel, "grad w");
  std::printf("    relative diffs: loss %.2g, grad h %.2g, grad w %.2g\n",
              std::abs(a.loss - b.loss) / std::abs(b.loss), dh, dw);
}

// N = 13 rows: chunks of 1, 4 (not dividing 13), 13, 64 (N < chunk) and the default.
const std::vector<int64_t> kChunks = {1, 4, 13, 64, 0};

TEST(LinearCrossEntropy, EqualsTheUnfusedLossAndGradientsInFp64AndFp32) {
  for (const auto dtype : {at::kDouble, at::kFloat}) {
    for (const double softcap : {0.0, 2.5}) {
      const auto in = make_inputs(13, 16, 37, dtype);
      const auto ref = grads_of(
          in,
          [&](const at::Tensor& h, const at::Tensor& w) {
            return reference_loss(h, w, in, softcap);
          },
          0.37);
      for (const auto chunk : kChunks) {
        SCOPED_TRACE(std::string(at::toString(dtype)) + " softcap " + std::to_string(softcap) +
                     " chunk " + std::to_string(chunk));
        const auto got = grads_of(
            in,
            [&](const at::Tensor& h, const at::Tensor& w) {
              return fused_loss(h, w, in, softcap, chunk);
            },
            0.37);
        expect_same(got, ref, dtype == at::kDouble ? 1e-12 : 1e-5);
      }
    }
  }
}

TEST(LinearCrossEntropy, ZeroWeightRowsHaveZeroGradientAndAllZeroWeightsGiveZero) {
  auto in = make_inputs(9, 8, 11, at::kFloat);
  const auto got = grads_of(
      in, [&](const at::Tensor& h, const at::Tensor& w) { return fused_loss(h, w, in, 0, 2); },
      1.0);
  for (int64_t i = 0; i < 9; i += 3) EXPECT_EQ(got.h[i].abs().max().item<float>(), 0.0f) << i;
  EXPECT_GT(got.h[1].abs().max().item<float>(), 0.0f);
  in.weights.zero_();
  const auto none = grads_of(
      in, [&](const at::Tensor& h, const at::Tensor& w) { return fused_loss(h, w, in, 0, 2); },
      1.0);
  EXPECT_EQ(none.loss, 0.0);
  EXPECT_EQ(none.h.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(none.w.abs().max().item<float>(), 0.0f);
}

TEST(LinearCrossEntropy, FrozenWeightGetsNoGradient) {
  const auto in = make_inputs(13, 16, 37, at::kFloat);
  const auto ref = grads_of(
      in, [&](const at::Tensor& h, const at::Tensor& w) { return reference_loss(h, w, in, 0); },
      1.0, false);
  const auto got = grads_of(
      in, [&](const at::Tensor& h, const at::Tensor& w) { return fused_loss(h, w, in, 0, 4); }, 1.0,
      false);
  EXPECT_FALSE(got.w.defined());
  expect_same(got, ref, 1e-5);
}

// Tied embeddings: the weight is also the input embedding, so its gradient sums both uses.
TEST(LinearCrossEntropy, TiedWeightSumsBothGradients) {
  const auto in = make_inputs(13, 16, 37, at::kFloat);
  const auto ids = at::randint(37, {13}, at::TensorOptions().dtype(at::kLong));
  const auto tied = [&](auto loss) {
    return [&, loss](const at::Tensor& h, const at::Tensor& w) {
      return loss(at::tanh(at::embedding(w, ids) + h), w);
    };
  };
  const auto ref = grads_of(in, tied([&](const at::Tensor& x, const at::Tensor& w) {
                              return reference_loss(x, w, in, 0);
                            }),
                            1.0);
  for (const auto chunk : kChunks) {
    SCOPED_TRACE(chunk);
    const auto got = grads_of(in, tied([&](const at::Tensor& x, const at::Tensor& w) {
                                return fused_loss(x, w, in, 0, chunk);
                              }),
                              1.0);
    expect_same(got, ref, 1e-5);
  }
}

// Max |a - ref| of the loss and of each gradient, relative to max |ref|.
struct Errors {
  double loss, h, w;
};
Errors errors(const Grads& a, const Grads& ref) {
  const auto rel = [](const at::Tensor& x, const at::Tensor& r) {
    return test::max_abs_diff(x, r) / r.abs().max().item<double>();
  };
  return {std::abs(a.loss - ref.loss) / std::abs(ref.loss), rel(a.h, ref.h), rel(a.w, ref.w)};
}

// Under CPU bf16 autocast (fp32 inputs) and on bf16 inputs, the matmuls run in bf16. Oracle: fp64
// on the bf16-rounded inputs. The chunked path's gradients may be at most twice as far from it as
// the unfused bf16 computation's (the FlashAttention rule of CONTRIBUTING.md), plus 1e-6.
TEST(LinearCrossEntropy, Bf16AutocastAndBf16WeightsAreAsAccurateAsTheUnfusedPath) {
  for (const bool autocast : {true, false}) {
    SCOPED_TRACE(autocast ? "fp32 inputs under bf16 autocast" : "bf16 inputs");
    const auto in = make_inputs(40, 32, 101, autocast ? at::kFloat : at::kBFloat16);
    auto in64 = in;
    in64.h = in.h.to(at::kBFloat16).to(at::kDouble);
    in64.w = in.w.to(at::kBFloat16).to(at::kDouble);
    const auto oracle = grads_of(
        in64,
        [&](const at::Tensor& h, const at::Tensor& w) { return reference_loss(h, w, in64, 1.5); },
        1.0);
    at::autocast::set_autocast_enabled(at::kCPU, autocast);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    const auto unfused = errors(
        grads_of(
            in,
            [&](const at::Tensor& h, const at::Tensor& w) { return reference_loss(h, w, in, 1.5); },
            1.0),
        oracle);
    for (const auto chunk : {int64_t{7}, int64_t{0}}) {
      SCOPED_TRACE(chunk);
      const auto got = grads_of(
          in,
          [&](const at::Tensor& h, const at::Tensor& w) {
            return fused_loss(h, w, in, 1.5, chunk);
          },
          1.0);
      EXPECT_EQ(got.h.scalar_type(), in.h.scalar_type());
      EXPECT_EQ(got.w.scalar_type(), in.w.scalar_type());
      const auto e = errors(got, oracle);
      // One scalar: the two paths' errors are both mostly z's rounding and may cancel by luck,
      // so the loss may also be off by bf16's unit roundoff.
      EXPECT_LE(e.loss, std::max(2 * unfused.loss, 0x1p-9));
      EXPECT_LE(e.h, 2 * unfused.h + 1e-6);
      EXPECT_LE(e.w, 2 * unfused.w + 1e-6);
      std::printf(
          "    errors vs fp64 (chunked / unfused): loss %.2g / %.2g, grad h %.2g / %.2g, "
          "grad w %.2g / %.2g\n",
          e.loss, unfused.loss, e.h, unfused.h, e.w, unfused.w);
    }
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
  }
}

TEST(LinearCrossEntropy, DefaultChunkHoldsAbout512MiBOfFp32Logits) {
  LinearCrossEntropyOptions o;
  EXPECT_EQ(linear_cross_entropy_chunk_rows(o, 4096, 128256), 1024);  // 1046 rounded down
  EXPECT_EQ(linear_cross_entropy_chunk_rows(o, 100, 49152), 100);     // at most N
  EXPECT_EQ(linear_cross_entropy_chunk_rows(o, 4096, int64_t{1} << 30), 1);
  o.chunk_rows = 300;
  EXPECT_EQ(linear_cross_entropy_chunk_rows(o, 4096, 128256), 300);
}

TEST(LinearCrossEntropy, BadShapesAreNamed) {
  const auto in = make_inputs(5, 8, 11, at::kFloat);
  test::expect_error([&] { fused_linear_cross_entropy(in.h, in.w.t(), in.targets, in.weights); },
                     "hidden must be [N, H] and weight [V, H]");
  test::expect_error(
      [&] { fused_linear_cross_entropy(in.h, in.w, in.targets.to(at::kInt), in.weights); },
      "targets must be int64");
  test::expect_error(
      [&] { fused_linear_cross_entropy(in.h, in.w, in.targets, in.weights.narrow(0, 0, 4)); },
      "weights must be [5]");
}

// ---- through a model: ForwardOptions::hidden_only + lm_head_weight() ----

CausalLM load(const std::string& arch, at::ScalarType dtype) {
  LoadOptions o;
  o.dtype = dtype;
  auto m = load_model(test::data_dir() / "models" / arch, o);
  m->train();
  return m;
}

// Summed CE over all positions but the last, weighted by a fixed pattern, and all gradients.
std::map<std::string, at::Tensor> model_grads(CausalLM& m, const at::Tensor& ids, bool fused,
                                              bool recompute, double& loss_out) {
  for (auto& p : m->parameters()) p.mutable_grad().reset();
  const int64_t l = ids.size(1);
  auto w = at::ones({ids.size(0), l}, at::kFloat);
  w.narrow(1, l - 1, 1).zero_();
  w.narrow(1, 0, 2).mul_(0.5);
  const auto weights = w.reshape({-1});
  const auto targets = at::roll(ids, {-1}, {1}).reshape({-1});
  ForwardOptions o;
  o.recompute = recompute;
  o.hidden_only = fused;
  const auto out = m->forward(ids, nullptr, o);
  at::Tensor loss;
  if (fused) {
    LinearCrossEntropyOptions lo;
    lo.softcap = m->config().final_logit_softcap;
    lo.chunk_rows = 5;
    loss = fused_linear_cross_entropy(out.reshape({-1, out.size(-1)}), m->lm_head_weight(), targets,
                                      weights, lo);
  } else {
    const auto lg = out.reshape({-1, out.size(-1)});
    loss = (at::cross_entropy_loss(lg, targets, {}, at::Reduction::None) * weights.to(lg.dtype()))
               .sum();
  }
  loss.backward();
  loss_out = loss.item<double>();
  std::map<std::string, at::Tensor> g;
  for (auto& kv : m->named_parameters())
    if (kv.value().grad().defined()) g[kv.key()] = kv.value().grad().clone();
  return g;
}

TEST(LinearCrossEntropy, HiddenOnlyForwardGivesTheModelsLossAndGradients) {
  for (const std::string arch : {"gemma2", "llama"}) {
    SCOPED_TRACE(arch);
    auto m = load(arch, at::kDouble);
    EXPECT_EQ(m->config().tie_word_embeddings, arch == "gemma2");
    EXPECT_EQ(m->config().final_logit_softcap > 0, arch == "gemma2");
    const auto ids =
        test::read_tensors(test::data_dir() / "models" / arch / "oracle.safetensors")["input_ids"];
    double ref_loss = 0, loss = 0;
    const auto ref = model_grads(m, ids, false, false, ref_loss);
    for (const bool recompute : {false, true}) {
      const auto got = model_grads(m, ids, true, recompute, loss);
      EXPECT_NEAR(loss, ref_loss, 1e-12 * ref_loss);
      ASSERT_EQ(got.size(), ref.size());
      double worst = 0;
      for (const auto& [k, g] : ref)
        worst = std::max(worst, expect_close(got.at(k), g, 1e-10, k.c_str()));
      std::printf("  %s%s: loss %.12g, worst relative gradient diff %.2g over %zu parameters\n",
                  arch.c_str(), recompute ? " (recompute)" : "", ref_loss, worst, ref.size());
    }
  }
}

}  // namespace
