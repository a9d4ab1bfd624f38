// The decode GEMV kernel (kernels/gemv.cu) behind linear_forward (src/model/layers.cpp) against
// ATen's GEMM in the same dtype and an fp64 reference, under the FlashAttention rule: the kernel's
// max error vs fp64 is at most twice that of at::linear / at::addmm in the same dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "cuda_hooks.h"
#include "gpu/gpu_test_util.h"
#include "model/layers.h"
#include "shared_softmax.h"
#include "uniattn/model/kernel_paths.h"

namespace {

using uniattn::kernel_call_count;
using uniattn::KernelOp;
using uniattn::linear_forward;

at::TensorOptions cuda(at::ScalarType t) { return at::TensorOptions().dtype(t).device(at::kCUDA); }

double max_err(const at::Tensor& a, const at::Tensor& ref) {
  auto d = (a.to(at::kDouble) - ref).abs();
  if (d.isnan().any().item<bool>()) return INFINITY;
  return d.max().item<double>();
}

// y = linear_forward(x, w, bias, add) must take the kernel and meet the rule against ATen.
void check_case(const std::string& what, const at::Tensor& x, const at::Tensor& w,
                const at::Tensor& bias, const at::Tensor& add) {
  const uint64_t calls = kernel_call_count(KernelOp::Gemv);
  auto y = linear_forward(x, w, bias, add);
  EXPECT_EQ(kernel_call_count(KernelOp::Gemv), calls + 1) << what << ": the kernel did not run";
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  ASSERT_EQ(y.sizes().vec(), shape) << what;
  ASSERT_EQ(y.scalar_type(), x.scalar_type()) << what;

  const int64_t k = x.size(-1), n = w.size(0);
  auto x2 = x.reshape({-1, k});
  at::Tensor aten = add.defined() ? at::addmm(add.reshape({-1, n}), x2, w.t())
                                  : at::linear(x2, w, bias.defined() ? bias : at::Tensor());
  if (add.defined() && bias.defined()) aten = aten + bias;
  auto ref = at::matmul(x2.to(at::kDouble), w.to(at::kDouble).t());
  if (bias.defined()) ref = ref + bias.to(at::kDouble);
  if (add.defined()) ref = ref + add.reshape({-1, n}).to(at::kDouble);
  const double ek = max_err(y.reshape({-1, n}), ref), ea = max_err(aten, ref);
  std::printf("RATIO %s kernel_err=%.3e aten_err=%.3e ratio=%.3f\n", what.c_str(), ek, ea,
              ek / std::max(ea, 1e-30));
  EXPECT_LE(ek, 2.0 * ea + 1e-6) << what;
}

TEST(Gemv, ShapesDtypesAgainstAtenAndFp64) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(0);
  // LLaMA-8B's projections (q/k/v fused, o, gate/up fused, down), a follower's [W_v; W_c], odd
  // output counts, K not a multiple of the 256 elements a warp reads per step, tiny shapes; x as
  // a decode step's [1, 1, K] and as a plain [K].
  // 16,385 rows take two rows per warp, the last warp's second row past the end; below 16,384 rows
  // two warps share a row (UNIATTN_GEMV_SPLIT_K and _WIDE_SPLIT_K
  // runs cover the other splits).
  const int64_t shapes[][2] = {{6144, 4096}, {4096, 14336}, {5120, 4096},
                               {4099, 2056}, {16385, 264},  {8193, 520},
                               {7, 8},       {33, 264},     {1, 4104}};
  for (auto dt : {at::kBFloat16, at::kHalf})
    for (const auto& nk : shapes)
      for (bool flat : {false, true}) {
        const int64_t n = nk[0], k = nk[1];
        auto x = at::randn(flat ? std::vector<int64_t>{k} : std::vector<int64_t>{1, 1, k},
                           cuda(at::kFloat))
                     .to(dt);
        auto w = (at::randn({n, k}, cuda(at::kFloat)) * 0.02).to(dt);
        auto bias = at::randn({n}, cuda(at::kFloat)).to(dt);
        auto add = at::randn(flat ? std::vector<int64_t>{n} : std::vector<int64_t>{1, 1, n},
                             cuda(at::kFloat))
                       .to(dt);
        const std::string tag = std::string(c10::toString(dt)) + (flat ? " [K]" : " [1,1,K]") +
                                " N=" + std::to_string(n) + " K=" + std::to_string(k);
        check_case(tag, x, w, {}, {});
        check_case(tag + " +bias", x, w, bias, {});
        check_case(tag + " +add", x, w, {}, add);
        check_case(tag + " +bias +add", x, w, bias, add);  // a follower's W_c with attention bias
      }
}

TEST(Gemv, StridedAndMisalignedOperands) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(1);
  auto w = (at::randn({1024, 4096}, cuda(at::kBFloat16)) * 0.02);
  // x one half of a fused projection's output, and an add that is a column block of a wider GEMM
  // result, as the follower's W_c x part is.
  auto wide = at::randn({1, 8192}, cuda(at::kBFloat16));
  check_case("x a column block", wide.narrow(1, 4096, 4096), w, {}, {});
  auto wide_add = at::randn({1, 5120}, cuda(at::kBFloat16));
  check_case("add a column block", wide.narrow(1, 0, 4096), w, {}, wide_add.narrow(1, 1024, 1024));
  // Every element read lives in the second half of a pair of rows: x = rows[1], add = adds[1].
  auto rows = at::randn({2, 4096}, cuda(at::kBFloat16)),
       adds = at::randn({2, 1024}, rows.options());
  check_case("second row", rows[1], w, {}, adds[1]);
  // x one element off 16-byte alignment: copied to an aligned row, still the kernel.
  auto flat = at::randn({4097}, cuda(at::kBFloat16));
  check_case("misaligned x", flat.narrow(0, 1, 4096).view({1, 4096}), w, {}, {});
  // Every other element of a longer vector: the kernel reads a contiguous copy.
  auto bias2 = at::randn({2048}, cuda(at::kBFloat16));
  check_case("strided bias", rows[0], w, bias2.slice(0, 0, 2048, 2), {});
  // Grad mode on but nothing requiring grad: still inference, still the kernel.
  at::AutoGradMode grad(true);
  check_case("grad mode, no grad needed", rows[0], w, {}, {});
}

// The gate/up GEMV with the activation in its epilogue (gated_linear_forward) against ATen's
// linear then activation and an fp64 reference (FlashAttention rule). LLaMA-8B's gate/up (2 x
// 14,336 rows) must equal linear_forward + gated_activation bit for bit: both take two rows per
// warp and the same summation order, and round each dot product before the activation.
TEST(Gemv, GatedEpilogueAgainstAtenAndFp64) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(3);
  const int64_t shapes[][2] = {{14336, 4096}, {4099, 2056}, {7, 264}, {1, 8}};
  for (auto dt : {at::kBFloat16, at::kHalf})
    for (const auto& nk : shapes)
      for (auto act : {uniattn::Activation::Silu, uniattn::Activation::GeluTanh}) {
        const int64_t n = nk[0], k = nk[1];
        const std::string what = std::string(c10::toString(dt)) +
                                 (act == uniattn::Activation::Silu ? " silu" : " gelu") +
                                 " N=" + std::to_string(n) + " K=" + std::to_string(k);
        auto x = at::randn({1, 1, k}, cuda(at::kFloat)).to(dt);
        auto w = (at::randn({2 * n, k}, cuda(at::kFloat)) * 0.05).to(dt);
        const uint64_t calls = kernel_call_count(KernelOp::Gemv);
        auto y = uniattn::gated_linear_forward(x, w, act);
        ASSERT_TRUE(y.defined()) << what;
        EXPECT_EQ(kernel_call_count(KernelOp::Gemv), calls + 1) << what;
        ASSERT_EQ(y.sizes().vec(), (std::vector<int64_t>{1, 1, n})) << what;
        auto lin = at::linear(x, w);
        auto aten = uniattn::gated_activation_aten(lin.narrow(-1, 0, n), lin.narrow(-1, n, n), act);
        auto ld = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
        auto gd = ld.narrow(-1, 0, n);
        auto ref = (act == uniattn::Activation::Silu ? at::silu(gd) : at::gelu(gd, "tanh")) *
                   ld.narrow(-1, n, n);
        const double ek = max_err(y, ref), ea = max_err(aten, ref);
        std::printf("RATIO gated %s kernel_err=%.3e aten_err=%.3e ratio=%.3f\n", what.c_str(), ek,
                    ea, ek / std::max(ea, 1e-30));
        EXPECT_LE(ek, 2.0 * ea + 1e-6) << what;
        if (n == 14336) {
          auto gu = linear_forward(x, w);
          auto unfused = uniattn::gated_activation(gu.narrow(-1, 0, n), gu.narrow(-1, n, n), act);
          EXPECT_TRUE(at::equal(y, unfused)) << what << ": differs from gemv + gated";
        }
      }
  // Not one aligned row without grad: undefined, the caller runs linear + activation.
  auto bf = cuda(at::kBFloat16);
  auto w = at::randn({64, 512}, bf);
  EXPECT_FALSE(uniattn::gated_linear_forward(at::randn({2, 512}, bf), w, uniattn::Activation::Silu)
                   .defined());
  EXPECT_FALSE(uniattn::gated_linear_forward(at::randn({1, 512}, bf), w.narrow(0, 0, 63),
                                             uniattn::Activation::Silu)
                   .defined());
}

// Where the kernel does not apply, linear_forward is ATen's and the kernel never runs.
TEST(Gemv, OtherCallsTakeAten) {
  SKIP_WITHOUT_GPU();
  at::manual_seed(2);
  auto bf = cuda(at::kBFloat16);
  auto w = at::randn({256, 512}, bf) * 0.02;
  auto expect_aten = [&](const std::string& what, const at::Tensor& x, const at::Tensor& wt) {
    const uint64_t calls = kernel_call_count(KernelOp::Gemv);
    auto y = linear_forward(x, wt);
    EXPECT_EQ(kernel_call_count(KernelOp::Gemv), calls) << what;
    EXPECT_TRUE(at::equal(y, at::linear(x, wt))) << what;
  };
  expect_aten("2 rows", at::randn({2, 512}, bf), w);
  expect_aten("2 rows in a batch", at::randn({2, 1, 512}, bf), w);
  expect_aten("fp32", at::randn({1, 512}, cuda(at::kFloat)), w.to(at::kFloat));
  expect_aten("K % 8 != 0", at::randn({1, 510}, bf), w.narrow(1, 0, 510).contiguous());
  expect_aten("transposed weight", at::randn({1, 256}, bf), w.t());
  {
    // Under autocast at::linear computes in the autocast dtype (fp16 here): not the kernel's.
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kHalf);
    const uint64_t calls = kernel_call_count(KernelOp::Gemv);
    auto y = linear_forward(at::randn({1, 512}, bf), w);
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
    EXPECT_EQ(kernel_call_count(KernelOp::Gemv), calls) << "autocast";
    EXPECT_EQ(y.scalar_type(), at::kHalf);
  }
  {
    at::AutoGradMode grad(true);
    auto wg = w.clone().requires_grad_(true);
    const uint64_t calls = kernel_call_count(KernelOp::Gemv);
    auto y = linear_forward(at::randn({1, 512}, bf), wg);
    EXPECT_EQ(kernel_call_count(KernelOp::Gemv), calls) << "weight requiring grad";
    EXPECT_TRUE(y.requires_grad());
  }
}

TEST(Gemv, NaNInTheWeightReachesItsOutput) {
  SKIP_WITHOUT_GPU();
  auto bf = cuda(at::kBFloat16);
  auto w = at::randn({64, 4096}, bf) * 0.02;
  w[5][4000] = NAN;
  auto y = linear_forward(at::randn({1, 4096}, bf), w);
  auto nan = y.isnan();
  EXPECT_TRUE(nan[0][5].item<bool>());
  EXPECT_EQ(nan.sum().item<int64_t>(), 1);
}

}  // namespace
