// Row-wise prefill attention (src/attention/prefill_rows.h), the paged prefill step's kernel path:
// rows of different query and key lengths in one padded batch give, at their real queries, what
// SDPA-free reference attention gives with the [B, 1, T, S] mask the paged step builds (each
// row's queries the last of its keys, causal, optional window and softcap); padding queries are
// zero; the follower reproduces P . V_f; lengths that do not fit throw.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attention/prefill_rows.h"
#include "attention/reference.h"
#include "uniattn/error.h"

namespace {

using uniattn::PrefillRows;
namespace uk = uniattn::kernels;

// The mask a padded batch needs: row i's query t (t < T_i) sees key j (j < S_i) when
// j <= S_i - T_i + t and, with a window, j > S_i - T_i + t - window. Padding queries see key 0.
at::Tensor row_mask(const PrefillRows& r, int64_t t, int64_t s, int64_t window) {
  auto m = at::zeros({int64_t(r.query_lens.size()), 1, t, s}, at::kBool);
  auto a = m.accessor<bool, 4>();
  for (size_t i = 0; i < r.query_lens.size(); ++i) {
    const int64_t off = r.key_lens[i] - r.query_lens[i];
    for (int64_t q = 0; q < t; ++q)
      for (int64_t j = 0; j < s; ++j)
        a[int64_t(i)][0][q][j] = q < r.query_lens[i] ? j < r.key_lens[i] && j <= off + q &&
                                                           (window == 0 || j > off + q - window)
                                                     : j == 0;
  }
  return m;
}

struct Case {
  int64_t hq, hkv, d;
  float softcap;
  int64_t window;
  PrefillRows rows;
  std::string name;
};

class PrefillRowsTest : public ::testing::TestWithParam<Case> {};

TEST_P(PrefillRowsTest, EqualsMaskedReference) {
  const Case& c = GetParam();
  const int64_t b = int64_t(c.rows.query_lens.size());
  int64_t t = 0, s = 0;
  for (size_t i = 0; i < c.rows.query_lens.size(); ++i) {
    t = std::max(t, c.rows.query_lens[i]);
    s = std::max(s, c.rows.key_lens[i]);
  }
  at::manual_seed(7);
  auto q = at::randn({b, c.hq, t, c.d}, at::kDouble);
  auto k = at::randn({b, c.hkv, s, c.d}, at::kDouble);
  auto v = at::randn({b, c.hkv, s, c.d}, at::kDouble);
  auto vf = at::randn({b, c.hkv, s, c.d}, at::kDouble);
  // AttnParams holds a float scale; the reference gets the same value.
  const double scale = double(float(1.0 / std::sqrt(double(c.d))));
  const uk::AttnParams p{float(scale), c.softcap, c.window};
  // Padding keys hold NaN: a row must not read past its key length.
  for (int64_t i = 0; i < b; ++i) {
    const int64_t n = c.rows.key_lens[size_t(i)];
    if (n < s) {
      k[i].narrow(1, n, s - n).fill_(NAN);
      v[i].narrow(1, n, s - n).fill_(NAN);
      vf[i].narrow(1, n, s - n).fill_(NAN);
    }
  }
  auto [o, lse] = uniattn::prefill_leader_rows(q, k, v, p, c.rows);
  auto of = uniattn::prefill_follower_rows(q, k, lse, vf, p, c.rows);
  const auto mask = row_mask(c.rows, t, s, c.window);
  const uniattn::AttnMath math{scale, c.softcap};
  auto probs = uniattn::reference_probs(q, at::nan_to_num(k, 0.0), mask, math);
  auto o_ref = uniattn::apply_probs(probs, at::nan_to_num(v, 0.0));
  auto of_ref = uniattn::apply_probs(probs, at::nan_to_num(vf, 0.0));
  for (int64_t i = 0; i < b; ++i) {
    const int64_t n = c.rows.query_lens[size_t(i)];
    EXPECT_TRUE(at::allclose(o[i].narrow(1, 0, n), o_ref[i].narrow(1, 0, n), 0, 1e-10))
        << c.name << " row " << i << " max diff "
        << (o[i].narrow(1, 0, n) - o_ref[i].narrow(1, 0, n)).abs().max().item<double>();
    // The follower reads the leader's lse, which is fp32 whatever the inputs' dtype.
    EXPECT_TRUE(at::allclose(of[i].narrow(1, 0, n), of_ref[i].narrow(1, 0, n), 0, 1e-5))
        << c.name << " follower row " << i;
    if (n < t) {
      EXPECT_EQ(o[i].narrow(1, n, t - n).abs().max().item<double>(), 0.0) << c.name;
      EXPECT_EQ(of[i].narrow(1, n, t - n).abs().max().item<double>(), 0.0) << c.name;
      EXPECT_EQ(lse[i].narrow(1, n, t - n).abs().max().item<double>(), 0.0) << c.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Rows, PrefillRowsTest,
    ::testing::Values(
        // One full row: the direct call.
        Case{4, 2, 16, 0.f, 0, {{6}, {6}}, "one_row_square"},
        Case{4, 2, 16, 0.f, 0, {{3}, {11}}, "one_row_chunk"},
        // Chunks after different contexts, a decode-like row and a fresh prompt.
        Case{4, 2, 16, 0.f, 0, {{5, 1, 3, 5}, {12, 7, 3, 5}}, "mixed"},
        Case{6, 2, 8, 0.f, 4, {{5, 2, 4}, {13, 9, 4}}, "window"},
        Case{4, 4, 16, 30.f, 3, {{4, 4}, {4, 10}}, "softcap_window_mha"}),
    [](const auto& info) { return info.param.name; });

TEST(PrefillRows, LengthsThatDoNotFitThrow) {
  auto q = at::randn({2, 4, 5, 16}), k = at::randn({2, 2, 8, 16});
  const uk::AttnParams p{0.25f};
  auto expect_error = [&](const PrefillRows& r, const std::string& needle) {
    try {
      uniattn::prefill_leader_rows(q, k, k, p, r);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const uniattn::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{5}, {8}}, "for a batch of 2");
  expect_error({{5, 6}, {8, 8}}, "row 1 has 6 queries");
  expect_error({{5, 4}, {8, 9}}, "row 1 has 4 queries and 9 keys");
  expect_error({{5, 4}, {4, 8}}, "row 0 has 5 queries and 4 keys");
  expect_error({{0, 4}, {8, 8}}, "row 0 has 0 queries");
}

}  // namespace
