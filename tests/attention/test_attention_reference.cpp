// The ATen fallbacks of kernels/shared_softmax.h (the path every CPU build and every unsupported
// dtype/head_dim takes) against an independent fp64 implementation written with plain loops.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "shared_softmax.h"
#include "uniattn/error.h"

namespace uk = uniattn::kernels;

namespace {

std::vector<double> to_vec(const at::Tensor& t) {
  auto c = t.to(at::kDouble).contiguous().cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

struct Shape {
  int64_t B, Hq, Hkv, T, S, D;
};

// Loop oracle. Query t of (b, h) sits at position qpos(b, t) and sees keys j < klen(b) with
// j <= qpos and qpos - window < j. With lse_in, p = exp(logit - lse_in) (follower); otherwise the
// row is normalised and lse_out / probs_out receive the row log-sum-exp and probabilities.
struct Oracle {
  Shape s;
  double scale, softcap;
  int64_t window;
  std::vector<int64_t> qpos0;  // position of query 0 per batch
  std::vector<int64_t> klen;   // valid keys per batch
  std::vector<double> out, lse, probs;

  void run(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
           const std::vector<double>* lse_in) {
    const auto [B, Hq, Hkv, T, S, D] = s;
    out.assign(B * Hq * T * D, 0.0);
    lse.assign(B * Hq * T, 0.0);
    probs.assign(B * Hq * T * S, 0.0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / (Hq / Hkv);
        for (int64_t t = 0; t < T; ++t) {
          const int64_t qp = qpos0[b] + t, row = (b * Hq + h) * T + t;
          std::vector<double> logit(S, -std::numeric_limits<double>::infinity());
          double mx = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < klen[b]; ++j) {
            if (j > qp || (window > 0 && j <= qp - window)) continue;
            double d = 0;
            for (int64_t e = 0; e < D; ++e) {
              d += q[row * D + e] * k[((b * Hkv + hk) * S + j) * D + e];
            }
            d *= scale;
            if (softcap > 0) d = softcap * std::tanh(d / softcap);
            logit[j] = d;
            mx = std::max(mx, d);
          }
          double sum = 0;
          for (int64_t j = 0; j < S; ++j)
            sum += std::isinf(logit[j]) ? 0.0 : std::exp(logit[j] - mx);
          const double l = lse_in ? (*lse_in)[row] : mx + std::log(sum);
          lse[row] = l;
          for (int64_t j = 0; j < S; ++j) {
            if (std::isinf(logit[j])) continue;
            const double p = std::exp(logit[j] - l);
            probs[row * S + j] = p;
            for (int64_t e = 0; e < D; ++e) {
              out[row * D + e] += p * v[((b * Hkv + hk) * S + j) * D + e];
            }
          }
        }
      }
    }
  }
};

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

struct Case {
  Shape s;
  float softcap;
  int64_t window;
};

class PrefillFallback : public ::testing::TestWithParam<Case> {};

TEST_P(PrefillFallback, LeaderAndFollowerMatchLoops) {
  const Case c = GetParam();
  const auto [B, Hq, Hkv, T, S, D] = c.s;
  at::manual_seed(1234 + T * 7 + S);
  auto q = at::randn({B, Hq, T, D}), k = at::randn({B, Hkv, S, D});
  auto v = at::randn({B, Hkv, S, D}), v2 = at::randn({B, Hkv, S, D});
  const uk::AttnParams p{static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), c.softcap,
                         c.window};
  auto [o, lse] = uk::prefill_leader(q, k, v, p);
  ASSERT_EQ(o.sizes(), q.sizes());
  ASSERT_EQ(lse.sizes(), (std::vector<int64_t>{B, Hq, T}));
  EXPECT_EQ(lse.scalar_type(), at::kFloat);

  Oracle ref{c.s,
             static_cast<double>(p.scale),
             c.softcap,
             c.window,
             std::vector<int64_t>(B, S - T),
             std::vector<int64_t>(B, S),
             {},
             {},
             {}};
  ref.run(to_vec(q), to_vec(k), to_vec(v), nullptr);
  EXPECT_LT(max_abs_diff(to_vec(o), ref.out), 2e-5);
  EXPECT_LT(max_abs_diff(to_vec(lse), ref.lse), 2e-5);

  // Follower with the leader's q, k, lse and its own V == attention(q, k, v2) == P_leader . v2.
  auto of = uk::prefill_follower(q, k, lse, v2, p);
  Oracle ref2 = ref;
  ref2.run(to_vec(q), to_vec(k), to_vec(v2), nullptr);
  EXPECT_LT(max_abs_diff(to_vec(of), ref2.out), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PrefillFallback,
    ::testing::Values(Case{{1, 1, 1, 1, 1, 8}, 0.f, 0}, Case{{2, 4, 2, 5, 5, 8}, 0.f, 0},
                      Case{{2, 4, 2, 3, 7, 5}, 0.f, 0}, Case{{1, 6, 2, 9, 13, 16}, 3.f, 0},
                      Case{{2, 8, 2, 7, 7, 4}, 0.f, 3}, Case{{1, 3, 1, 4, 10, 6}, 2.f, 4},
                      Case{{3, 8, 1, 6, 11, 3}, 0.f, 1}));

TEST(PrefillFallbackDtypes, DoubleIsExactAndBf16Works) {
  at::manual_seed(7);
  const Shape s{1, 4, 2, 6, 9, 16};
  auto q = at::randn({1, 4, 6, 16}, at::kDouble), k = at::randn({1, 2, 9, 16}, at::kDouble);
  auto v = at::randn({1, 2, 9, 16}, at::kDouble);
  const uk::AttnParams p{0.25f, 5.f, 4};
  auto [o, lse] = uk::prefill_leader(q, k, v, p);
  EXPECT_EQ(o.scalar_type(), at::kDouble);
  Oracle ref{s, 0.25, 5.0, 4, {3}, {9}, {}, {}, {}};
  ref.run(to_vec(q), to_vec(k), to_vec(v), nullptr);
  EXPECT_LT(max_abs_diff(to_vec(o), ref.out), 1e-12);
  EXPECT_LT(max_abs_diff(to_vec(lse), ref.lse), 1e-5);  // lse is returned in fp32

  auto [ob, lseb] =
      uk::prefill_leader(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16), p);
  EXPECT_EQ(ob.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_abs_diff(to_vec(ob), ref.out), 0.05);
}

TEST(PrefillFallbackDispatch, CpuTensorsTakeTheFallback) {
  at::manual_seed(3);
  auto q = at::randn({2, 4, 8, 64}), k = at::randn({2, 2, 8, 64}), v = at::randn({2, 2, 8, 64});
  const uk::AttnParams p{0.125f, 0.f, 0};
  EXPECT_FALSE(uk::cuda_kernel_supports(q));
  auto [o1, l1] = uk::prefill_leader(q, k, v, p);
  auto [o2, l2] = uk::prefill_leader_fallback(q, k, v, p);
  EXPECT_TRUE(at::equal(o1, o2));
  EXPECT_TRUE(at::equal(l1, l2));
}

TEST(DecodeFallback, MatchesLoopsAndPrefillAtLastPosition) {
  at::manual_seed(11);
  const int64_t B = 3, Hq = 8, Hkv = 2, Smax = 12, D = 8;
  for (const auto& [softcap, window] : std::vector<std::pair<float, int64_t>>{{0.f, 0}, {4.f, 5}}) {
    const uk::AttnParams p{0.35f, softcap, window};
    auto q = at::randn({B, Hq, 1, D});
    auto kc = at::randn({B, Hkv, Smax, D}), vc = at::randn({B, Hkv, Smax, D});
    auto v2 = at::randn({B, Hkv, Smax, D});
    const std::vector<int64_t> lens{12, 1, 7};
    // Slots past len_b are garbage (NaN): they must not reach the result.
    for (int64_t b = 0; b < B; ++b) {
      for (auto* t : {&kc, &vc, &v2}) t->select(0, b).narrow(1, lens[b], Smax - lens[b]).fill_(NAN);
    }
    auto seqlens = at::tensor(std::vector<int32_t>(lens.begin(), lens.end()), at::kInt);
    auto [o, prow] = uk::decode_leader(q, kc, vc, seqlens, p);
    ASSERT_EQ(o.sizes(), q.sizes());
    ASSERT_EQ(prow.sizes(), (std::vector<int64_t>{B, Hq, Smax}));

    std::vector<int64_t> qpos0(B);
    for (int64_t b = 0; b < B; ++b) qpos0[b] = lens[b] - 1;
    Oracle ref{{B, Hq, Hkv, 1, Smax, D}, 0.35, softcap, window, qpos0, lens, {}, {}, {}};
    ref.run(to_vec(q), to_vec(kc), to_vec(vc), nullptr);
    EXPECT_LT(max_abs_diff(to_vec(o), ref.out), 2e-5);
    EXPECT_LT(max_abs_diff(to_vec(prow), ref.probs), 2e-6);  // includes zeros past len_b

    auto of = uk::decode_follower(prow, v2, seqlens, Hq);
    Oracle ref2 = ref;
    ref2.run(to_vec(q), to_vec(kc), to_vec(v2), nullptr);
    EXPECT_LT(max_abs_diff(to_vec(of), ref2.out), 2e-5);

    // Decode at position len-1 == prefill's last query over keys [0, len).
    for (int64_t b = 0; b < B; ++b) {
      auto qb = q.narrow(0, b, 1), kb = kc.narrow(0, b, 1).narrow(2, 0, lens[b]);
      auto vb = vc.narrow(0, b, 1).narrow(2, 0, lens[b]);
      auto [op, lp] = uk::prefill_leader(qb, kb, vb, p);
      EXPECT_LT((op - o.narrow(0, b, 1)).abs().max().item<double>(), 1e-5) << "batch " << b;
      auto fp = uk::prefill_follower(qb, kb, lp, v2.narrow(0, b, 1).narrow(2, 0, lens[b]), p);
      EXPECT_LT((fp - of.narrow(0, b, 1)).abs().max().item<double>(), 1e-5) << "batch " << b;
    }
    // The _out variants write the same values into caller buffers.
    auto o_buf = at::empty_like(o), p_buf = at::empty_like(prow), f_buf = at::empty_like(of);
    uk::decode_leader_out(q, kc, vc, seqlens, p, o_buf, p_buf);
    uk::decode_follower_out(p_buf, v2, seqlens, Hq, f_buf);
    EXPECT_TRUE(at::equal(o_buf, o));
    EXPECT_TRUE(at::equal(p_buf, prow));
    EXPECT_TRUE(at::equal(f_buf, of));
  }
}

TEST(DecodeFallback, ZeroLengthGivesZeros) {
  auto q = at::randn({1, 2, 1, 4}), kc = at::randn({1, 1, 5, 4}), vc = at::randn({1, 1, 5, 4});
  auto [o, prow] = uk::decode_leader(q, kc, vc, at::zeros({1}, at::kInt), uk::AttnParams{1.f});
  EXPECT_EQ(o.abs().max().item<float>(), 0.f);
  EXPECT_EQ(prow.abs().max().item<float>(), 0.f);
}

TEST(KernelErrors, BadInputsThrowUniattnError) {
  auto q = at::randn({1, 4, 3, 8}), k = at::randn({1, 2, 5, 8}), v = at::randn({1, 2, 5, 8});
  const uk::AttnParams p{0.5f};
  EXPECT_THROW(uk::prefill_leader(q.squeeze(0), k, v, p), uniattn::Error);
  EXPECT_THROW(uk::prefill_leader(at::randn({1, 3, 3, 8}), k, v, p), uniattn::Error);  // 3 % 2
  EXPECT_THROW(uk::prefill_leader(at::randn({1, 4, 6, 8}), k, v, p), uniattn::Error);  // T > S
  EXPECT_THROW(uk::prefill_leader(q, k, at::randn({1, 2, 4, 8}), p), uniattn::Error);
  EXPECT_THROW(uk::prefill_leader(q, k.to(at::kDouble), v, p), uniattn::Error);
  EXPECT_THROW(uk::prefill_leader(q.to(at::kInt), k, v, p), uniattn::Error);
  EXPECT_THROW(uk::prefill_leader(q, k, v, uk::AttnParams{0.5f, -1.f, 0}), uniattn::Error);
  EXPECT_THROW(uk::prefill_leader(q, k, v, uk::AttnParams{0.5f, 0.f, -2}), uniattn::Error);
  EXPECT_THROW(uk::prefill_follower(q, k, at::zeros({1, 4, 2}), v, p), uniattn::Error);
  EXPECT_THROW(uk::prefill_follower(q, k, at::zeros({1, 4, 3}, at::kDouble), v, p), uniattn::Error);
  auto qd = at::randn({1, 4, 1, 8});
  EXPECT_THROW(uk::decode_leader(qd, k, v, at::ones({2}, at::kInt), p), uniattn::Error);
  EXPECT_THROW(uk::decode_leader(qd, k, v, at::ones({1}, at::kFloat), p), uniattn::Error);
  EXPECT_THROW(uk::decode_leader(q, k, v, at::ones({1}, at::kInt), p), uniattn::Error);  // T != 1
  EXPECT_THROW(uk::decode_follower(at::zeros({1, 4, 4}), v, at::ones({1}, at::kInt), 4),
               uniattn::Error);
  EXPECT_THROW(uk::decode_follower(at::zeros({1, 3, 5}), v, at::ones({1}, at::kInt), 3),
               uniattn::Error);
  auto bad_out = at::empty({1, 4, 1, 7});
  auto prow = at::empty({1, 4, 5});
  EXPECT_THROW(uk::decode_leader_out(qd, k, v, at::ones({1}, at::kInt), p, bad_out, prow),
               uniattn::Error);
}

}  // namespace
