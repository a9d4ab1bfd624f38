// W_c calibration of Gemma-2 and Gemma-3 (sandwich norms): the target is the attention output
// before the post-attention norm. Compared with tests/fixtures/make_calib_gemma_fixtures.py, which
// builds the unified model from transformers' modules in fp64 and solves each follower with
// torch.linalg.lstsq; planted compensations are recovered; the calibrated model is no worse on
// held-out examples than W_c = 0 (the uncalibrated init) or W_c = I; and it trains and reloads.
#include <ATen/ATen.h>

#include <fstream>

#include "model/decoder_layer.h"
#include "model/model_test_util.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/error.h"
#include "uniattn/eval/response_loss.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

std::filesystem::path dir(const std::string& name) { return test::data_dir() / "calib" / name; }

std::string spec_text(const std::string& name) {
  std::ifstream f(dir(name) / "spec.txt");
  std::string s;
  std::getline(f, s);
  return s;
}

CausalLM load(const std::string& name, bool unified) {
  LoadOptions o;
  if (unified) o.uniattn = UniAttnSpec::parse(Variant::UniAttn, spec_text(name), 6);
  return load_model(dir(name), o);
}

// Rows of ids [N, L] (-1 = none) and loss mask [N, L] -> examples.
std::vector<TokenizedExample> examples(const at::Tensor& ids, const at::Tensor& mask) {
  std::vector<TokenizedExample> out;
  for (int64_t i = 0; i < ids.size(0); ++i) {
    TokenizedExample e;
    for (int64_t t = 0; t < ids.size(1) && ids[i][t].item<int64_t>() >= 0; ++t) {
      e.ids.push_back(static_cast<int32_t>(ids[i][t].item<int64_t>()));
      e.loss_mask.push_back(mask[i][t].item<int64_t>() != 0);
    }
    out.push_back(std::move(e));
  }
  return out;
}

at::Tensor& wc(CausalLM& m, int64_t l) { return m->layer(l)->self_attn->w_c->weight; }

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).norm() / b.to(at::kDouble).norm()).item<double>();
}

std::vector<int64_t> followers(CausalLM& m) {
  std::vector<int64_t> out;
  for (int64_t l = 0; l < m->config().num_layers; ++l)
    if (m->layer(l)->self_attn->w_c) out.push_back(l);
  return out;
}

class GemmaCalib : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    oracle_ = test::read_tensors(dir(GetParam()) / "oracle.safetensors");
    calib_ = examples(oracle_.at("calib_ids"), oracle_.at("calib_mask"));
    held_ = examples(oracle_.at("heldout_ids"), oracle_.at("heldout_mask"));
  }
  std::map<std::string, at::Tensor> oracle_;
  std::vector<TokenizedExample> calib_, held_;
};

TEST_P(GemmaCalib, EqualsTransformersLeastSquaresOnTheAttentionOutput) {
  auto base = load(GetParam(), false), uni = load(GetParam(), true);
  CalibOptions o;
  o.ridge = 0.0;  // plain least squares, as the oracle's lstsq
  o.batch_tokens = 200;
  auto r = calibrate(base, uni, calib_, held_, o);
  const auto fs = followers(uni);
  ASSERT_EQ(r.followers.size(), fs.size());
  for (auto l : fs) {
    const auto& want = oracle_.at("w_c." + std::to_string(l));
    EXPECT_LT(rel(wc(uni, l), want), 1e-4) << "layer " << l;
  }
  for (const auto& f : r.followers) {
    EXPECT_GT(f.calib_err, 1e-2) << "layer " << f.layer;  // a real unification error to fix
    EXPECT_LT(f.calib_rel_residual, 1.0) << "layer " << f.layer;
  }
  const auto& losses = oracle_.at("losses");  // base, W_c = 0, solved W_c (fp64 transformers)
  EXPECT_NEAR(r.loss_base, losses[0].item<double>(), 1e-4);
  EXPECT_NEAR(r.loss_unified_no_wc, losses[1].item<double>(), 1e-4);
  EXPECT_NEAR(r.loss_unified_wc, losses[2].item<double>(), 1e-4);
  // The calibrated model is no worse than the uncalibrated init (W_c = 0) nor W_c = I.
  EXPECT_LE(r.loss_unified_wc, r.loss_unified_no_wc);
  {
    at::NoGradGuard ng;
    for (auto l : fs) wc(uni, l).copy_(at::eye(wc(uni, l).size(0)));
  }
  const double identity = response_loss(uni, held_, {.max_len = 0}).loss;
  EXPECT_LE(r.loss_unified_wc, identity);
}

TEST_P(GemmaCalib, RecoversPlantedCompensation) {
  // "Base" = the unified model with planted W_c: inside the post-attention norm, the pre-norm
  // difference at each follower is exactly X W*^T once the earlier followers are recovered.
  auto base = load(GetParam(), true), uni = load(GetParam(), true);
  at::manual_seed(9);
  {
    at::NoGradGuard ng;
    for (auto l : followers(base)) wc(base, l).copy_(at::randn({64, 64}) * 0.05);
  }
  CalibOptions o;
  o.ridge = 0.0;
  o.batch_tokens = 150;
  o.memory_budget_bytes = 100 << 10;  // interleaved leaders' q/k spill to disk too
  o.work_dir = test::scratch_dir();
  auto r = calibrate(base, uni, calib_, held_, o);
  for (auto l : followers(uni)) EXPECT_LT(rel(wc(uni, l), wc(base, l)), 1e-4) << "layer " << l;
  for (const auto& f : r.followers) EXPECT_LT(f.heldout_rel_residual, 1e-4) << "layer " << f.layer;
  EXPECT_NEAR(r.loss_unified_wc, r.loss_base, 1e-5);
}

TEST_P(GemmaCalib, CalibratedCheckpointReloadsAndTrains) {
  auto base = load(GetParam(), false), uni = load(GetParam(), true);
  CalibOptions o;
  o.ridge = 1e-4;
  calibrate(base, uni, calib_, {}, o);
  const auto out = test::scratch_dir();
  save_model(uni, out, at::kFloat);
  auto back = load_model(out);
  EXPECT_EQ(back->config().uniattn.describe(), uni->config().uniattn.describe());
  for (auto l : followers(uni)) EXPECT_EQ(rel(wc(back, l), wc(uni, l)), 0.0) << "layer " << l;
  // Gradients flow into W_c through Gemma's post-attention norm.
  std::vector<int64_t> ids(calib_[0].ids.begin(), calib_[0].ids.end());
  auto t = at::tensor(ids, at::kLong).unsqueeze(0);
  auto logits = back->forward(t);
  auto loss = at::cross_entropy_loss(logits[0].narrow(0, 0, t.size(1) - 1),
                                     t[0].narrow(0, 1, t.size(1) - 1));
  loss.backward();
  for (auto l : followers(back)) {
    const auto& g = wc(back, l).grad();
    ASSERT_TRUE(g.defined()) << "layer " << l;
    EXPECT_GT(g.abs().sum().item<double>(), 0.0) << "layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, GemmaCalib, ::testing::Values("gemma2", "gemma3"));

}  // namespace
}  // namespace uniattn
