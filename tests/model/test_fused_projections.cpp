// FusedProjections: q/k/v and gate/up weights stored as row blocks of one allocation. The fused
// GEMM must equal the separate projections, be used only where it applies (no grad, few rows,
// parameters still inside the allocation), and leave parameter names, shapes and gradients as
// they were.
#include <gtest/gtest.h>

#include "model/decoder_layer.h"
#include "model/layers.h"
#include "model_test_util.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {
namespace {

TEST(FusedProjections, EqualsSeparateProjectionsAndKeepsParameters) {
  at::manual_seed(0);
  FusedProjections fp;
  auto projs = fp.allocate(32, {40, 8, 8}, at::TensorOptions().dtype(at::kDouble));
  ASSERT_EQ(projs.size(), 3u);
  EXPECT_EQ(projs[0]->weight.sizes(), (std::vector<int64_t>{40, 32}));
  EXPECT_EQ(projs[2]->weight.sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_TRUE(projs[1]->weight.requires_grad());
  {
    // Only the parameters reference the block: once all are re-pointed, it is freed.
    FusedProjections other;
    auto ps = other.allocate(8, {4, 4}, at::TensorOptions().dtype(at::kDouble));
    const auto storage = ps[0]->weight.storage();
    at::NoGradGuard ng;
    for (auto& p : ps) p->weight.set_data(at::zeros({4, 8}, at::kDouble));
    EXPECT_EQ(storage.use_count(), 1);  // `storage` itself
  }
  auto x = at::randn({2, 3, 32}, at::kDouble);
  {
    at::NoGradGuard ng;
    auto parts = fp.forward(x, projs);
    ASSERT_EQ(parts.size(), 3u);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_LT(test::max_abs_diff(parts[i], projs[i]->forward(x)), 1e-12) << i;
    // More rows than a decode batch: the caller runs the projections separately.
    EXPECT_TRUE(
        fp.forward(at::randn({2, FusedProjections::kMaxRows, 32}, at::kDouble), projs).empty());
    // A parameter re-pointed elsewhere (as calibration's weight sharing does) disables fusion.
    projs[1]->weight.set_data(at::randn({8, 32}, at::kDouble));
    EXPECT_TRUE(fp.forward(x, projs).empty());
  }
  // With gradients the projections run separately (each parameter gets its own gradient).
  EXPECT_TRUE(fp.forward(x, projs).empty());
}

TEST(FusedProjections, ModelNamesAndDecodeUnchanged) {
  at::manual_seed(1);
  auto c = test::tiny_llama_config(4);
  CausalLM model(c, at::TensorOptions().dtype(at::kDouble));
  auto params = model->named_parameters();
  for (const char* n :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight"})
    EXPECT_TRUE(params.contains(n)) << n;
  EXPECT_EQ(params["model.layers.0.self_attn.k_proj.weight"].sizes(),
            (std::vector<int64_t>{16, 32}));
  // Separate weights must not share values (one normal_ over the block, not one row repeated).
  EXPECT_GT(test::max_abs_diff(params["model.layers.0.mlp.gate_proj.weight"],
                               params["model.layers.0.mlp.up_proj.weight"]),
            0.0);

  // A short forward without grad (fused GEMMs) against the same forward with grad mode on
  // (separate GEMMs).
  auto ids = at::randint(c.vocab_size, {1, 5}, at::kLong);
  at::Tensor fused;
  {
    at::NoGradGuard ng;
    fused = model->forward(ids);
  }
  auto separate = model->forward(ids).detach();
  EXPECT_LT(test::max_abs_diff(fused, separate), 1e-12);
  // Gradients reach every block of the fused allocation.
  model->forward(ids).sum().backward();
  for (const char* n :
       {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.mlp.up_proj.weight"}) {
    ASSERT_TRUE(params[n].grad().defined()) << n;
    EXPECT_GT(params[n].grad().abs().sum().item<double>(), 0.0) << n;
  }
}

// linear_forward is at::linear plus at::addmm's C: on the CPU (the ATen path) it must equal the
// fp64 expression for every input layout the model passes (decode's [1, 1, K], a flat [K], a
// batch [B, T, K]), with and without bias and add, and keep the leading shape.
TEST(LinearForward, EqualsLinearPlusAddOnEveryLayout) {
  at::manual_seed(3);
  auto w = at::randn({12, 16}, at::kDouble), bias = at::randn({12}, at::kDouble);
  for (const auto& shape : std::vector<std::vector<int64_t>>{{1, 1, 16}, {16}, {2, 3, 16}}) {
    auto x = at::randn(shape, at::kDouble);
    auto out_shape = shape;
    out_shape.back() = 12;
    auto add = at::randn(out_shape, at::kDouble);
    auto ref = at::matmul(x, w.t());
    auto y = linear_forward(x, w);
    EXPECT_EQ(y.sizes().vec(), out_shape);
    EXPECT_LT(test::max_abs_diff(y, ref), 1e-12);
    EXPECT_LT(test::max_abs_diff(linear_forward(x, w, bias), ref + bias), 1e-12);
    EXPECT_LT(test::max_abs_diff(linear_forward(x, w, {}, add), ref + add), 1e-12);
    auto both = linear_forward(x, w, bias, add);
    EXPECT_EQ(both.sizes().vec(), out_shape);
    EXPECT_LT(test::max_abs_diff(both, ref + bias + add), 1e-12);
  }
  // An add that is a column block of a wider output (the follower's W_c x part).
  auto wide = at::randn({2, 1, 20}, at::kDouble);
  auto x = at::randn({2, 1, 16}, at::kDouble);
  auto add = wide.narrow(2, 8, 12);
  EXPECT_LT(test::max_abs_diff(linear_forward(x, w, {}, add), at::matmul(x, w.t()) + add), 1e-12);
  EXPECT_THROW(linear_forward(x, w, {}, at::randn({2, 1, 11}, at::kDouble)), std::exception);
}

}  // namespace
}  // namespace uniattn
