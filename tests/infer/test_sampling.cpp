// Sampling against transformers' logits processors (fixture) and against direct computations.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "model/model_test_util.h"
#include "uniattn/error.h"
#include "uniattn/infer/sampling.h"

namespace uniattn {
namespace {

std::map<std::string, at::Tensor> processors() {
  return test::read_tensors(test::data_dir() / "generate" / "processors.safetensors");
}

// Same -inf positions, and the finite values agree.
void expect_same_filter(const at::Tensor& ours, const at::Tensor& ref) {
  auto a = ours.to(at::kFloat), b = ref.to(at::kFloat);
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_TRUE(at::equal(at::isinf(a), at::isinf(b)));
  auto finite = at::isfinite(b);
  EXPECT_LT(test::max_abs_diff(a.masked_select(finite), b.masked_select(finite)), 1e-5);
}

TEST(Sampling, RepetitionPenaltyMatchesTransformers) {
  auto t = processors();
  auto logits = t["logits"].clone();
  auto seen = at::zeros(logits.sizes(), at::kBool).scatter_(1, t["input_ids"], true);
  apply_repetition_penalty(logits, seen, 1.3);
  EXPECT_LT(test::max_abs_diff(logits, t["penalised"]), 1e-6);
  // It changed something, and only the seen tokens.
  EXPECT_GT(test::max_abs_diff(logits, t["logits"]), 0.1);
  EXPECT_TRUE(at::equal(logits.masked_select(~seen), t["logits"].masked_select(~seen)));
}

TEST(Sampling, TemperatureTopKTopPMatchTransformers) {
  auto t = processors();
  const auto& x = t["logits"];
  expect_same_filter(filter_logits(x, 0.7, 0, 1.0), t["scaled"]);
  expect_same_filter(filter_logits(x, 0.7, 5, 1.0), t["top_k"]);
  expect_same_filter(filter_logits(x, 0.7, 0, 0.8), t["top_p"]);
  expect_same_filter(filter_logits(x, 0.7, 10, 0.8), t["top_k_top_p"]);
}

// Top-p keeps exactly the smallest most-likely set whose probability reaches p.
TEST(Sampling, TopPKeepsSmallestSetReachingP) {
  auto x = at::randn({6, 40}, at::TensorOptions().dtype(at::kDouble)) * 2.5;
  for (double p : {0.05, 0.3, 0.5, 0.9, 0.999}) {
    auto kept = at::isfinite(filter_logits(x, 1.0, 0, p));
    auto probs = at::softmax(x, 1);
    for (int64_t r = 0; r < x.size(0); ++r) {
      std::vector<double> pr(40);
      for (int j = 0; j < 40; ++j) pr[j] = probs[r][j].item<double>();
      std::vector<int> order(40);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) { return pr[a] > pr[b]; });
      double mass = 0;
      size_t n = 0;
      while (mass < p && n < order.size()) mass += pr[order[n++]];
      for (size_t i = 0; i < order.size(); ++i)
        EXPECT_EQ(kept[r][order[i]].item<bool>(), i < n) << "p=" << p << " row " << r;
    }
  }
}

TEST(Sampling, TopKKeepsKLargest) {
  auto x = at::randn({3, 30});
  auto kept = at::isfinite(filter_logits(x, 1.0, 7, 1.0));
  EXPECT_TRUE(at::equal(kept.sum(1), at::full({3}, 7, at::kLong)));
  auto kth = std::get<0>(x.sort(1, true)).narrow(1, 6, 1);
  EXPECT_TRUE(at::equal(kept, x >= kth));
}

TEST(Sampling, GreedyIsArgmaxAfterPenalty) {
  auto x = at::tensor({1.0f, 3.0f, 2.9f, -1.0f}).view({1, 4});
  auto seen = at::tensor({0, 1, 0, 0}).to(at::kBool).view({1, 4});
  SamplingParams p;
  auto gen = make_generator(at::kCPU, 0);
  EXPECT_EQ(select_tokens(x, p, at::Tensor(), gen).item<int64_t>(), 1);
  p.repetition_penalty = 1.2;  // 3.0 / 1.2 = 2.5 < 2.9
  EXPECT_EQ(select_tokens(x, p, seen, gen).item<int64_t>(), 2);
}

// Wilson-Hilferty approximation of the chi-square quantile for upper tail z sigma.
double chi2_quantile(double df, double z) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
}

TEST(Sampling, DrawFrequenciesMatchFilteredDistribution) {
  auto base = at::randn({1, 50}, at::TensorOptions().dtype(at::kFloat)) * 1.5;
  SamplingParams p;
  p.temperature = 0.8;
  p.top_k = 20;
  p.top_p = 0.9;
  p.seed = 42;
  auto probs = sampling_probs(base, p)[0];
  const int64_t rows = 4000, rounds = 10;
  auto logits = base.expand({rows, 50}).contiguous();
  auto gen = make_generator(at::kCPU, p.seed);
  std::vector<int64_t> counts(50, 0);
  for (int64_t r = 0; r < rounds; ++r) {
    auto tok = select_tokens(logits, p, at::Tensor(), gen);
    for (int64_t i = 0; i < rows; ++i) ++counts[tok[i].item<int64_t>()];
  }
  const double n = static_cast<double>(rows * rounds);
  double chi2 = 0;
  int support = 0;
  for (int j = 0; j < 50; ++j) {
    const double e = probs[j].item<double>() * n;
    if (e == 0) {
      EXPECT_EQ(counts[j], 0) << "token " << j << " is outside the filtered set";
      continue;
    }
    ++support;
    chi2 += (counts[j] - e) * (counts[j] - e) / e;
  }
  ASSERT_GT(support, 3);
  ASSERT_LE(support, 20);
  EXPECT_LT(chi2, chi2_quantile(support - 1, 3.3)) << "support " << support;  // p ~ 5e-4
}

TEST(Sampling, SeedDeterminesDraws) {
  auto logits = at::randn({8, 100});
  SamplingParams p;
  p.temperature = 1.0;
  auto draw = [&](uint64_t seed) {
    auto gen = make_generator(at::kCPU, seed);
    std::vector<at::Tensor> out;
    for (int i = 0; i < 5; ++i) out.push_back(select_tokens(logits, p, at::Tensor(), gen));
    return at::stack(out);
  };
  EXPECT_TRUE(at::equal(draw(7), draw(7)));
  EXPECT_FALSE(at::equal(draw(7), draw(8)));
}

TEST(Sampling, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0.0;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.top_k = -1;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.repetition_penalty = 0.0;
  EXPECT_THROW(p.validate(), Error);
  EXPECT_THROW(filter_logits(at::zeros({4}), 1.0, 0, 1.0), Error);
}

}  // namespace
}  // namespace uniattn
