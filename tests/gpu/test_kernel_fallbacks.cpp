// Forcing each operation onto its ATen path, by the switch (UNIATTN_DISABLE_KERNELS, set here
// through set_kernel_path_override) and by a mocked compute capability, gives the kernel path's
// output (within the rounding of the output dtype), and the kernel call counters show which path
// ran. Also: the decision is made once per device, and the report lists every operation.
// The script runs this suite with UNIATTN_DISABLE_KERNELS=1 too; the overrides below replace the
// variable, so every test here means the same in both runs except EnvironmentSwitchIsHonoured.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/layers.h"
#include "model/model_test_util.h"
#include "shared_softmax.h"
#include "train/cross_entropy.h"
#include "train/optim/fused_adamw.h"
#include "uniattn/infer/generate.h"
#include "uniattn/model/causal_lm.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn {
namespace {

namespace uk = kernels;

#define SKIP_WITHOUT_GPU()                                                               \
  do {                                                                                   \
    if (!at::cuda::is_available()) GTEST_SKIP() << "no CUDA device";                     \
    if (kernel_build_archs().empty()) GTEST_SKIP() << "built without kernels";           \
    const auto* prop = at::cuda::getCurrentDeviceProperties();                           \
    if (prop->major < 8) GTEST_SKIP() << "sm_" << prop->major << prop->minor << " < 80"; \
  } while (0)

// Restores the environment's decision after each test.
class KernelFallback : public ::testing::Test {
 protected:
  void TearDown() override { set_kernel_path_override({}); }
};

const c10::Device kGpu(c10::kCUDA, 0);
at::TensorOptions bf16() { return at::TensorOptions().device(kGpu).dtype(at::kBFloat16); }

// Runs op on fixed inputs and returns its outputs. Attention uses a window, so prefill runs the
// uniattn kernel rather than PyTorch's flash kernel (which is taken only without window/softcap).
std::vector<at::Tensor> run_op(KernelOp op) {
  at::NoGradGuard ng;
  at::manual_seed(11);
  const uk::AttnParams p{static_cast<float>(1.0 / std::sqrt(128.0)), 0.f, 50};
  switch (op) {
    case KernelOp::PrefillAttention: {
      auto q = at::randn({2, 8, 77, 128}, bf16()), k = at::randn({2, 2, 77, 128}, bf16());
      auto v = at::randn_like(k), v2 = at::randn_like(k);
      auto [o, lse] = uk::prefill_leader(q, k, v, p);
      return {o, lse, uk::prefill_follower(q, k, lse, v2, p)};
    }
    case KernelOp::DecodeLeader: {
      auto q = at::randn({2, 8, 1, 128}, bf16());
      auto kc = at::randn({2, 2, 300, 128}, bf16()), vc = at::randn_like(kc);
      auto lens = at::tensor(std::vector<int32_t>{300, 17}, at::kInt).to(kGpu);
      auto [o, prow] = uk::decode_leader(q, kc, vc, lens, p);
      // p_row past len_b is unspecified (the kernel leaves it, the fallback writes 0).
      auto in_len = at::arange(300, lens.options().dtype(at::kLong)).reshape({1, 1, 300}) <
                    lens.to(at::kLong).reshape({2, 1, 1});
      prow = at::where(in_len, prow, at::zeros({}, prow.options()));
      return {o, prow, uk::decode_attention(q, kc, vc, lens, p)};
    }
    case KernelOp::DecodeFollower: {
      auto q = at::randn({2, 8, 1, 128}, bf16());
      auto kc = at::randn({2, 2, 300, 128}, bf16()), vc = at::randn_like(kc);
      auto lens = at::tensor(std::vector<int32_t>{300, 17}, at::kInt).to(kGpu);
      auto prow = std::get<1>(uk::decode_leader_fallback(q, kc, vc, lens, p));
      return {uk::decode_follower(prow, vc, lens, 8)};
    }
    case KernelOp::RmsNorm: {
      auto x = at::randn({7, 4096}, bf16()), d = at::randn_like(x);
      auto w = at::randn({4096}, bf16());
      auto [h, normed] = add_rms_norm(x, d, w, 1e-5, false);
      return {rms_norm(x, w, 1e-6, true), h, normed};
    }
    case KernelOp::Rotary: {
      auto lin = at::randn({2, 17, 8 * 128}, bf16());
      auto x = lin.view({2, 17, 8, 128}).transpose(1, 2);
      auto inv = 1.0 / at::pow(10000.0, at::arange(0, 128, 2, bf16().dtype(at::kFloat)) / 128.0);
      auto pos = at::arange(3, 20, bf16().dtype(at::kLong)).unsqueeze(0).expand({2, 17});
      auto [cos, sin] = rope_tables(inv, pos, at::kBFloat16);
      return {apply_rotary(x, cos, sin)};
    }
    case KernelOp::GatedActivation: {
      auto g = at::randn({5, 14336}, bf16()) * 4, u = at::randn({5, 14336}, bf16());
      return {gated_activation(g, u, Activation::Silu),
              gated_activation(g, u, Activation::GeluTanh)};
    }
    case KernelOp::CrossEntropy: {
      at::AutoGradMode grad(true);
      auto z = (at::randn({6, 1000}, bf16()) * 3).requires_grad_(true);
      auto t = at::randint(0, 1000, {6}, bf16().dtype(at::kLong));
      t[0] = -100;
      auto loss = cross_entropy_rows(z, t);
      loss.backward(at::linspace(0.5, 1.5, 6, loss.options()));
      return {loss.detach(), z.grad()};
    }
    case KernelOp::Gemv: {
      auto x = at::randn({1, 1, 4096}, bf16()), w = at::randn({1024, 4096}, bf16()) * 0.02;
      auto bias = at::randn({1024}, bf16()), add = at::randn({1, 1, 1024}, bf16());
      return {linear_forward(x, w, bias), linear_forward(x, w, {}, add)};
    }
    case KernelOp::AdamW: {
      // fp32, so that the compared tolerance (1e-4 of the largest value) is far below the 1e-2
      // each step moves a parameter: an update that did nothing would fail.
      auto f32 = bf16().dtype(at::kFloat);
      auto p = at::randn({4099}, f32).requires_grad_(true);
      const auto p0 = p.detach().clone();
      std::vector<at::Tensor> ps{p};
      FusedAdamW opt(ps, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
      for (int step = 0; step < 2; ++step) {
        p.mutable_grad() = at::randn({4099}, f32);
        opt.step();
      }
      return {p.detach() - p0};
    }
  }
  return {};
}

// Runs op with the override in force; checks whether its kernel ran.
std::vector<at::Tensor> run_with(KernelOp op, const KernelPathOverride& ov, bool expect_kernel) {
  set_kernel_path_override(ov);
  const auto path = kernel_path(op, kGpu);
  EXPECT_EQ(path.kernel, expect_kernel) << kernel_op_name(op) << ": " << path.reason;
  const uint64_t before = kernel_call_count(op);
  auto out = run_op(op);
  at::cuda::getCurrentCUDAStream().synchronize();
  EXPECT_EQ(kernel_call_count(op) > before, expect_kernel) << kernel_op_name(op);
  return out;
}

// Kernel and ATen outputs agree to a few units in the last place of the output dtype (fp32
// outputs: lse and p_row, to 1e-3 and 1e-4).
void expect_same(const std::vector<at::Tensor>& kernel, const std::vector<at::Tensor>& aten,
                 const std::string& what) {
  ASSERT_EQ(kernel.size(), aten.size()) << what;
  for (size_t i = 0; i < kernel.size(); ++i) {
    ASSERT_EQ(kernel[i].sizes(), aten[i].sizes()) << what << " output " << i;
    ASSERT_EQ(kernel[i].scalar_type(), aten[i].scalar_type()) << what << " output " << i;
    const auto a = aten[i].to(at::kDouble), k = kernel[i].to(at::kDouble);
    const double scale = std::max(1.0, a.abs().max().item<double>());
    const double tol = aten[i].scalar_type() == at::kFloat ? (i == 1 ? 1e-3 : 1e-4) : 4.0 / 256.0;
    const double err = (k - a).abs().max().item<double>();
    std::printf("FALLBACK %s output %zu: max diff %.3e (scale %.2f)\n", what.c_str(), i, err,
                scale);
    EXPECT_LE(err, tol * scale) << what << " output " << i;
  }
}

TEST_F(KernelFallback, SwitchGivesTheKernelPathsOutput) {
  SKIP_WITHOUT_GPU();
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto op = static_cast<KernelOp>(i);
    KernelPathOverride on, off;
    on.disabled = "";
    off.disabled = kernel_op_name(op);
    auto kernel = run_with(op, on, true);
    auto aten = run_with(op, off, false);
    expect_same(kernel, aten, std::string("disabled ") + kernel_op_name(op));
  }
}

// The gate/up GEMV with the activation in its epilogue is both operations' kernel: disabling
// either leaves gated_linear_forward undefined (the MLP then runs linear_forward and
// gated_activation, each on its own path), and the MLP's output does not change beyond rounding.
TEST_F(KernelFallback, GatedGemvNeedsBothOperations) {
  SKIP_WITHOUT_GPU();
  auto x = at::randn({1, 1, 512}, bf16()), w = at::randn({2 * 768, 512}, bf16()) * 0.05;
  auto unfused = [&] {
    auto gu = linear_forward(x, w);
    return gated_activation(gu.narrow(-1, 0, 768), gu.narrow(-1, 768, 768), Activation::Silu);
  };
  for (const char* disabled : {"gated_activation", "gemv", "gemv,gated_activation"}) {
    KernelPathOverride ov;
    ov.disabled = disabled;
    set_kernel_path_override(ov);
    EXPECT_FALSE(gated_linear_forward(x, w, Activation::Silu).defined()) << disabled;
  }
  KernelPathOverride on;
  on.disabled = "";
  set_kernel_path_override(on);
  const uint64_t gemv_calls = kernel_call_count(KernelOp::Gemv);
  auto fused = gated_linear_forward(x, w, Activation::Silu);
  ASSERT_TRUE(fused.defined());
  EXPECT_EQ(kernel_call_count(KernelOp::Gemv), gemv_calls + 1);
  KernelPathOverride off;
  off.disabled = "all";
  set_kernel_path_override(off);
  expect_same({fused}, {unfused()}, "gated GEMV against ATen linear + activation");
}

TEST_F(KernelFallback, PreAmpereCapabilityTakesAten) {
  SKIP_WITHOUT_GPU();
  KernelPathOverride turing, all_off;
  turing.disabled = "";
  turing.capability = {7, 5};
  all_off.disabled = "all";
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto op = static_cast<KernelOp>(i);
    set_kernel_path_override(turing);
    EXPECT_NE(kernel_path(op, kGpu).reason.find("older than sm_80"), std::string::npos);
    auto mocked = run_with(op, turing, false);
    auto aten = run_with(op, all_off, false);
    for (size_t j = 0; j < mocked.size(); ++j) {  // both are the ATen path: bit for bit
      EXPECT_TRUE(at::equal(mocked[j], aten[j])) << kernel_op_name(op) << " output " << j;
    }
  }
}

// An Ampere capability keeps every kernel (the build has sm_80 SASS or compute_80 PTX).
TEST_F(KernelFallback, AmpereCapabilityKeepsTheKernels) {
  SKIP_WITHOUT_GPU();
  KernelPathOverride ampere;
  ampere.disabled = "";
  ampere.capability = {8, 0};
  set_kernel_path_override(ampere);
  const bool has_80 = kernel_build_archs().find("_80") != std::string::npos;
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto op = static_cast<KernelOp>(i);
    EXPECT_EQ(kernel_path(op, kGpu).kernel, has_80) << kernel_path(op, kGpu).reason;
  }
}

// The decision is made once per device: a changed environment counts only after the cache is
// dropped.
TEST_F(KernelFallback, DecisionIsCachedPerDevice) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("UNIATTN_DISABLE_KERNELS");
  const std::string saved = env ? env : "";
  ::unsetenv("UNIATTN_DISABLE_KERNELS");
  set_kernel_path_override({});
  EXPECT_TRUE(kernel_enabled(KernelOp::RmsNorm, kGpu));
  ::setenv("UNIATTN_DISABLE_KERNELS", "rms_norm", 1);
  EXPECT_TRUE(kernel_enabled(KernelOp::RmsNorm, kGpu));  // cached
  set_kernel_path_override({});
  EXPECT_FALSE(kernel_enabled(KernelOp::RmsNorm, kGpu));
  EXPECT_TRUE(kernel_enabled(KernelOp::Rotary, kGpu));
  if (env) {
    ::setenv("UNIATTN_DISABLE_KERNELS", saved.c_str(), 1);
  } else {
    ::unsetenv("UNIATTN_DISABLE_KERNELS");
  }
}

TEST_F(KernelFallback, EnvironmentSwitchIsHonoured) {
  SKIP_WITHOUT_GPU();
  set_kernel_path_override({});
  const std::string report = kernel_path_report(kGpu);
  std::printf("%s", report.c_str());
  const char* env = std::getenv("UNIATTN_DISABLE_KERNELS");
  const bool all_off = env && (std::string(env) == "1" || std::string(env) == "all");
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto op = static_cast<KernelOp>(i);
    const auto p = kernel_path(op, kGpu);
    EXPECT_NE(report.find(std::string(kernel_op_name(op)) + ": "), std::string::npos);
    if (all_off) {
      EXPECT_FALSE(p.kernel) << p.reason;
    } else if (!env || !*env) {
      EXPECT_TRUE(p.kernel) << p.reason;
    }
  }
}

// A UniAttn model decodes through the CUDA-graph decoder with every operation on its ATen path
// (what a pre-Ampere GPU runs) and gives the kernels' logits within bf16 rounding.
std::vector<at::Tensor> graph_decode_logits(const KernelPathOverride& ov) {
  set_kernel_path_override(ov);
  at::NoGradGuard ng;
  auto c = test::tiny_llama_config(8);
  c.vocab_size = 128;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.uniattn = UniAttnSpec::parse(Variant::UniAttn, "4,4,8", 8);
  at::manual_seed(21);
  CausalLM model(c, bf16());
  auto dec = make_cuda_graph_decoder(model, 2, 64);
  auto ids = at::randint(0, 128, {2, 9}, bf16().dtype(at::kLong));
  std::vector<at::Tensor> logits{dec->prefill(ids, at::Tensor()).to(at::kFloat)};
  for (int s = 0; s < 6; ++s) {
    auto tok = at::randint(0, 128, {2}, bf16().dtype(at::kLong));
    logits.push_back(dec->step(tok).to(at::kFloat));
  }
  return logits;
}

TEST_F(KernelFallback, GraphDecodingOnAtenMatchesKernels) {
  SKIP_WITHOUT_GPU();
  KernelPathOverride on, off;
  on.disabled = "";
  off.disabled = "all";
  std::array<uint64_t, kNumKernelOps> before{};
  for (int i = 0; i < kNumKernelOps; ++i) before[i] = kernel_call_count(static_cast<KernelOp>(i));
  const auto aten = graph_decode_logits(off);
  for (int i = 0; i < kNumKernelOps; ++i) {
    EXPECT_EQ(kernel_call_count(static_cast<KernelOp>(i)), before[i])
        << kernel_op_name(static_cast<KernelOp>(i));
  }
  const auto kernel = graph_decode_logits(on);
  for (auto op : {KernelOp::DecodeLeader, KernelOp::DecodeFollower, KernelOp::RmsNorm}) {
    EXPECT_GT(kernel_call_count(op), before[static_cast<int>(op)]) << kernel_op_name(op);
  }
  ASSERT_EQ(aten.size(), kernel.size());
  for (size_t s = 0; s < aten.size(); ++s) {
    const double scale = aten[s].abs().max().item<double>();
    const double err = (kernel[s] - aten[s]).abs().max().item<double>();
    std::printf("GRAPH step %zu: max |logit| %.3e, kernel vs aten %.3e\n", s, scale, err);
    EXPECT_TRUE(aten[s].isfinite().all().item<bool>()) << "step " << s;
    EXPECT_LE(err, 0.05 * scale + 1e-3) << "step " << s;
  }
}

}  // namespace
}  // namespace uniattn
