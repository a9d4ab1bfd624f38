// CUDA kernels of kernels/shared_softmax.h against an fp32 reference (the ATen fallback on upcast
// inputs, itself checked against fp64 loops in tests/attention/test_attention_reference.cpp),
// judged by the FlashAttention rule: the kernel's max abs error (bf16/fp16 in) must be at most
// twice that of the same-dtype ATen computation (matmul + softmax in bf16/fp16) plus a tiny
// epsilon. UNIATTN_KERNEL_TEST_QUICK=1 keeps only small shapes (for compute-sanitizer).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "shared_softmax.h"

namespace uk = uniattn::kernels;

namespace {

bool quick() {
  const char* e = std::getenv("UNIATTN_KERNEL_TEST_QUICK");
  return e && std::string(e) == "1";
}

// p_row [B,Hq,S] with its entries from len_b on (unspecified: the kernel leaves them as they
// were) set to 0, so rows from different calls and from the fallback compare.
at::Tensor filled(const at::Tensor& prow, const at::Tensor& lens) {
  auto kpos = at::arange(prow.size(2), prow.options().dtype(at::kLong)).reshape({1, 1, -1});
  auto in_len = kpos < lens.to(prow.device(), at::kLong).reshape({-1, 1, 1});
  return at::where(in_len, prow, at::zeros({}, prow.options()));
}

double max_err(const at::Tensor& a, const at::Tensor& ref) {
  auto d = (a.to(at::kFloat) - ref.to(at::kFloat)).abs();
  if (d.isnan().any().item<bool>()) return INFINITY;
  return d.max().item<double>();
}

// Error rule; prints one RATIO line per check for the log.
void check_rule(const std::string& what, double err_kernel, double err_ref, double eps) {
  std::printf("RATIO %s kernel_err=%.3e ref_err=%.3e ratio=%.3f\n", what.c_str(), err_kernel,
              err_ref, err_kernel / std::max(err_ref, 1e-30));
  EXPECT_LE(err_kernel, 2.0 * err_ref + eps) << what;
}

// Same-dtype ATen attention: logits, cap and softmax in the low dtype, as PyTorch eager would.
// allowed broadcasts to [B,Hkv,G,T,S]. Returns O, probabilities and lse (fp32 of low logits).
struct LowRef {
  at::Tensor out, probs, lse;
};
LowRef low_precision_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& allowed, const uk::AttnParams& p) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  auto q5 = q.reshape({B, Hkv, Hq / Hkv, T, D});
  auto logits = at::matmul(q5, k.reshape({B, Hkv, 1, S, D}).transpose(-1, -2)) * p.scale;
  if (p.softcap > 0) logits = at::tanh(logits / p.softcap) * p.softcap;
  logits = logits.masked_fill(allowed.logical_not(), -INFINITY);
  auto probs = at::softmax(logits, -1).nan_to_num(0.0);  // softmax of bf16 logits, bf16 out
  auto out = at::matmul(probs, v.reshape({B, Hkv, 1, S, D})).reshape({B, Hq, T, D});
  auto lse = at::logsumexp(logits.to(at::kFloat), {-1}).reshape({B, Hq, T});
  return {out, probs.reshape({B, Hq, T, S}), lse};
}

at::Tensor prefill_mask(int64_t T, int64_t S, int64_t window) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
  auto qpos = (at::arange(T, opts) + (S - T)).unsqueeze(1);
  auto kpos = at::arange(S, opts).unsqueeze(0);
  auto m = kpos <= qpos;
  if (window > 0) m = m.logical_and(kpos > qpos - window);
  return m;
}

struct PCase {
  int64_t B, Hq, Hkv, T, S, D;
  float softcap;
  int64_t window;
  at::ScalarType dt;
  std::string name() const {
    return "B" + std::to_string(B) + "_Hq" + std::to_string(Hq) + "_Hkv" + std::to_string(Hkv) +
           "_T" + std::to_string(T) + "_S" + std::to_string(S) + "_D" + std::to_string(D) +
           (softcap > 0 ? "_cap" : "") + (window > 0 ? "_win" + std::to_string(window) : "") +
           (dt == at::kHalf ? "_fp16" : "_bf16");
  }
};

std::vector<PCase> prefill_cases() {
  const auto bf = at::kBFloat16, hf = at::kHalf;
  if (quick()) {
    return {{1, 4, 1, 17, 17, 64, 0.f, 0, bf},
            {2, 4, 2, 5, 33, 128, 30.f, 0, hf},
            {1, 8, 1, 70, 70, 256, 0.f, 16, bf},
            {1, 2, 2, 1, 1, 128, 0.f, 0, bf}};
  }
  return {
      {1, 4, 4, 1, 1, 64, 0.f, 0, bf},           {7, 4, 1, 17, 17, 128, 0.f, 0, bf},
      {1, 8, 1, 1000, 1000, 64, 0.f, 0, bf},     {1, 8, 2, 1000, 1000, 128, 50.f, 0, bf},
      {2, 8, 1, 1000, 1000, 256, 0.f, 0, hf},    {1, 8, 8, 4097, 4097, 128, 0.f, 0, bf},
      {1, 4, 1, 4097, 4097, 256, 30.f, 512, bf}, {1, 8, 1, 4097, 4097, 64, 0.f, 1000, hf},
      {7, 8, 2, 17, 1000, 128, 0.f, 0, bf},      {7, 4, 4, 100, 4097, 64, 50.f, 100, bf},
      {2, 16, 2, 333, 777, 256, 0.f, 64, bf},    {1, 32, 8, 1000, 1000, 128, 0.f, 0, bf},
  };
}

class PrefillKernel : public ::testing::TestWithParam<size_t> {};

TEST_P(PrefillKernel, LeaderAndFollowerMeetErrorRule) {
  SKIP_WITHOUT_GPU();
  const auto cases = prefill_cases();
  if (GetParam() >= cases.size()) GTEST_SKIP() << "not in this shape set";
  const PCase c = cases[GetParam()];
  at::manual_seed(100 + GetParam());
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(c.dt);
  auto q = at::randn({c.B, c.Hq, c.T, c.D}, opt), k = at::randn({c.B, c.Hkv, c.S, c.D}, opt);
  auto v = at::randn({c.B, c.Hkv, c.S, c.D}, opt), v2 = at::randn({c.B, c.Hkv, c.S, c.D}, opt);
  const uk::AttnParams p{static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.D))), c.softcap,
                         c.window};
  ASSERT_TRUE(uk::cuda_kernel_supports(q));
  auto [o, lse] = uk::prefill_leader(q, k, v, p);
  auto of = uk::prefill_follower(q, k, lse, v2, p);
  auto [ref_o, ref_lse] =
      uk::prefill_leader_fallback(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), p);
  auto ref_of = uk::prefill_follower_fallback(q.to(at::kFloat), k.to(at::kFloat), ref_lse,
                                              v2.to(at::kFloat), p);
  auto mask = prefill_mask(c.T, c.S, c.window);
  auto low = low_precision_attention(q, k, v, mask, p);
  auto low_f = low_precision_attention(q, k, v2, mask, p);
  check_rule(c.name() + " leader_O", max_err(o, ref_o), max_err(low.out, ref_o), 1e-5);
  check_rule(c.name() + " leader_lse", max_err(lse, ref_lse), max_err(low.lse, ref_lse), 1e-4);
  check_rule(c.name() + " follower_O", max_err(of, ref_of), max_err(low_f.out, ref_of), 1e-5);
  if (c.softcap == 0.f && c.window == 0 && c.T <= c.S) {
    // prefill_leader may have taken PyTorch's attention (a chunk T < S: two calls merged by
    // lse): check ours on its own too, and a
    // follower of ours fed by the library's lse (and vice versa) against the same references.
    auto [oc, lsec] = uk::prefill_leader_custom(q, k, v, p);
    auto ofc = uk::prefill_follower_custom(q, k, lse, v2, p);
    check_rule(c.name() + " custom_leader_O", max_err(oc, ref_o), max_err(low.out, ref_o), 1e-5);
    check_rule(c.name() + " custom_leader_lse", max_err(lsec, ref_lse), max_err(low.lse, ref_lse),
               1e-4);
    check_rule(c.name() + " custom_follower_O", max_err(ofc, ref_of), max_err(low_f.out, ref_of),
               1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillKernel, ::testing::Range<size_t>(0, 12));

TEST(PrefillLibrary, ReportsItsPath) {
  SKIP_WITHOUT_GPU();
  std::printf("prefill library path: %s\n", uk::prefill_library_status().c_str());
  EXPECT_FALSE(uk::prefill_library_status().empty());
}

struct DCase {
  int64_t B, Hq, Hkv, Smax, D;
  std::vector<int32_t> lens;
  float softcap;
  int64_t window;
  at::ScalarType dt;
};

std::vector<DCase> decode_cases() {
  const auto bf = at::kBFloat16, hf = at::kHalf;
  if (quick()) {
    return {{2, 8, 2, 300, 128, {300, 17}, 0.f, 0, bf},
            {1, 4, 4, 65, 64, {1}, 30.f, 8, hf},
            {2, 16, 1, 100, 256, {99, 64}, 0.f, 0, bf}};
  }
  return {
      {1, 4, 4, 1, 64, {1}, 0.f, 0, bf},
      {7, 32, 8, 4097, 128, {1, 17, 1000, 4097, 5, 333, 64}, 0.f, 0, bf},
      {7, 16, 2, 1000, 256, {999, 1, 17, 500, 1000, 2, 64}, 50.f, 0, bf},
      {7, 32, 1, 4097, 64, {4097, 4000, 17, 1, 1024, 2048, 3000}, 0.f, 256, hf},
      {1, 16, 8, 17, 128, {17}, 30.f, 4, bf},
      {2, 24, 2, 1000, 128, {1000, 17}, 0.f, 0, bf},  // 12 query heads per KV head: 2 sub-groups
      {1, 32, 8, 32768, 128, {30000}, 0.f, 0, bf},
      // Filled length far below the capacity, 16-byte p_row rows (S % 4 == 0): whole chunks of
      // the combine pass past len, lengths ending inside a chunk and inside a 4-float group.
      {3, 8, 2, 8192, 128, {100, 1027, 3}, 0.f, 64, bf},
      {2, 32, 8, 16384, 128, {513, 4096}, 0.f, 0, bf},
  };
}

class DecodeKernel : public ::testing::TestWithParam<size_t> {};

TEST_P(DecodeKernel, LeaderAndFollowerMeetErrorRule) {
  SKIP_WITHOUT_GPU();
  const auto cases = decode_cases();
  if (GetParam() >= cases.size()) GTEST_SKIP() << "not in this shape set";
  const DCase c = cases[GetParam()];
  at::manual_seed(200 + GetParam());
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(c.dt);
  auto q = at::randn({c.B, c.Hq, 1, c.D}, opt);
  auto kc = at::randn({c.B, c.Hkv, c.Smax, c.D}, opt),
       vc = at::randn({c.B, c.Hkv, c.Smax, c.D}, opt);
  auto v2 = at::randn({c.B, c.Hkv, c.Smax, c.D}, opt);
  for (int64_t b = 0; b < c.B; ++b) {  // poison the unused cache slots
    for (auto* t : {&kc, &vc, &v2}) {
      t->select(0, b).narrow(1, c.lens[b], c.Smax - c.lens[b]).fill_(NAN);
    }
  }
  auto lens = at::tensor(c.lens, at::kInt).to(at::kCUDA);
  const uk::AttnParams p{static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.D))), c.softcap,
                         c.window};
  auto [o, prow] = uk::decode_leader(q, kc, vc, lens, p);
  auto of = uk::decode_follower(prow, v2, lens, c.Hq);
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
  auto [ref_o, ref_p] = uk::decode_leader_fallback(f32(q), f32(kc), f32(vc), lens, p);
  auto ref_of = uk::decode_follower_fallback(ref_p, f32(v2), lens, c.Hq);

  auto opts_l = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
  auto len5 = lens.to(at::kLong).reshape({c.B, 1, 1, 1, 1});
  auto kpos = at::arange(c.Smax, opts_l).reshape({1, 1, 1, 1, c.Smax});
  auto allowed = kpos < len5;
  if (c.window > 0) allowed = allowed.logical_and(kpos > len5 - 1 - c.window);
  auto in_len = kpos < len5;
  auto zero = at::zeros({}, opt);
  auto clean = [&](const at::Tensor& t) {  // the low-precision reference must not see the poison
    return at::where(in_len.reshape({c.B, 1, c.Smax, 1}), t, zero);
  };
  auto low = low_precision_attention(q, clean(kc), clean(vc), allowed, p);
  auto low_f = at::matmul(low.probs.reshape({c.B, c.Hkv, c.Hq / c.Hkv, 1, c.Smax}),
                          clean(v2).reshape({c.B, c.Hkv, 1, c.Smax, c.D}))
                   .reshape({c.B, c.Hq, 1, c.D});
  const std::string name = "decode_B" + std::to_string(c.B) + "_Hq" + std::to_string(c.Hq) +
                           "_Hkv" + std::to_string(c.Hkv) + "_S" + std::to_string(c.Smax) + "_D" +
                           std::to_string(c.D) + (c.softcap > 0 ? "_cap" : "") +
                           (c.window > 0 ? "_win" : "");
  check_rule(name + " leader_O", max_err(o, ref_o), max_err(low.out, ref_o), 1e-5);
  check_rule(name + " p_row", max_err(filled(prow, lens), ref_p),
             max_err(low.probs.reshape({c.B, c.Hq, c.Smax}), ref_p), 1e-6);
  check_rule(name + " follower_O", max_err(of, ref_of), max_err(low_f, ref_of), 1e-5);
  // Probabilities are exactly zero in [0, len) outside the window [len - window, len).
  auto in_len3 = in_len.reshape({c.B, 1, c.Smax}).expand_as(prow);
  auto outside = allowed.logical_not().reshape({c.B, 1, c.Smax}).expand_as(prow);
  EXPECT_EQ(prow.masked_select(outside.logical_and(in_len3)).abs().sum().item<float>(), 0.f);
  // Without a probability row the same kernel gives the same O, bit for bit.
  auto plain = uk::decode_attention(q, kc, vc, lens, p);
  EXPECT_TRUE(at::equal(plain, o)) << name << " decode_attention != decode_leader O";
  // Only the filled length of p_row is written and read: into a NaN-poisoned buffer the leader
  // writes the same [0, len) and leaves the rest NaN, and the follower reading it gives the same
  // O bit for bit.
  auto poisoned = at::full_like(prow, NAN);
  auto o2 = at::empty_like(o), of2 = at::empty_like(of);
  uk::decode_leader_out(q, kc, vc, lens, p, o2, poisoned);
  uk::decode_follower_out(poisoned, v2, lens, c.Hq, of2);
  EXPECT_TRUE(at::equal(o2, o)) << name;
  EXPECT_TRUE(at::equal(of2, of)) << name << " follower read p_row past len";
  EXPECT_TRUE(at::equal(filled(poisoned, lens), filled(prow, lens))) << name;
  EXPECT_TRUE(poisoned.masked_select(in_len3.logical_not()).isnan().all().item<bool>())
      << name << " leader wrote p_row past len";
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeKernel, ::testing::Range<size_t>(0, 9));

// The paged path of the decode kernels (K/V read through block tables, vLLM's layout) computes
// what the static path computes, bit for bit: each case's caches (capacity rounded up to blocks of
// 16) scattered over pools in shuffled blocks whose other slots are NaN (and those past each
// length; blocks below a window given back as -1). The static path meets
// the error rule above.
class PagedDecodeKernel : public ::testing::TestWithParam<size_t> {};

TEST_P(PagedDecodeKernel, EqualsStaticKernel) {
  SKIP_WITHOUT_GPU();
  const auto cases = decode_cases();
  if (GetParam() >= cases.size()) GTEST_SKIP() << "not in this shape set";
  const DCase c = cases[GetParam()];
  const int64_t bs = 16, m = (c.Smax + bs - 1) / bs, s = m * bs, blocks = c.B * m + 3;
  at::manual_seed(300 + GetParam());
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(c.dt);
  auto q = at::randn({c.B, c.Hq, 1, c.D}, opt);
  auto order = at::randperm(blocks, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
  auto table = order.narrow(0, 0, c.B * m).view({c.B, m});
  auto slots = (table.unsqueeze(2) * bs + at::arange(bs, table.options())).reshape({-1});
  auto to_pool = [&](const at::Tensor& x) {  // x [B, Hkv, S, D]
    auto pool = at::full({blocks * bs, c.Hkv, c.D}, NAN, opt);
    pool.index_copy_(0, slots, x.transpose(1, 2).reshape({c.B * s, c.Hkv, c.D}));
    return pool;
  };
  auto kc = at::randn({c.B, c.Hkv, s, c.D}, opt), vc = at::randn({c.B, c.Hkv, s, c.D}, opt);
  auto v2 = at::randn({c.B, c.Hkv, s, c.D}, opt);
  // Slots of positions at or past each row's length hold NaN in the pools, and with a window
  // the blocks wholly below it are given back (-1), as the serving engine leaves them: neither
  // may be read.
  auto pos = at::arange(s, table.options()).view({1, s});
  auto lens_l = at::tensor(std::vector<int64_t>(c.lens.begin(), c.lens.end())).to(at::kCUDA);
  auto past = (pos >= lens_l.view({-1, 1})).reshape({-1});
  auto gone = at::zeros({c.B, m}, table.options().dtype(at::kBool));
  if (c.window > 0) {
    auto first = (lens_l - c.window).clamp_min(0).view({-1, 1});  // oldest key in the window
    gone = (at::arange(m, table.options()).view({1, m}) + 1) * bs <= first;
  }
  auto poison = [&](at::Tensor pool) {
    pool.index_fill_(0, slots.masked_select(past), NAN);
    return pool;
  };
  auto tables = at::where(gone, at::full({}, -1, table.options()), table).to(at::kInt);
  const uk::DecodeKv kv{poison(to_pool(kc)), poison(to_pool(vc)), tables, bs};
  const uk::DecodeKv kv2{{}, poison(to_pool(v2)), tables, bs};
  auto lens = at::tensor(c.lens, at::kInt).to(at::kCUDA);
  const uk::AttnParams p{static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.D))), c.softcap,
                         c.window};
  auto [o, prow] = uk::decode_leader(q, kc, vc, lens, p);
  auto [po, pprow] = uk::decode_leader(q, kv, lens, p);
  const std::string name = "paged case " + std::to_string(GetParam());
  EXPECT_TRUE(at::equal(po, o)) << name << " leader O";
  EXPECT_TRUE(at::equal(filled(pprow, lens), filled(prow, lens))) << name << " p_row";
  EXPECT_TRUE(at::equal(uk::decode_attention(q, kv, lens, p), o)) << name << " plain O";
  EXPECT_TRUE(at::equal(uk::decode_follower(pprow, kv2, lens, c.Hq),
                        uk::decode_follower(prow, v2, lens, c.Hq)))
      << name << " follower O";
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedDecodeKernel, ::testing::Range<size_t>(0, 9));

// Decode must replay from a CUDA graph with new device-side lengths and no recapture.
TEST(DecodeGraph, ReplayFollowsDeviceLengths) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(5);
  const int64_t B = 3, Hq = 8, Hkv = 2, S = 2048, D = 128;
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  auto q = at::randn({B, Hq, 1, D}, opt), kc = at::randn({B, Hkv, S, D}, opt);
  auto vc = at::randn({B, Hkv, S, D}, opt), v2 = at::randn({B, Hkv, S, D}, opt);
  auto lens = at::tensor(std::vector<int32_t>{5, 100, 2048}, at::kInt).to(at::kCUDA);
  auto out = at::empty({B, Hq, 1, D}, opt), fout = at::empty({B, Hq, 1, D}, opt);
  auto prow = at::empty({B, Hq, S}, opt.dtype(at::kFloat));
  const uk::AttnParams p{0.088f, 0.f, 0};
  auto stream = c10::cuda::getStreamFromPool();
  {
    c10::cuda::CUDAStreamGuard sg(stream);
    uk::decode_leader_out(q, kc, vc, lens, p, out, prow);  // warm-up outside the capture
    uk::decode_follower_out(prow, v2, lens, Hq, fout);
    stream.synchronize();
    at::cuda::CUDAGraph graph;
    graph.capture_begin();
    uk::decode_leader_out(q, kc, vc, lens, p, out, prow);
    uk::decode_follower_out(prow, v2, lens, Hq, fout);
    graph.capture_end();
    for (const auto& new_lens :
         {std::vector<int32_t>{1, 2000, 77}, std::vector<int32_t>{64, 3, 1}}) {
      lens.copy_(at::tensor(new_lens, at::kInt));
      graph.replay();
      stream.synchronize();
      auto [eo, ep] = uk::decode_leader(q, kc, vc, lens, p);
      auto ef = uk::decode_follower(ep, v2, lens, Hq);
      EXPECT_TRUE(at::equal(out, eo));
      EXPECT_TRUE(at::equal(filled(prow, lens), filled(ep, lens)));
      EXPECT_TRUE(at::equal(fout, ef));
    }
  }
}

// Unsupported head_dim / dtype on CUDA take the fallback and still give the right answer.
TEST(Dispatch, UnsupportedShapesFallBack) {
  SKIP_WITHOUT_GPU();
  auto opt = at::TensorOptions().device(at::kCUDA);
  auto q = at::randn({1, 4, 9, 96}, opt.dtype(at::kBFloat16));
  auto k = at::randn({1, 2, 9, 96}, opt.dtype(at::kBFloat16)), v = at::randn_like(k);
  EXPECT_FALSE(uk::cuda_kernel_supports(q));
  EXPECT_FALSE(uk::cuda_kernel_supports(q.to(at::kFloat)));
  const uk::AttnParams p{0.1f};
  auto [o, l] = uk::prefill_leader(q, k, v, p);
  auto [o2, l2] = uk::prefill_leader_fallback(q, k, v, p);
  EXPECT_TRUE(at::equal(o, o2));
}

}  // namespace
