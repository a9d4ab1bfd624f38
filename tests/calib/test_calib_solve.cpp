// The W_c solvers against scripts/calib_reference.py (numpy) on random statistics.
#include <ATen/ATen.h>

#include "model/model_test_util.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  auto ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  return ((ad - bd).norm() / bd.norm()).item<double>();
}

TEST(CalibSolve, ReferenceModeMatchesNumpy) {
  for (const char* name : {"ref_tall", "ref_wide"}) {
    auto t = test::read_tensors(test::data_dir() / "calib" / (std::string(name) + ".safetensors"));
    auto xm = t["x"].mean(0), dm = (t["y"] - t["y_prime"]).mean(0);
    auto w = solve_pinv(xm, dm);  // W [d, k]; W_c = W^T
    EXPECT_LT(rel_diff(w.t(), t["w_c"]), 1e-9) << name;
  }
}

TEST(CalibSolve, RidgeMatchesNumpy) {
  auto t = test::read_tensors(test::data_dir() / "calib" / "tokens.safetensors");
  const double r = t["ridge"].item<double>();
  auto x = t["x"];
  auto xtx = at::matmul(x.t(), x);
  const double lambda = r * xtx.diagonal().sum().item<double>() / x.size(1);
  auto w = solve_ridge(xtx, at::matmul(x.t(), t["d"]), lambda);
  EXPECT_LT(rel_diff(w.t(), t["w_c"]), 1e-9);
  // The residual from statistics equals the direct one.
  const double direct = (t["d"] - at::matmul(x, w)).square().sum().item<double>();
  const double dtd = t["d"].square().sum().item<double>();
  EXPECT_NEAR(residual_sq(xtx, at::matmul(x.t(), t["d"]), dtd, w), direct, 1e-8 * dtd);
}

TEST(CalibSolve, SingularSystemWithoutRidgeGivesLeastSquares) {
  auto x = at::randn({5, 8}, at::kDouble);  // fewer rows than dims: X^T X is singular
  auto d = at::randn({5, 3}, at::kDouble);
  auto w = solve_ridge(at::matmul(x.t(), x), at::matmul(x.t(), d), 0.0);
  EXPECT_LT((at::matmul(x, w) - d).abs().max().item<double>(), 1e-8);
  EXPECT_THROW(solve_ridge(at::eye(3, at::kDouble), at::zeros({4, 2}, at::kDouble), 0.0), Error);
  EXPECT_THROW(solve_ridge(at::eye(3, at::kDouble), at::zeros({3, 2}, at::kDouble), -1.0), Error);
}

}  // namespace
}  // namespace uniattn
