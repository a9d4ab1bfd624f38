// The small fused CUDA ops (kernels/fused_ops.cu) against the ATen expressions they replace
// (src/model/layers.cpp) and an fp64 reference, under the FlashAttention rule: the kernel's max
// error vs fp64 is at most twice that of the same-dtype ATen computation (plus a tiny epsilon).
// The kernels round where ATen rounds, so they must also agree with ATen almost bit for bit.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cuda_hooks.h"
#include "gpu/gpu_test_util.h"
#include "model/layers.h"
#include "shared_softmax.h"
#include "train/cross_entropy.h"
#include "uniattn/model/kernel_paths.h"

namespace {

using uniattn::Activation;

double max_err(const at::Tensor& a, const at::Tensor& ref) {
  auto d = (a.to(at::kDouble) - ref.to(at::kDouble)).abs();
  if (d.isnan().any().item<bool>()) return INFINITY;
  return d.max().item<double>();
}

// Fraction of elements where the two tensors differ at all.
double mismatch_fraction(const at::Tensor& a, const at::Tensor& b) {
  return (a != b).to(at::kDouble).mean().item<double>();
}

// `same_rounding`: the op has no reduction, or the dtype is coarse enough that the fp32 sum order
// of RMSNorm vanishes in the final rounding; then fused and ATen must agree bit for bit except
// for rare last-ulp differences of exp/tanh.
void check_rule(const std::string& what, const at::Tensor& fused, const at::Tensor& aten,
                const at::Tensor& ref, bool same_rounding = true) {
  const double ek = max_err(fused, ref), ea = max_err(aten, ref);
  const double mism = mismatch_fraction(fused, aten);
  std::printf("RATIO %s kernel_err=%.3e aten_err=%.3e ratio=%.3f mismatch=%.2e\n", what.c_str(), ek,
              ea, ek / std::max(ea, 1e-30), mism);
  EXPECT_LE(ek, 2.0 * ea + 1e-6) << what;
  // Same rounding points: only the sum-of-squares order (RMSNorm) or a last-ulp exp/tanh may
  // differ.
  if (same_rounding) {
    EXPECT_LE(mism, 0.01) << what;
  }
}

const std::vector<at::ScalarType> kDtypes = {at::kBFloat16, at::kHalf, at::kFloat};

std::string name(at::ScalarType t) { return c10::toString(t); }

at::TensorOptions cuda(at::ScalarType t) { return at::TensorOptions().dtype(t).device(at::kCUDA); }

// fp64 RMSNorm of the (already rounded) input.
at::Tensor rms_ref(const at::Tensor& x, const at::Tensor& w, double eps, bool plus_one) {
  auto xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  auto n = xd * at::rsqrt(xd.pow(2).mean(-1, true) + eps);
  return plus_one ? n * (1.0 + wd) : n * wd;
}

TEST(FusedOps, RmsNormMatchesAtenAndRule) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(0);
  for (auto dt : kDtypes)
    for (int64_t rows : {1, 7, 4097})
      for (int64_t n : {64, 576, 2304, 4096})
        for (bool plus_one : {false, true}) {
          auto x = (at::randn({rows, n}, cuda(at::kFloat)) * 3).to(dt);
          auto w = (at::randn({n}, cuda(at::kFloat)) * 0.5 + (plus_one ? 0 : 1)).to(dt);
          const std::string what = "rms_norm/" + name(dt) + "/rows=" + std::to_string(rows) +
                                   "/n=" + std::to_string(n) + (plus_one ? "/gemma" : "/llama");
          at::NoGradGuard ng;
          auto fused = uniattn::rms_norm(x, w, 1e-6, plus_one);
          auto aten = uniattn::rms_norm_aten(x, w, 1e-6, plus_one);
          ASSERT_EQ(fused.sizes(), aten.sizes());
          ASSERT_EQ(fused.scalar_type(), dt);
          check_rule(what, fused, aten, rms_ref(x, w, 1e-6, plus_one), dt != at::kFloat);
        }
}

TEST(FusedOps, AddRmsNormReturnsExactResidual) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(1);
  for (auto dt : kDtypes)
    for (int64_t rows : {1, 33}) {
      const int64_t n = 4096;
      auto x = at::randn({1, rows, n}, cuda(at::kFloat)).to(dt);
      auto d = at::randn({1, rows, n}, cuda(at::kFloat)).to(dt);
      auto w = at::randn({n}, cuda(at::kFloat)).to(dt);
      at::NoGradGuard ng;
      auto [h, normed] = uniattn::add_rms_norm(x, d, w, 1e-5, false);
      auto h_aten = x + d;
      EXPECT_TRUE(at::equal(h, h_aten)) << name(dt);  // one rounding of x + d, as ATen
      check_rule("add_rms_norm/" + name(dt) + "/rows=" + std::to_string(rows), normed,
                 uniattn::rms_norm_aten(h_aten, w, 1e-5, false), rms_ref(h_aten, w, 1e-5, false),
                 dt != at::kFloat);
    }
}

// Rotary tables as the model builds them (fp32 angles, cast to the dtype).
std::pair<at::Tensor, at::Tensor> tables(int64_t batch, int64_t t, int64_t d, at::ScalarType dt,
                                         int64_t first_pos) {
  auto inv = 1.0 / at::pow(10000.0, at::arange(0, d, 2, cuda(at::kFloat)) / static_cast<double>(d));
  auto pos = at::arange(first_pos, first_pos + t, cuda(at::kLong)).unsqueeze(0).expand({batch, t});
  return uniattn::rope_tables(inv, pos, dt);
}

at::Tensor rotary_ref(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto xd = x.to(at::kDouble);
  const int64_t half = x.size(-1) / 2;
  auto rot = at::cat({-xd.narrow(-1, half, half), xd.narrow(-1, 0, half)}, -1);
  return xd * cos.to(at::kDouble) + rot * sin.to(at::kDouble);
}

TEST(FusedOps, RotaryOnProjectionViews) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(2);
  for (auto dt : kDtypes)
    for (int64_t d : {64, 128, 256})
      for (auto [b, h, t] :
           std::vector<std::array<int64_t, 3>>{{1, 32, 1}, {7, 3, 17}, {2, 8, 1000}}) {
        // A linear output [B, T, H*D] viewed as [B, H, T, D]: strided, as the model passes it.
        auto lin = at::randn({b, t, h * d}, cuda(at::kFloat)).to(dt);
        auto x = lin.view({b, t, h, d}).transpose(1, 2);
        auto [cos, sin] = tables(b, t, d, dt, 5);
        at::NoGradGuard ng;
        auto fused = uniattn::apply_rotary(x, cos, sin);
        auto aten = uniattn::apply_rotary_aten(x, cos, sin);
        check_rule("rotary/" + name(dt) + "/D=" + std::to_string(d) + "/B=" + std::to_string(b) +
                       "/T=" + std::to_string(t),
                   fused, aten, rotary_ref(x, cos, sin));
      }
}

TEST(FusedOps, RotaryIntoCacheSlot) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(3);
  for (auto dt : kDtypes) {
    const int64_t b = 3, h = 8, d = 128, s_max = 40;
    auto cache = at::randn({b, h, s_max, d}, cuda(at::kFloat)).to(dt);
    auto before = cache.clone();
    auto x = at::randn({b, 1, h * d}, cuda(at::kFloat)).to(dt).view({b, 1, h, d}).transpose(1, 2);
    const int64_t p = 29;
    auto [cos, sin] = tables(b, 1, d, dt, p);
    auto pos = at::full({1}, p, cuda(at::kLong));
    at::NoGradGuard ng;
    uniattn::apply_rotary_into(x, cos, sin, cache, pos);
    auto expect = uniattn::apply_rotary_aten(x, cos, sin);
    EXPECT_LE(mismatch_fraction(cache.narrow(2, p, 1), expect), 0.0) << name(dt);
    // Nothing else in the cache moved.
    auto others = at::cat({cache.narrow(2, 0, p), cache.narrow(2, p + 1, s_max - p - 1)}, 2);
    auto others_before =
        at::cat({before.narrow(2, 0, p), before.narrow(2, p + 1, s_max - p - 1)}, 2);
    EXPECT_TRUE(at::equal(others, others_before)) << name(dt);
  }
}

// A decode step's q, k and v (views of one fused projection row) in one launch: q rotated into a
// fresh tensor, k rotated into its cache slot, v copied into its slot; each equal to the separate
// kernels' value, and nothing else in the caches moves.
TEST(FusedOps, RotaryQkvIntoCacheSlots) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(7);
  for (auto dt : kDtypes) {
    const int64_t b = 3, hq = 8, hkv = 2, d = 128, s_max = 40, p = 17;
    auto lin = at::randn({b, 1, (hq + 2 * hkv) * d}, cuda(at::kFloat)).to(dt);
    auto heads = [&](int64_t off, int64_t h) {
      return lin.narrow(2, off * d, h * d).view({b, 1, h, d}).transpose(1, 2);
    };
    auto q = heads(0, hq), k = heads(hq, hkv), v = heads(hq + hkv, hkv);
    auto k_cache = at::randn({b, hkv, s_max, d}, cuda(at::kFloat)).to(dt);
    auto v_cache = at::randn({b, hkv, s_max, d}, cuda(at::kFloat)).to(dt);
    const auto k_before = k_cache.clone(), v_before = v_cache.clone();
    auto [cos, sin] = tables(b, 1, d, dt, p);
    auto pos = at::full({1}, p, cuda(at::kLong));
    auto q_out = at::empty({b, hq, 1, d}, lin.options());
    at::NoGradGuard ng;
    const uint64_t calls = uniattn::kernel_call_count(uniattn::KernelOp::Rotary);
    ASSERT_TRUE(uniattn::apply_rotary_qkv_into(q, k, v, cos, sin, q_out, k_cache, v_cache, pos))
        << name(dt);
    EXPECT_EQ(uniattn::kernel_call_count(uniattn::KernelOp::Rotary), calls + 1) << name(dt);
    check_rule("rotary_qkv/q/" + name(dt), q_out, uniattn::apply_rotary_aten(q, cos, sin),
               rotary_ref(q, cos, sin));
    EXPECT_TRUE(at::equal(q_out, uniattn::apply_rotary(q, cos, sin))) << name(dt);
    check_rule("rotary_qkv/k/" + name(dt), k_cache.narrow(2, p, 1),
               uniattn::apply_rotary_aten(k, cos, sin), rotary_ref(k, cos, sin));
    EXPECT_TRUE(at::equal(k_cache.narrow(2, p, 1), uniattn::apply_rotary(k, cos, sin))) << name(dt);
    EXPECT_TRUE(at::equal(v_cache.narrow(2, p, 1), v)) << name(dt);
    auto others = [&](const at::Tensor& c) {
      return at::cat({c.narrow(2, 0, p), c.narrow(2, p + 1, s_max - p - 1)}, 2);
    };
    EXPECT_TRUE(at::equal(others(k_cache), others(k_before))) << name(dt);
    EXPECT_TRUE(at::equal(others(v_cache), others(v_before))) << name(dt);
  }
  // Where it does not apply it writes nothing and says so: the caller runs the separate ops.
  auto bf = cuda(at::kBFloat16);
  auto q = at::randn({1, 4, 1, 64}, bf), k = at::randn({1, 2, 1, 64}, bf);
  auto v = at::randn({1, 2, 1, 64}, bf), q_out = at::zeros_like(q);
  auto k_cache = at::zeros({1, 2, 8, 64}, bf), v_cache = at::zeros({1, 2, 8, 64}, bf);
  auto [cos, sin] = tables(1, 1, 64, at::kBFloat16, 3);
  auto pos = at::full({1}, 3, cuda(at::kLong));
  auto expect_refused = [&](const std::string& what, const at::Tensor& kd, const at::Tensor& vv) {
    EXPECT_FALSE(uniattn::apply_rotary_qkv_into(q, k, vv, cos, sin, q_out, kd, v_cache, pos))
        << what;
    EXPECT_EQ(q_out.abs().sum().item<double>(), 0.0) << what;
    EXPECT_EQ(v_cache.abs().sum().item<double>(), 0.0) << what;
  };
  expect_refused("fp32 K cache", k_cache.to(at::kFloat), v);
  expect_refused("V of another head count", k_cache, at::randn({1, 3, 1, 64}, bf));
  expect_refused("K cache of another head dim", at::zeros({1, 2, 8, 32}, bf), v);
  {
    at::AutoGradMode grad(true);
    expect_refused("v requiring grad", k_cache, v.clone().requires_grad_(true));
  }
}

TEST(FusedOps, GatedActivations) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(4);
  for (auto dt : kDtypes)
    for (int64_t n : {1, 17, 14336, 4096 * 3 + 5})
      for (auto act : {Activation::Silu, Activation::GeluTanh}) {
        auto g = (at::randn({n}, cuda(at::kFloat)) * 4).to(dt);
        auto u = at::randn({n}, cuda(at::kFloat)).to(dt);
        at::NoGradGuard ng;
        auto fused = uniattn::gated_activation(g, u, act);
        auto aten = uniattn::gated_activation_aten(g, u, act);
        auto gd = g.to(at::kDouble);
        auto ref =
            (act == Activation::Silu ? at::silu(gd) : at::gelu(gd, "tanh")) * u.to(at::kDouble);
        check_rule(std::string("gated/") + (act == Activation::Silu ? "silu/" : "gelu_tanh/") +
                       name(dt) + "/n=" + std::to_string(n),
                   fused, aten, ref);
      }
}

// Loss and logit gradient of cross_entropy_rows against fp64 and against the ATen path it replaces
// (the logits cast to fp32, at::cross_entropy_loss, autograd's cast back), for 16-bit logits (fp32
// ones take that ATen path, and the kernel must not run), vocabularies that take the vector path (V
// % 8 == 0, here also with a row stride wider than V) and the scalar one, an ignored row and a row
// predicting the last token.
TEST(FusedOps, CrossEntropyRows) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(5);
  struct Shape {
    int64_t n, v, stride;
  };
  for (auto dt : kDtypes)
    for (const Shape s : {Shape{37, 32000, 32000}, Shape{9, 1003, 1003}, Shape{16, 4096, 4104}}) {
      const std::string what = "cross_entropy/" + name(dt) + "/n=" + std::to_string(s.n) +
                               "/v=" + std::to_string(s.v) + "/stride=" + std::to_string(s.stride);
      auto wide = (at::randn({s.n, s.stride}, cuda(at::kFloat)) * 4).to(dt);
      auto z = wide.narrow(1, 0, s.v);
      auto t = at::randint(0, s.v, {s.n}, cuda(at::kLong));
      t[1] = -100;                                       // ignored
      t[2] = s.v - 1;                                    // the last column
      auto g = at::rand({s.n}, cuda(at::kFloat)) + 0.5;  // d total / d loss[i]

      auto zk = z.detach().requires_grad_(true);
      const uint64_t calls = uniattn::kernel_call_count(uniattn::KernelOp::CrossEntropy);
      auto lk = uniattn::cross_entropy_rows(zk, t);
      lk.backward(g);
      EXPECT_EQ(uniattn::kernel_call_count(uniattn::KernelOp::CrossEntropy),
                calls + (dt == at::kFloat ? 0 : 2))
          << what;

      auto za = z.detach().requires_grad_(true);
      auto la = at::cross_entropy_loss(za.to(at::kFloat), t, {}, at::Reduction::None, -100);
      la.backward(g);

      auto z64 = z.to(at::kDouble);
      const auto keep = (t != -100).to(at::kDouble);
      const auto tc = t.clamp_min(0).unsqueeze(1);
      auto lref = (at::logsumexp(z64, 1) - z64.gather(1, tc).squeeze(1)) * keep;
      auto onehot = at::zeros_like(z64).scatter_(1, tc, 1.0);
      auto gref = (at::softmax(z64, 1) - onehot) * (g.to(at::kDouble) * keep).unsqueeze(1);

      // The loss is fp32 on both paths: the rule with an allowance of a few fp32 ulps.
      const double ek = max_err(lk, lref), ea = max_err(la, lref);
      const double ulps = 4 * 1.2e-7 * lref.abs().max().item<double>();
      std::printf("RATIO %s/loss kernel_err=%.3e aten_err=%.3e\n", what.c_str(), ek, ea);
      EXPECT_LE(ek, 2.0 * ea + ulps) << what;
      check_rule(what + "/grad", zk.grad(), za.grad(), gref);
      EXPECT_EQ(lk[1].item<float>(), 0.f) << what;
      EXPECT_EQ(zk.grad()[1].abs().max().item<double>(), 0.0) << what;
    }
}

// A NaN logit makes its row's loss NaN, as in ATen, wherever it sits (fmaxf skips NaN, so the
// kernel carries it in the sum); a base that is not 16-byte aligned takes the scalar path.
TEST(FusedOps, CrossEntropyNaNAndMisalignedLogits) {
  SKIP_WITHOUT_GPU();
  auto wide = at::randn({3, 1025}, cuda(at::kBFloat16));
  auto z = wide.narrow(1, 1, 1024);  // base one element in: not 16-byte aligned
  auto t = at::tensor(std::vector<int64_t>{0, 7, 1023}).to(at::kCUDA);
  auto ok = at::cross_entropy_loss(z.to(at::kFloat), t, {}, at::Reduction::None);
  EXPECT_LT(max_err(uniattn::cross_entropy_rows(z, t), ok), 1e-5);
  for (int64_t col : {0, 5, 1000}) {
    auto zn = z.clone();
    zn[1][col] = NAN;
    auto l = uniattn::cross_entropy_rows(zn, t);
    EXPECT_TRUE(std::isnan(l[1].item<float>())) << col;
    EXPECT_FALSE(std::isnan(l[0].item<float>())) << col;
  }
}

// A target id outside the vocabulary makes that row's loss NaN (ATen would stop the process with
// a device-side assert); the other rows are unaffected.
TEST(FusedOps, CrossEntropyOffVocabularyTargetIsNaN) {
  SKIP_WITHOUT_GPU();
  auto z = at::randn({3, 64}, cuda(at::kBFloat16));
  auto t = at::tensor(std::vector<int64_t>{5, 64, 7}).to(at::kCUDA);
  auto l = uniattn::cross_entropy_rows(z, t);
  EXPECT_TRUE(std::isnan(l[1].item<float>()));
  const auto rows = at::tensor(std::vector<int64_t>{0, 2}).to(at::kCUDA);
  auto ok = at::cross_entropy_loss(z.index_select(0, rows).to(at::kFloat), t.index_select(0, rows),
                                   {}, at::Reduction::None);
  EXPECT_LT(max_err(l.index_select(0, rows), ok), 1e-5);
}

// One AdamW step of kernels/adamw.cu against ATen's at::_fused_adamw_ on the same tensors and an
// fp64 evaluation of the same formula, with and without a gradient scale (the clip folded in),
// for vector-aligned and ragged lengths.
TEST(FusedOps, AdamWStep) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(6);
  const uniattn::kernels::detail::AdamWHyper h{3e-3, 0.9, 0.95, 0.1, 1e-8, 3};
  for (auto dt : kDtypes)
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4096 * 3 + 5}, int64_t{(3 << 20) + 3}})
      for (bool scaled : {false, true}) {
        const std::string what =
            "adamw/" + name(dt) + "/n=" + std::to_string(n) + (scaled ? "/scaled" : "");
        auto p = at::randn({n}, cuda(at::kFloat)).to(dt);
        auto g = (at::randn({n}, cuda(at::kFloat)) * 0.3).to(dt);
        auto m = (at::randn({n}, cuda(at::kFloat)) * 0.1).to(dt);
        auto v = (at::rand({n}, cuda(at::kFloat)) * 0.01).to(dt);
        auto scale = at::full({}, 2.5, cuda(at::kFloat));
        // fp64 reference from the same inputs.
        const double bc1 = 1 - std::pow(h.beta1, 3.0), bc2 = 1 - std::pow(h.beta2, 3.0);
        auto gd = g.to(at::kDouble) / (scaled ? 2.5 : 1.0);
        auto md = m.to(at::kDouble) * h.beta1 + gd * (1 - h.beta1);
        auto vd = v.to(at::kDouble) * h.beta2 + gd * gd * (1 - h.beta2);
        auto pd = p.to(at::kDouble) * (1 - h.lr * h.weight_decay) -
                  (h.lr / bc1) * md / (vd.sqrt() / std::sqrt(bc2) + h.eps);
        auto pa = p.clone(), ma = m.clone(), va = v.clone(), ga = g.clone();
        at::_fused_adamw_({pa}, {ga}, {ma}, {va}, {}, {at::full({}, 3.0, cuda(at::kFloat))}, h.lr,
                          h.beta1, h.beta2, h.weight_decay, h.eps, false, false,
                          scaled ? std::optional<at::Tensor>(scale) : std::nullopt);
        const uint64_t calls = uniattn::kernel_call_count(uniattn::KernelOp::AdamW);
        uniattn::kernels::detail::cuda_hooks().adamw(p, g, m, v, scaled ? &scale : nullptr, h);
        EXPECT_EQ(uniattn::kernel_call_count(uniattn::KernelOp::AdamW), calls + 1);
        // ATen evaluates part of the update in fp64, so fp32 results differ in the last bit;
        // 16-bit ones round alike.
        const bool same = dt != at::kFloat;
        check_rule(what + "/param", p, pa, pd, same);
        check_rule(what + "/exp_avg", m, ma, md, same);
        check_rule(what + "/exp_avg_sq", v, va, vd, same);
      }
}

// Gradients through the fused autograd path (inputs that require grad: fused_autograd.h) against
// the ATen expressions' gradients (AtenOpsScope) and fp64 autograd of the same formulas, under the
// FlashAttention rule; the kernel counters show that forward and backward took the kernels.
struct GradCase {
  using Fn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;
  std::vector<at::Tensor> inputs;  // leaves, requiring grad
  Fn op;                           // the op under test
  Fn ref;                          // the same formula, evaluated in fp64
};

// Gradients of sum(f(inputs) * weights) with respect to every input; fp64 runs the reference.
std::vector<at::Tensor> grads_of(const GradCase& c, const at::Tensor& weights, at::ScalarType dt) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : c.inputs) leaves.push_back(t.detach().to(dt).requires_grad_(true));
  const auto& f = dt == at::kDouble ? c.ref : c.op;
  (f(leaves).to(weights.scalar_type()) * weights).sum().backward();
  std::vector<at::Tensor> out;
  for (const auto& l : leaves) out.push_back(l.grad());
  return out;
}

void check_grads(const std::string& what, uniattn::KernelOp op, const GradCase& c,
                 at::ScalarType dt) {
  const auto weights = at::randn(c.op(c.inputs).sizes(), cuda(at::kFloat));
  const uint64_t calls = uniattn::kernel_call_count(op);
  const auto fused = grads_of(c, weights, dt);
  EXPECT_GE(uniattn::kernel_call_count(op), calls + 2) << what;  // forward and backward
  std::vector<at::Tensor> aten;
  {
    uniattn::AtenOpsScope scope;
    aten = grads_of(c, weights, dt);
  }
  const auto ref = grads_of(c, weights.to(at::kDouble), at::kDouble);
  for (size_t i = 0; i < fused.size(); ++i)
    check_rule(what + "/grad" + std::to_string(i), fused[i], aten[i], ref[i], false);
}

// RMSNorm of [rows, n] inputs with an [n] weight.
GradCase norm_case(int64_t rows, int64_t n, bool plus_one) {
  return {{at::randn({rows, n}, cuda(at::kFloat)), at::randn({n}, cuda(at::kFloat))},
          [=](const std::vector<at::Tensor>& in) {
            return uniattn::rms_norm(in[0], in[1], 1e-6, plus_one);
          },
          [=](const std::vector<at::Tensor>& in) { return rms_ref(in[0], in[1], 1e-6, plus_one); }};
}

// RoPE of q as the attention layer makes it: a [B, H, T, D] view of a [B, T, H * D] projection,
// with tables of batch table_batch (1 or B) from position first_pos.
GradCase rope_case(int64_t table_batch, int64_t first_pos) {
  const auto apply = [=](bool aten) {
    return [=](const std::vector<at::Tensor>& in) {
      auto x = in[0].view({2, 33, 8, 128}).transpose(1, 2);
      auto [cos, sin] = tables(table_batch, 33, 128, in[0].scalar_type(), first_pos);
      return aten ? uniattn::apply_rotary_aten(x, cos, sin) : uniattn::apply_rotary(x, cos, sin);
    };
  };
  return {{at::randn({2, 33, 8 * 128}, cuda(at::kFloat))}, apply(false), apply(true)};
}

GradCase gated_case(Activation act) {
  return {{at::randn({5, 14336}, cuda(at::kFloat)) * 3, at::randn({5, 14336}, cuda(at::kFloat))},
          [=](const std::vector<at::Tensor>& in) {
            return uniattn::gated_activation(in[0], in[1], act);
          },
          [=](const std::vector<at::Tensor>& in) {
            return uniattn::gated_activation_aten(in[0], in[1], act);
          }};
}

// The autograd paths at their edges: the widest RMSNorm row the backward kernel takes, rotary
// tables with a batch dimension, a norm weight that does not require grad, and an empty input
// (which takes the ATen path).
TEST(FusedOps, AutogradEdgeCases) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(9);
  const int64_t wide = uniattn::kernels::detail::kMaxNormBackwardCols;
  check_grads("rms_norm/n=" + std::to_string(wide), uniattn::KernelOp::RmsNorm,
              norm_case(3, wide, false), at::kBFloat16);
  check_grads("rotary/batch-2 tables", uniattn::KernelOp::Rotary, rope_case(2, 3), at::kBFloat16);
  // A frozen weight: only x gets a gradient, equal to the ATen path's.
  auto w = at::randn({256}, cuda(at::kBFloat16));
  auto x = at::randn({4, 256}, cuda(at::kBFloat16)).requires_grad_(true);
  auto xa = x.detach().clone().requires_grad_(true);
  uniattn::rms_norm(x, w, 1e-6, false).sum().backward();
  {
    uniattn::AtenOpsScope scope;
    uniattn::rms_norm(xa, w, 1e-6, false).sum().backward();
  }
  EXPECT_FALSE(w.grad().defined());
  EXPECT_LE(max_err(x.grad(), xa.grad()), 4.0 / 256 * xa.grad().abs().max().item<double>());
  auto empty = at::randn({0, 64}, cuda(at::kBFloat16)).requires_grad_(true);
  const uint64_t calls = uniattn::kernel_call_count(uniattn::KernelOp::RmsNorm);
  uniattn::rms_norm(empty, at::ones({64}, cuda(at::kBFloat16)), 1e-6, false).sum().backward();
  EXPECT_EQ(uniattn::kernel_call_count(uniattn::KernelOp::RmsNorm), calls);
  EXPECT_EQ(empty.grad().sizes(), empty.sizes());
}

TEST(FusedOps, AutogradThroughTheKernels) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(8);
  for (auto dt : kDtypes) {
    for (bool plus_one : {false, true})
      check_grads("rms_norm/" + name(dt) + (plus_one ? "/plus_one" : ""),
                  uniattn::KernelOp::RmsNorm, norm_case(37, 4096, plus_one), dt);
    check_grads("rotary/" + name(dt), uniattn::KernelOp::Rotary, rope_case(1, 5), dt);
    for (auto act : {Activation::Silu, Activation::GeluTanh})
      check_grads(
          std::string("gated/") + (act == Activation::Silu ? "silu/" : "gelu_tanh/") + name(dt),
          uniattn::KernelOp::GatedActivation, gated_case(act), dt);
  }
}

}  // namespace
