// Decode attention through a paged cache (shared_softmax.h's DecodeKv): the same rows scattered
// over a pool in shuffled blocks give what the static layout gives, for leaders (with and without
// the probability row), followers, GQA, windows and blocks given back (-1); bad layouts throw
// errors that name the tensor. (On a GPU, tests/gpu/test_kernels.cpp checks the CUDA kernels'
// paged path against their static path.)
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "shared_softmax.h"
#include "uniattn/error.h"

namespace uk = uniattn::kernels;

namespace {

// A static cache [B, Hkv, S, D] and the same rows in a pool of shuffled blocks of `bs`.
struct Layout {
  at::Tensor k, v;  // static
  uk::DecodeKv paged;
};

Layout scatter(int64_t b, int64_t hkv, int64_t s, int64_t d, int64_t bs, uint32_t seed) {
  const int64_t m = s / bs, blocks = b * m + 2;  // two blocks no row uses
  std::vector<int32_t> ids(blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  Layout out;
  out.k = at::randn({b, hkv, s, d}, at::kDouble);
  out.v = at::randn({b, hkv, s, d}, at::kDouble);
  auto table = at::tensor(std::vector<int32_t>(ids.begin(), ids.begin() + b * m)).view({b, m});
  auto pool = [&](const at::Tensor& x) {
    auto p = at::full({blocks * bs, hkv, d}, NAN, at::kDouble);  // unused slots poisoned
    auto slots = (table.to(at::kLong).unsqueeze(2) * bs + at::arange(bs)).reshape({-1});
    p.index_copy_(0, slots, x.transpose(1, 2).reshape({b * s, hkv, d}));
    return p;
  };
  out.paged = {pool(out.k), pool(out.v), table, bs};
  return out;
}

// O and the probability row over [0, len) equal those of the static layout.
void expect_same_decode(const Layout& l, const at::Tensor& q, const at::Tensor& lens,
                        const uk::AttnParams& p, const std::string& what) {
  auto [o_static, p_static] = uk::decode_leader_fallback(q, l.k, l.v, lens, p);
  auto [o_paged, p_paged] = uk::decode_leader(q, l.paged, lens, p);
  EXPECT_TRUE(at::allclose(o_paged, o_static, 0, 1e-12)) << what;
  for (int64_t i = 0; i < q.size(0); ++i) {
    const int64_t n = lens[i].item<int64_t>();
    EXPECT_TRUE(at::allclose(p_paged[i].narrow(1, 0, n), p_static[i].narrow(1, 0, n), 0, 1e-12))
        << what << " row " << i;
  }
  EXPECT_TRUE(at::equal(uk::decode_attention(q, l.paged, lens, p), o_paged)) << what;
  auto f_static = uk::decode_follower_fallback(p_static, l.v, lens, q.size(1));
  auto f_paged = uk::decode_follower(p_paged, l.paged, lens, q.size(1));
  EXPECT_TRUE(at::allclose(f_paged, f_static, 0, 1e-12)) << what;
}

TEST(PagedDecode, EqualsStaticLayout) {
  at::manual_seed(3);
  const int64_t b = 3, hq = 8, hkv = 2, s = 48, d = 16;
  for (int64_t bs : {1, 4, 16}) {
    const auto l = scatter(b, hkv, s, d, bs, 7 + uint32_t(bs));
    auto q = at::randn({b, hq, 1, d}, at::kDouble);
    auto lens = at::tensor(std::vector<int32_t>{1, 30, 48});
    for (int64_t window : {0, 5}) {
      for (float cap : {0.f, 20.f}) {
        expect_same_decode(l, q, lens, {0.25f, cap, window},
                           "bs " + std::to_string(bs) + " window " + std::to_string(window));
      }
    }
  }
}

// Blocks that left every window are given back (-1) and may be reused: a windowed layer reads
// the same as before.
TEST(PagedDecode, BlocksGivenBackOutsideTheWindow) {
  at::manual_seed(4);
  auto l = scatter(2, 2, 32, 8, 4, 11);
  auto q = at::randn({2, 4, 1, 8}, at::kDouble);
  auto lens = at::tensor(std::vector<int32_t>{32, 21});
  const uk::AttnParams p{0.3f, 0.f, 6};
  auto [o_before, p_before] = uk::decode_leader(q, l.paged, lens, p);
  auto given_back = l.paged;
  given_back.block_tables = l.paged.block_tables.clone();
  given_back.block_tables[0].narrow(0, 0, 6).fill_(-1);  // keys 0..23 of row 0 (window 26..31)
  given_back.block_tables[1].narrow(0, 0, 3).fill_(-1);  // keys 0..11 of row 1 (window 15..20)
  auto [o_after, p_after] = uk::decode_leader(q, given_back, lens, p);
  EXPECT_TRUE(at::equal(o_after, o_before));
  EXPECT_TRUE(at::equal(uk::decode_follower(p_after, given_back, lens, 4),
                        uk::decode_follower(p_before, l.paged, lens, 4)));
  // The gathered keys of a given-back block are zeros, not the pool's contents.
  EXPECT_EQ(
      uk::gather_paged(given_back.v, given_back)[0].narrow(1, 0, 24).abs().sum().item<double>(),
      0.0);
}

template <typename F>
void expect_error_naming(F f, const std::string& name) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << name;
  } catch (const uniattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

TEST(PagedDecode, BadLayoutsNameTheTensor) {
  auto l = scatter(2, 2, 16, 8, 4, 1);
  auto q = at::randn({2, 4, 1, 8}, at::kDouble);
  auto lens = at::tensor(std::vector<int32_t>{3, 16});
  const uk::AttnParams p{0.3f, 0.f, 0};
  auto bad = l.paged;
  bad.block_tables = l.paged.block_tables.to(at::kLong);
  expect_error_naming([&] { uk::decode_leader(q, bad, lens, p); }, "block_tables");
  bad = l.paged;
  bad.v = l.paged.v.unsqueeze(0);
  expect_error_naming([&] { uk::decode_leader(q, bad, lens, p); }, "'v'");
  bad = l.paged;
  bad.block_size = 0;
  expect_error_naming([&] { uk::decode_attention(q, bad, lens, p); }, "block_size");
  expect_error_naming([&] { uk::decode_leader(q.narrow(0, 0, 1), l.paged, lens, p); }, "'q'");
  expect_error_naming([&] { uk::decode_leader(q, l.paged, lens.narrow(0, 0, 1), p); },
                      "cache_seqlens");
  auto p_row = at::zeros({2, 4, 15}, at::kDouble);
  expect_error_naming([&] { uk::decode_follower(p_row, l.paged, lens, 4); }, "p_row");
}

}  // namespace
