// Solvers, statistics, batching and the activation store of the W_c calibration.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <numeric>

#include "internal.h"
#include "uniattn/error.h"

namespace uniattn {

const char* calib_mode_name(CalibMode m) { return m == CalibMode::Tokens ? "tokens" : "reference"; }

CalibMode parse_calib_mode(const std::string& name) {
  if (name == "tokens") return CalibMode::Tokens;
  if (name == "reference") return CalibMode::Reference;
  fail("unknown calibration mode '", name, "' (expected tokens or reference)");
}

at::Tensor solve_pinv(const at::Tensor& x, const at::Tensor& d, double rcond) {
  UNIATTN_CHECK(x.dim() == 2 && d.dim() == 2 && x.size(0) == d.size(0), "solve_pinv: X ", x.sizes(),
                " and D ", d.sizes(), " do not match");
  auto xd = x.to(at::kDouble), dd = d.to(at::kDouble);
  auto [u, s, vh] = at::linalg_svd(xd, /*full_matrices=*/false);
  const double smax = s.numel() ? s.max().item<double>() : 0.0;
  const double cut = rcond * static_cast<double>(std::max(x.size(0), x.size(1))) *
                     std::numeric_limits<double>::epsilon() * smax;
  auto sinv = at::where(s > cut, 1.0 / s, at::zeros_like(s));
  // V diag(s+) U^T D
  return at::matmul(vh.transpose(0, 1) * sinv.unsqueeze(0), at::matmul(u.transpose(0, 1), dd));
}

at::Tensor solve_ridge(const at::Tensor& xtx, const at::Tensor& xtd, double lambda) {
  UNIATTN_CHECK(
      xtx.dim() == 2 && xtx.size(0) == xtx.size(1) && xtd.dim() == 2 && xtd.size(0) == xtx.size(0),
      "solve_ridge: X^T X ", xtx.sizes(), " and X^T D ", xtd.sizes(), " do not match");
  UNIATTN_CHECK(lambda >= 0, "solve_ridge: negative ridge ", lambda);
  auto a = xtx.to(at::kDouble);
  if (lambda > 0) a = a + lambda * at::eye(a.size(0), a.options());
  auto b = xtd.to(at::kDouble);
  auto [l, info] = at::linalg_cholesky_ex(a);
  if (info.item<int64_t>() == 0) return at::cholesky_solve(b, l);
  // Singular (e.g. fewer tokens than dims and no ridge): minimum-norm solution of the normal
  // equations, which is the least-squares solution of X W = D.
  return at::matmul(at::linalg_pinv(a, 1e-12, /*hermitian=*/true), b);
}

double residual_sq(const at::Tensor& xtx, const at::Tensor& xtd, double dtd, const at::Tensor& w) {
  auto wd = w.to(at::kDouble);
  const double cross = (wd * xtd).sum().item<double>();
  const double quad = (wd * at::matmul(xtx, wd)).sum().item<double>();
  return std::max(0.0, dtd - 2.0 * cross + quad);
}

double ridge_lambda(const at::Tensor& xtx, double r) {
  return r * xtx.diagonal().sum().item<double>() / static_cast<double>(xtx.size(0));
}

double select_ridge_kfold(const std::vector<RidgeFold>& folds,
                          const std::vector<double>& candidates) {
  UNIATTN_CHECK(folds.size() >= 2 && !candidates.empty(),
                "select_ridge_kfold: needs at least 2 folds and a candidate");
  auto all_xtx = folds[0].xtx.clone(), all_xtd = folds[0].xtd.clone();
  for (size_t k = 1; k < folds.size(); ++k) {
    UNIATTN_CHECK(
        folds[k].xtx.sizes() == all_xtx.sizes() && folds[k].xtd.sizes() == all_xtd.sizes(),
        "select_ridge_kfold: fold ", k, " has other shapes");
    all_xtx.add_(folds[k].xtx);
    all_xtd.add_(folds[k].xtd);
  }
  std::vector<double> sums(candidates.size(), 0.0);
  for (const auto& f : folds) {
    const auto xtx = all_xtx - f.xtx, xtd = all_xtd - f.xtd;
    for (size_t c = 0; c < candidates.size(); ++c)
      sums[c] +=
          residual_sq(f.xtx, f.xtd, f.dtd, solve_ridge(xtx, xtd, ridge_lambda(xtx, candidates[c])));
  }
  return candidates[std::min_element(sums.begin(), sums.end()) - sums.begin()];
}

namespace calib {

void Stats::add(const at::Tensor& x, const at::Tensor& d, const at::Tensor& y) {
  auto xd = x.to(at::kDouble), dd = d.to(at::kDouble);
  auto a = at::matmul(xd.transpose(0, 1), xd), b = at::matmul(xd.transpose(0, 1), dd);
  if (!xtx.defined()) {
    xtx = a;
    xtd = b;
  } else {
    xtx.add_(a);
    xtd.add_(b);
  }
  dtd += dd.square().sum().item<double>();
  yty += y.to(at::kDouble).square().sum().item<double>();
  tokens += x.size(0);
}

void Stats::add(const Stats& o) {
  if (o.empty()) return;
  if (!xtx.defined()) {
    xtx = o.xtx.clone();
    xtd = o.xtd.clone();
  } else {
    xtx.add_(o.xtx);
    xtd.add_(o.xtd);
  }
  dtd += o.dtd;
  yty += o.yty;
  tokens += o.tokens;
}

std::vector<Batch> make_batches(const std::vector<const TokenizedExample*>& ex, Part part,
                                int64_t batch_tokens, int64_t pad_to, int32_t pad_id,
                                at::Device device) {
  std::vector<size_t> order(ex.size());
  std::iota(order.begin(), order.end(), 0);
  // Longest first: the first batch shows the peak memory at once.
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return ex[a]->ids.size() > ex[b]->ids.size(); });
  std::vector<Batch> out;
  size_t i = 0;
  while (i < order.size()) {
    const int64_t len = pad_to > 0 ? pad_to : static_cast<int64_t>(ex[order[i]]->ids.size());
    const int64_t rows = std::max<int64_t>(1, batch_tokens / std::max<int64_t>(len, 1));
    const size_t n = std::min<size_t>(rows, order.size() - i);
    auto ids = at::full({static_cast<int64_t>(n), len}, pad_id, at::kLong);
    auto valid = at::zeros({static_cast<int64_t>(n), len}, at::kBool);
    auto lm = at::zeros({static_cast<int64_t>(n), len}, at::kBool);
    auto ia = ids.accessor<int64_t, 2>();
    auto va = valid.accessor<bool, 2>();
    auto la = lm.accessor<bool, 2>();
    Batch b;
    b.part = part;
    for (size_t r = 0; r < n; ++r) {
      const auto& e = *ex[order[i + r]];
      const int64_t m = std::min<int64_t>(len, static_cast<int64_t>(e.ids.size()));
      for (int64_t t = 0; t < m; ++t) {
        ia[r][t] = e.ids[t];
        va[r][t] = true;
        la[r][t] = e.loss_mask[t] != 0;
      }
      b.real_tokens += m;
    }
    b.ids = ids.to(device);
    b.valid = valid.to(device);
    b.loss_mask = lm.to(device);
    out.push_back(std::move(b));
    i += n;
  }
  return out;
}

ActivationStore::~ActivationStore() {
  for (auto& [k, e] : entries_)
    if (!e.file.empty()) std::filesystem::remove(e.file);
}

void ActivationStore::drop(Entry& e) {
  if (e.t.defined()) in_memory_ -= e.t.nbytes();
  if (!e.file.empty()) {
    std::filesystem::remove(e.file);
    spilled_ -= at::elementSize(e.dtype) *
                std::accumulate(e.shape.begin(), e.shape.end(), int64_t{1}, std::multiplies<>());
  }
  e = Entry{};
}

void ActivationStore::put(const std::string& name, int64_t batch, const at::Tensor& t) {
  auto& e = entries_[{name, batch}];
  drop(e);
  e.shape = t.sizes().vec();
  e.dtype = t.scalar_type();
  e.device = t.device();
  const std::size_t n = t.nbytes();
  if (in_memory_ + n <= budget_) {
    e.t = t;
    in_memory_ += n;
    return;
  }
  std::filesystem::create_directories(dir_);
  e.file = dir_ / (name + "_" + std::to_string(batch) + ".bin");
  auto c = t.contiguous().to(at::kCPU);
  std::FILE* f = std::fopen(e.file.c_str(), "wb");
  UNIATTN_CHECK(f, e.file.string(), ": cannot open the spill file for writing");
  const bool ok = std::fwrite(c.data_ptr(), 1, n, f) == n;
  const bool closed = std::fclose(f) == 0;
  UNIATTN_CHECK(ok && closed, e.file.string(), ": writing ", n, " bytes failed (disk full?)");
  spilled_ += n;
}

at::Tensor ActivationStore::get(const std::string& name, int64_t batch) const {
  auto it = entries_.find({name, batch});
  UNIATTN_CHECK(it != entries_.end(), "calibration: no stored activation ", name, "[", batch, "]");
  const auto& e = it->second;
  if (e.t.defined()) return e.t;
  auto t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
  std::FILE* f = std::fopen(e.file.c_str(), "rb");
  UNIATTN_CHECK(f, e.file.string(), ": cannot open the spill file");
  const bool ok = std::fread(t.data_ptr(), 1, t.nbytes(), f) == t.nbytes();
  std::fclose(f);
  UNIATTN_CHECK(ok, e.file.string(), ": spill file is short");
  return t.to(e.device);
}

bool ActivationStore::has(const std::string& name, int64_t batch) const {
  return entries_.count({name, batch}) > 0;
}

void ActivationStore::erase(const std::string& name) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->first.first == name) {
      drop(it->second);
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace calib
}  // namespace uniattn
