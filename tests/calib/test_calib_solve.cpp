// The W_c solvers against scripts/calib_reference.py (numpy) on random statistics.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <vector>

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

// k folds of rows of X W* + noise: the statistics select_ridge_kfold takes, and the rows.
struct Folds {
  std::vector<RidgeFold> stats;
  std::vector<at::Tensor> x, d;
};

Folds make_folds(int64_t k, int64_t rows_per_fold, int64_t dim, double noise, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  auto w_true = at::randn({dim, 3}, gen, opt);
  Folds f;
  for (int64_t i = 0; i < k; ++i) {
    auto x = at::randn({rows_per_fold, dim}, gen, opt);
    auto d = at::matmul(x, w_true) + noise * at::randn({rows_per_fold, 3}, gen, opt);
    f.stats.push_back(
        {at::matmul(x.t(), x), at::matmul(x.t(), d), d.square().sum().item<double>()});
    f.x.push_back(x);
    f.d.push_back(d);
  }
  return f;
}

// The same cross-validation written from the rows: fit on the other folds' rows by the normal
// equations with lambda I, measure ||D_k - X_k W||^2 directly.
double row_level_choice(const Folds& f, const std::vector<double>& candidates) {
  std::vector<double> sums(candidates.size(), 0.0);
  for (size_t k = 0; k < f.x.size(); ++k) {
    std::vector<at::Tensor> xs, ds;
    for (size_t j = 0; j < f.x.size(); ++j)
      if (j != k) xs.push_back(f.x[j]), ds.push_back(f.d[j]);
    auto x = at::cat(xs), d = at::cat(ds);
    const double lambda_per_r = x.square().sum().item<double>() / double(x.size(1));
    for (size_t c = 0; c < candidates.size(); ++c) {
      auto a =
          at::matmul(x.t(), x) + candidates[c] * lambda_per_r * at::eye(x.size(1), x.options());
      auto w = at::linalg_solve(a, at::matmul(x.t(), d));
      sums[c] += (f.d[k] - at::matmul(f.x[k], w)).square().sum().item<double>();
    }
  }
  return candidates[std::min_element(sums.begin(), sums.end()) - sums.begin()];
}

TEST(CalibSolve, KfoldRidgeEqualsRowLevelCrossValidation) {
  const std::vector<double> cands = {0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  // Many tokens per dimension and little noise: no ridge helps. Few tokens per dimension and
  // much noise: a ridge wins. Both choices must equal the row-level computation's.
  const auto easy = make_folds(5, 200, 8, 0.01, 1);
  const auto hard = make_folds(5, 6, 24, 3.0, 2);
  const double r_easy = select_ridge_kfold(easy.stats, cands);
  const double r_hard = select_ridge_kfold(hard.stats, cands);
  EXPECT_EQ(r_easy, row_level_choice(easy, cands));
  EXPECT_EQ(r_hard, row_level_choice(hard, cands));
  EXPECT_LE(r_easy, 1e-3);
  EXPECT_GE(r_hard, 1e-2);
  EXPECT_THROW(select_ridge_kfold({easy.stats[0]}, cands), Error);
  EXPECT_THROW(select_ridge_kfold(easy.stats, {}), Error);
  EXPECT_THROW(select_ridge_kfold({easy.stats[0], hard.stats[0]}, cands), Error);
}

}  // namespace
}  // namespace uniattn
