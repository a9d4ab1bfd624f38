// GradReducer's bookkeeping on one process (the all-reduce of one rank is the identity; the
// two-process sums are tested through uniattn-train in test_train.cpp): gradients accumulated over
// micro-batches equal plain autograd's, fp32 gradients are stable views into shared buckets (no
// second copy), a parameter unused in the last micro-batch keeps what earlier ones gave it, bf16
// gradients go through fp32 buckets, and destroying the reducer detaches its hooks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "train/internal.h"
#include "test_util.h"

namespace uniattn::train_detail {
namespace {

struct Fixture {
  std::vector<at::Tensor> params, inputs;
  explicit Fixture(at::ScalarType dtype) {
    at::manual_seed(3);
    for (auto shape : {std::vector<int64_t>{3, 4}, {4}, {4, 2}})
      params.push_back(at::randn(shape).to(dtype).requires_grad_(true));
    for (int m = 0; m < 2; ++m) inputs.push_back(at::randn({5, 3}).to(dtype));
  }
  // Micro-batch m; the last parameter is used only when `use_last`.
  at::Tensor loss(int m, bool use_last = true) const {
    auto h = at::tanh(at::matmul(inputs[static_cast<size_t>(m)], params[0]) + params[1]);
    if (use_last) h = at::matmul(h, params[2]);
    return h.pow(2).sum();
  }
};

std::vector<at::Tensor> plain_grads(Fixture& f, bool use_last_in_second) {
  for (auto& p : f.params) p.mutable_grad().reset();
  f.loss(0).backward();
  f.loss(1, use_last_in_second).backward();
  std::vector<at::Tensor> g;
  for (auto& p : f.params) g.push_back(p.grad().clone());
  for (auto& p : f.params) p.mutable_grad().reset();
  return g;
}

void two_micro_batches(GradReducer& r, const Fixture& f, bool use_last_in_second) {
  r.zero_grad();
  r.arm(false);
  f.loss(0).backward();
  r.arm(true);
  f.loss(1, use_last_in_second).backward();
  r.finish();
}

TEST(GradReducer, Fp32GradientsAreBucketViewsAndSumLikeAutograd) {
  Comm comm(DistEnv{}, "auto", /*cuda=*/false, 10);
  Fixture f(at::kFloat);
  for (bool use_last : {true, false}) {
    SCOPED_TRACE(use_last);
    const auto expected = plain_grads(f, use_last);
    GradReducer r(comm, f.params, /*bucket_bytes=*/1 << 20);  // one bucket
    ASSERT_TRUE(r.grads_are_views());
    two_micro_batches(r, f, use_last);
    for (size_t i = 0; i < f.params.size(); ++i)
      EXPECT_TRUE(at::allclose(f.params[i].grad(), expected[i], 1e-6, 1e-6)) << i;
    // One allocation holds every gradient, and a second step reuses it.
    EXPECT_TRUE(f.params[0].grad().is_alias_of(f.params[2].grad()));
    const void* before = f.params[1].grad().data_ptr();
    two_micro_batches(r, f, use_last);
    EXPECT_EQ(f.params[1].grad().data_ptr(), before);
    for (size_t i = 0; i < f.params.size(); ++i)
      EXPECT_TRUE(at::allclose(f.params[i].grad(), expected[i], 1e-6, 1e-6)) << i;
    // A trainer that drops a gradient (a skipped step) gets the view back at the next step.
    f.params[0].mutable_grad().reset();
    two_micro_batches(r, f, use_last);
    EXPECT_EQ(f.params[1].grad().data_ptr(), before);
    EXPECT_TRUE(f.params[0].grad().is_alias_of(f.params[1].grad()));
  }
  // Gone with the reducer: its hooks (a backward must not call into it) and its views.
  EXPECT_FALSE(f.params[0].grad().defined());
  f.loss(0).backward();
  EXPECT_TRUE(f.params[0].grad().defined());
}

TEST(GradReducer, SmallBucketsSplitTheGradients) {
  Comm comm(DistEnv{}, "auto", false, 10);
  Fixture f(at::kFloat);
  const auto expected = plain_grads(f, true);
  GradReducer r(comm, f.params, /*bucket_bytes=*/16);  // about one parameter per bucket
  two_micro_batches(r, f, true);
  EXPECT_FALSE(f.params[0].grad().is_alias_of(f.params[2].grad()));
  for (size_t i = 0; i < f.params.size(); ++i)
    EXPECT_TRUE(at::allclose(f.params[i].grad(), expected[i], 1e-6, 1e-6)) << i;
}

TEST(GradReducer, Bf16GradientsGoThroughFp32Buckets) {
  Comm comm(DistEnv{}, "auto", false, 10);
  Fixture f(at::kBFloat16);
  for (bool use_last : {true, false}) {
    SCOPED_TRACE(use_last);
    const auto expected = plain_grads(f, use_last);
    GradReducer r(comm, f.params, 1 << 20);
    EXPECT_FALSE(r.grads_are_views());
    two_micro_batches(r, f, use_last);
    for (size_t i = 0; i < f.params.size(); ++i) {
      EXPECT_EQ(f.params[i].grad().scalar_type(), at::kBFloat16);
      // Summed over one rank in fp32 and rounded back: exactly autograd's bf16 accumulation.
      EXPECT_TRUE(at::equal(f.params[i].grad(), expected[i])) << i;
    }
  }
}

}  // namespace
}  // namespace uniattn::train_detail
