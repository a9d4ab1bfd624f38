// The one-pass W_c calibration on the tiny LLaMA fixture: planted errors are recovered, the depth
// order matches a brute-force sequential computation, reference mode matches
// scripts/calib_reference.py, and an interrupted run resumes to the same result.
#include <ATen/ATen.h>

#include <cstdlib>
#include <random>

#include "model/decoder_layer.h"
#include "model/forward_state.h"
#include "model/load/tensor_bytes.h"
#include "model/model_test_util.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/error.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

const std::vector<int64_t> kFollowers = {2, 3, 5};

UniAttnSpec spec() { return UniAttnSpec::parse(Variant::UniAttn, "1-3;4-5", 6); }

CausalLM load(bool unified) {
  LoadOptions o;
  if (unified) o.uniattn = spec();
  return load_model(test::data_dir() / "models" / "llama", o);
}

std::vector<TokenizedExample> examples(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<TokenizedExample> out;
  for (int i = 0; i < n; ++i) {
    TokenizedExample e;
    const int len = 12 + static_cast<int>(rng() % 29);
    for (int t = 0; t < len; ++t) {
      e.ids.push_back(static_cast<int32_t>(rng() % 97));
      e.loss_mask.push_back(t >= len / 2);
    }
    e.prompt_tokens = len / 2;
    out.push_back(e);
  }
  return out;
}

at::Tensor& wc(CausalLM& m, int64_t l) { return m->layer(l)->self_attn->w_c->weight; }

// Full single-example forward; returns (X, H) = (normed input, post-attention residual) of l.
std::pair<at::Tensor, at::Tensor> capture(CausalLM& m, const std::vector<int32_t>& ids32,
                                          int64_t l) {
  at::NoGradGuard ng;
  std::vector<int64_t> v(ids32.begin(), ids32.end());
  auto ids = at::tensor(v, at::kLong).unsqueeze(0);
  auto s = m->begin(ids, nullptr, ForwardOptions{});
  s->captured_attn_residual.resize(6);
  s->captured_normed_input.resize(6);
  s->capture = true;
  auto x = m->embed(ids);
  for (int64_t k = 0; k <= l; ++k) x = m->run_layer(k, x, *s);
  return {s->captured_normed_input[l][0].to(at::kDouble),
          s->captured_attn_residual[l][0].to(at::kDouble)};
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).norm() / b.to(at::kDouble).norm()).item<double>();
}

TEST(Calib, RecoversPlantedCompensation) {
  // The "base" is the unified model with planted W_c: Y - Y' = X W*^T exactly at each follower
  // once the earlier ones are recovered.
  auto base = load(true), uni = load(true);
  at::manual_seed(3);
  std::map<int64_t, at::Tensor> planted;
  {
    at::NoGradGuard ng;
    for (auto l : kFollowers) wc(base, l).copy_(at::randn({64, 64}) * 0.05);
  }
  for (auto l : kFollowers) planted[l] = wc(base, l).clone();
  CalibOptions o;
  o.ridge = 0.0;
  o.batch_tokens = 128;
  auto r = calibrate(base, uni, examples(24, 1), examples(6, 2), o);
  ASSERT_EQ(r.followers.size(), kFollowers.size());
  for (auto l : kFollowers) EXPECT_LT(rel(wc(uni, l), planted[l]), 1e-4) << "layer " << l;
  for (const auto& f : r.followers) {
    EXPECT_GT(f.calib_err, 1e-3);
    EXPECT_LT(f.calib_rel_residual, 1e-4);
    EXPECT_LT(f.heldout_rel_residual, 1e-4);
  }
  EXPECT_NEAR(r.loss_unified_wc, r.loss_base, 1e-4);
  EXPECT_GT(std::abs(r.loss_unified_no_wc - r.loss_base), 1e-3);
}

TEST(Calib, DepthOrderMatchesBruteForceSequentialSolve) {
  const auto cal = examples(20, 5);
  const double ridge = 1e-3;
  auto base = load(false), uni = load(true);
  CalibOptions o;
  o.ridge = ridge;
  o.batch_tokens = 100;
  o.memory_budget_bytes = 200 << 10;  // forces part of the activations to spill to disk
  o.work_dir = test::scratch_dir();
  calibrate(base, uni, cal, {}, o);

  // Brute force: for each follower in order, full forwards per example, solve, install.
  auto bf = load(true);
  auto solve_at = [&](int64_t l) {
    auto xtx = at::zeros({64, 64}, at::kDouble), xtd = at::zeros({64, 64}, at::kDouble);
    for (const auto& e : cal) {
      auto [x, yp] = capture(bf, e.ids, l);
      auto y = capture(base, e.ids, l).second;
      xtx += at::matmul(x.t(), x);
      xtd += at::matmul(x.t(), y - yp);
    }
    const double lambda = ridge * xtx.diagonal().sum().item<double>() / 64;
    return at::linalg_solve(xtx + lambda * at::eye(64, at::kDouble), xtd).t();
  };
  for (auto l : kFollowers) {
    auto w = solve_at(l);
    EXPECT_LT(rel(wc(uni, l), w), 1e-4) << "layer " << l;
    at::NoGradGuard ng;
    wc(bf, l).copy_(w);
  }
  // Each later follower's solution depends on the earlier ones being active.
  {
    at::NoGradGuard ng;
    wc(bf, 2).zero_();
    wc(bf, 3).zero_();
  }
  EXPECT_GT(rel(solve_at(3), wc(uni, 3)), 1e-2);
  EXPECT_GT(rel(solve_at(5), wc(uni, 5)), 1e-3);
}

TEST(Calib, ReferenceModeMatchesNumpyFormula) {
  const auto cal = examples(9, 11);
  const int64_t pad_to = 48;
  auto base = load(false), uni = load(true), zero = load(true);
  CalibOptions o;
  o.mode = CalibMode::Reference;
  o.pad_to = pad_to;
  o.pad_id = 0;
  o.batch_tokens = 3 * pad_to;
  auto r = calibrate(base, uni, cal, {}, o);
  ASSERT_EQ(r.followers.size(), 3u);
  // First follower: pad every example to 48 tokens, capture, and hand it to numpy.
  std::vector<at::Tensor> xs, ys, yps;
  for (const auto& e : cal) {
    auto ids = e.ids;
    ids.resize(pad_to, 0);
    auto [x, yp] = capture(zero, ids, 2);
    xs.push_back(x);
    yps.push_back(yp);
    ys.push_back(capture(base, ids, 2).second);
  }
  auto dir = test::scratch_dir();
  std::vector<at::Tensor> keep(3);
  auto X = at::stack(xs).contiguous(), Y = at::stack(ys).contiguous(),
       YP = at::stack(yps).contiguous();
  write_safetensors(dir / "in.safetensors",
                    {tensor_to_write("x", X, keep[0]), tensor_to_write("y", Y, keep[1]),
                     tensor_to_write("y_prime", YP, keep[2])});
  const char* py = std::getenv("UNIATTN_PYTHON");
  ASSERT_TRUE(py) << "UNIATTN_PYTHON is not set";
  const std::string cmd =
      std::string(py) + " " + (test::source_dir() / "scripts" / "calib_reference.py").string() +
      " reference " + (dir / "in.safetensors").string() + " " + (dir / "out.safetensors").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto want = test::read_tensors(dir / "out.safetensors")["w_c"];
  EXPECT_LT(rel(wc(uni, 2), want), 1e-3);
}

TEST(Calib, ResumesAfterInterruptionWithTheSameResult) {
  const auto cal = examples(16, 21), held = examples(4, 22);
  auto base = load(false);
  CalibOptions o;
  o.batch_tokens = 160;  // ridge auto: exercises the cross-validation folds (16 examples, 5 folds)
  auto full_uni = load(true);
  auto full = calibrate(base, full_uni, cal, held, o);

  o.work_dir = test::scratch_dir();
  auto uni = load(true);
  auto o_stop = o;
  o_stop.progress = [](const CalibProgress& p) {
    if (p.phase == "layer-done" && p.layer == 3) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(calibrate(base, uni, cal, held, o_stop), std::runtime_error);
  auto uni2 = load(true);
  auto resumed = calibrate(base, uni2, cal, held, o);
  EXPECT_EQ(resumed.resumed_layers, 4);
  for (auto l : kFollowers) EXPECT_EQ(rel(wc(uni2, l), wc(full_uni, l)), 0.0) << "layer " << l;
  ASSERT_EQ(resumed.followers.size(), full.followers.size());
  for (size_t i = 0; i < full.followers.size(); ++i)
    EXPECT_EQ(resumed.followers[i].ridge, full.followers[i].ridge);
  EXPECT_DOUBLE_EQ(resumed.loss_unified_wc, full.loss_unified_wc);
  // Progress of another run is refused.
  auto o2 = o;
  o2.ridge = 0.5;
  auto uni3 = load(true);
  EXPECT_THROW(calibrate(base, uni3, cal, held, o2), Error);
}

TEST(Calib, Bf16ModelsRecoverPlantedCompensationApproximately) {
  LoadOptions lo;
  lo.dtype = at::kBFloat16;
  lo.uniattn = spec();
  auto base = load_model(test::data_dir() / "models" / "llama", lo);
  auto uni = load_model(test::data_dir() / "models" / "llama", lo);
  at::manual_seed(4);
  {
    at::NoGradGuard ng;
    for (auto l : kFollowers) wc(base, l).copy_(at::randn({64, 64}) * 0.05);
  }
  CalibOptions o;
  o.ridge = 0.0;
  auto r = calibrate(base, uni, examples(24, 41), examples(6, 42), o);
  for (auto l : kFollowers) EXPECT_LT(rel(wc(uni, l), wc(base, l)), 0.1) << "layer " << l;
  EXPECT_LT(std::abs(r.loss_unified_wc - r.loss_base),
            0.2 * std::abs(r.loss_unified_no_wc - r.loss_base));
}

TEST(Calib, SavedCheckpointLoadsAsIs) {
  auto base = load(false), uni = load(true);
  CalibOptions o;
  o.ridge = 1e-4;
  calibrate(base, uni, examples(12, 31), {}, o);
  const auto dir = test::scratch_dir();
  save_model(uni, dir, at::kFloat);
  auto back = load_model(dir);
  EXPECT_EQ(back->config().uniattn.describe(), spec().describe());
  for (auto l : kFollowers) EXPECT_EQ(rel(wc(back, l), wc(uni, l)), 0.0) << "layer " << l;
  auto ids = at::randint(0, 97, {1, 20}, at::kLong);
  at::NoGradGuard ng;
  EXPECT_EQ(test::max_abs_diff(back->forward(ids), uni->forward(ids)), 0.0);
}

TEST(Calib, RejectsBadInputs) {
  auto base = load(false), uni = load(true);
  CalibOptions o;
  EXPECT_THROW(calibrate(base, uni, {}, {}, o), Error);
  auto plain = load(false);
  EXPECT_THROW(calibrate(base, plain, examples(4, 1), {}, o), Error);
}

}  // namespace
}  // namespace uniattn
