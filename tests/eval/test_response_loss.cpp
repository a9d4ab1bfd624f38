// The held-out response loss (uniattn/eval/response_loss.h): equal to an independent fp64
// per-example computation, independent of batching, the documented truncation rule, and the bug
// it fixed: calibration, training evaluation and uniattn-eval report the same number for the same
// records and model when run with their defaults.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <random>

#include "model/model_test_util.h"
#include "test_util.h"
#include "train/internal.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/error.h"
#include "uniattn/eval/response_loss.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

constexpr int64_t kNoCut = std::numeric_limits<int64_t>::max();

// A tiny random LLaMA with logits spread enough that tokens differ clearly.
CausalLM tiny_model() {
  at::manual_seed(7);
  CausalLM m(test::tiny_llama_config(2));
  at::NoGradGuard ng;
  for (auto& p : m->named_parameters())
    if (p.key().find("norm") == std::string::npos) p.value().normal_(0.0, 0.3);
  return m;
}

// Random examples: lengths 1..60, the target mask on a random suffix (and sometimes on position
// 0, which must be ignored).
std::vector<TokenizedExample> random_examples(int n, unsigned seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<TokenizedExample> out;
  for (int i = 0; i < n; ++i) {
    TokenizedExample e;
    const int len = 1 + static_cast<int>(rng() % 60);
    const int prompt = static_cast<int>(rng() % (len + 1));
    for (int t = 0; t < len; ++t) {
      e.ids.push_back(static_cast<int32_t>(rng() % vocab));
      e.loss_mask.push_back(t >= prompt || (t == 0 && i % 5 == 0));
    }
    e.prompt_tokens = prompt;
    out.push_back(std::move(e));
  }
  return out;
}

// The definition written out the slow way: one full forward per example, fp64 log-softmax, the
// first max_len tokens, position 0 never scored, the mean over all scored tokens.
struct Oracle {
  double loss = std::numeric_limits<double>::quiet_NaN();
  int64_t tokens = 0, examples = 0;
};
Oracle oracle(CausalLM& model, const std::vector<TokenizedExample>& ex, int64_t max_len) {
  at::NoGradGuard ng;
  double nll = 0;
  Oracle o;
  for (const auto& e : ex) {
    const auto len = std::min<int64_t>(static_cast<int64_t>(e.ids.size()), max_len);
    int64_t n = 0;
    for (int64_t i = 1; i < len; ++i) n += e.loss_mask[i] != 0;
    if (n == 0) continue;
    std::vector<int64_t> ids(e.ids.begin(), e.ids.begin() + len);
    const auto lp = at::log_softmax(
        model->forward(at::tensor(ids, at::kLong).unsqueeze(0))[0].to(at::kDouble), -1);
    for (int64_t i = 1; i < len; ++i)
      if (e.loss_mask[i]) nll -= lp[i - 1][ids[i]].item<double>();
    o.tokens += n;
    ++o.examples;
  }
  o.loss = nll / static_cast<double>(o.tokens);
  return o;
}

TEST(ResponseLoss, EqualsAnIndependentFp64Computation) {
  auto model = tiny_model();
  const auto ex = random_examples(40, 1, model->config().vocab_size);
  for (int64_t max_len : {int64_t{0}, int64_t{17}}) {
    ResponseLossOptions o;
    o.max_len = max_len;
    const auto r = response_loss(model, ex, o);
    const auto want = oracle(model, ex, max_len > 0 ? max_len : kNoCut);
    EXPECT_EQ(r.examples, want.examples) << max_len;
    EXPECT_EQ(r.target_tokens, want.tokens) << max_len;
    EXPECT_EQ(r.examples + r.skipped, static_cast<int64_t>(ex.size()));
    EXPECT_NEAR(r.loss, want.loss, 1e-6 * want.loss) << max_len;
    EXPECT_NEAR(r.perplexity, std::exp(want.loss), 1e-6 * r.perplexity) << max_len;
  }
}

TEST(ResponseLoss, BatchingDoesNotChangeTheResult) {
  auto model = tiny_model();
  const auto ex = random_examples(40, 2, model->config().vocab_size);
  ResponseLossOptions o;
  o.batch_tokens = 1 << 20;  // one batch
  const auto one = response_loss(model, ex, o);
  for (int64_t bt : {1, 7, 64, 200}) {
    o.batch_tokens = bt;
    o.pad_id = static_cast<int32_t>(bt % model->config().vocab_size);
    int64_t calls = 0, last = 0;
    o.progress = [&](int64_t done, int64_t total) {
      ++calls;
      EXPECT_GT(done, last);
      EXPECT_EQ(total, one.examples);
      last = done;
    };
    const auto r = response_loss(model, ex, o);
    EXPECT_EQ(r.target_tokens, one.target_tokens);
    EXPECT_NEAR(r.loss, one.loss, 1e-6 * one.loss) << "batch_tokens " << bt;
    EXPECT_EQ(last, one.examples);
    if (bt == 1) {
      EXPECT_EQ(calls, one.examples);  // one example per batch
    }
  }
}

TEST(ResponseLoss, CutsToTheFirstMaxLenTokensAndCountsWhatItCuts) {
  auto model = tiny_model();
  // 10 tokens, prompt 4: targets at 4..9.
  TokenizedExample a;
  for (int t = 0; t < 10; ++t) {
    a.ids.push_back(3 + t);
    a.loss_mask.push_back(t >= 4);
  }
  TokenizedExample b = a;  // prompt 8: targets at 8, 9 only
  std::fill(b.loss_mask.begin(), b.loss_mask.end(), 0);
  b.loss_mask[8] = b.loss_mask[9] = 1;
  TokenizedExample c;  // short, not cut, but cut when it was tokenised
  c.ids = {5, 6, 7};
  c.loss_mask = {0, 1, 1};
  c.truncated = true;
  const std::vector<TokenizedExample> ex = {a, b, c};

  ResponseLossOptions o;
  o.max_len = 6;
  const auto r = response_loss(model, ex, o);
  EXPECT_EQ(r.examples, 2);               // a (targets 4, 5) and c; b has none left
  EXPECT_EQ(r.skipped, 1);                // b
  EXPECT_EQ(r.truncated, 3);              // a and b cut here, c flagged
  EXPECT_EQ(r.target_tokens, 2 + 2);      // a: 4, 5; c: 1, 2
  EXPECT_EQ(r.cut_target_tokens, 4 + 2);  // a: 6..9; b: 8, 9
  // The same as scoring the examples cut by hand, without a limit.
  auto a6 = a, b6 = b;
  for (auto* e : {&a6, &b6}) {
    e->ids.resize(6);
    e->loss_mask.resize(6);
  }
  o.max_len = 0;
  const auto cut = response_loss(model, {a6, b6, c}, o);
  EXPECT_EQ(cut.target_tokens, r.target_tokens);
  EXPECT_NEAR(cut.loss, r.loss, 1e-6 * r.loss);
  EXPECT_NEAR(r.loss, oracle(model, ex, 6).loss, 1e-6 * r.loss);
  // Nothing left to score: NaN, not an error.
  o.max_len = 2;
  const auto none = response_loss(model, {b}, o);
  EXPECT_EQ(none.target_tokens, 0);
  EXPECT_TRUE(std::isnan(none.loss));
  EXPECT_TRUE(std::isnan(response_loss(model, {}).loss));
}

TEST(ResponseLoss, RejectsBadInputs) {
  auto model = tiny_model();
  const int32_t v = static_cast<int32_t>(model->config().vocab_size);
  const TokenizedExample ok{{1, 2, 3}, {0, 1, 1}};
  ResponseLossOptions o;
  o.max_len = 1;
  EXPECT_THROW(response_loss(model, {ok}, o), Error);
  o.max_len = -1;
  EXPECT_THROW(response_loss(model, {ok}, o), Error);
  o = {};
  o.batch_tokens = 0;
  EXPECT_THROW(response_loss(model, {ok}, o), Error);
  o = {};
  o.pad_id = v;
  EXPECT_THROW(response_loss(model, {ok}, o), Error);
  EXPECT_THROW(response_loss(model, {TokenizedExample{{1, 2}, {0}}}), Error);
  EXPECT_THROW(response_loss(model, {TokenizedExample{{1, v}, {0, 1}}}), Error);
  // An id past max_len is never read.
  o = {};
  o.max_len = 2;
  EXPECT_NO_THROW(response_loss(model, {TokenizedExample{{1, 2, v}, {0, 1, 1}}}, o));
}

// ---- the three callers on the same records (eval fixture: tiny LLaMA + byte-level BPE) ----

std::filesystem::path eval_model_dir() { return test::data_dir() / "eval" / "model"; }

// Alpaca records: short ones, one whose response runs past 1024 tokens, one whose prompt alone
// does (no target token left within 1024).
std::vector<Record> records() {
  std::vector<Record> r;
  const char* words[] = {"fever", "dose", "the", "patient", "blood", "of", "heart", "and"};
  std::mt19937 rng(3);
  auto text = [&](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += std::string(i ? " " : "") + words[rng() % 8];
    return s;
  };
  for (int i = 0; i < 6; ++i)
    r.push_back({{"instruction", text(5 + i * 7)},
                 {"input", i % 2 ? text(9) : ""},
                 {"output", text(10 + i * 13)}});
  r.push_back({{"instruction", text(30)}, {"input", ""}, {"output", text(700)}});
  r.push_back({{"instruction", text(900)}, {"input", ""}, {"output", text(20)}});
  return r;
}

TEST(ResponseLossCallers, CalibrationTrainingAndEvalAgreeWithTheirDefaults) {
  const auto tok = load_tokenizer(eval_model_dir());
  const auto enc = text_encoder(*tok);
  const auto pt = PromptTemplate::alpaca();
  const auto recs = records();

  // uniattn-eval: records tokenised whole, the rule applied by response_loss with its default.
  const auto whole = tokenize_records(recs, pt, enc, kNoCut);
  int64_t longest = 0;
  for (const auto& e : whole) longest = std::max<int64_t>(longest, e.ids.size());
  ASSERT_GT(longest, kDefaultResponseLossMaxLen) << "the records must exercise truncation";
  auto base = load_model(eval_model_dir());
  const auto eval_base = response_loss(base, whole, {});
  EXPECT_EQ(eval_base.truncated, 2);
  EXPECT_EQ(eval_base.skipped, 1);
  EXPECT_GT(eval_base.cut_target_tokens, 0);
  // Scoring the whole records (what uniattn-eval did before, at the model maximum) differs: this
  // is the discrepancy being fixed.
  ResponseLossOptions uncut;
  uncut.max_len = 0;
  EXPECT_GT(std::abs(response_loss(base, whole, uncut).loss - eval_base.loss), 1e-3);

  // uniattn-calib: records tokenised at its default --max-len (1024), calibrate() scores them.
  const auto held = tokenize_records(recs, pt, enc, 1024);
  LoadOptions lo;
  lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, "1-3", base->config().num_layers);
  auto unified = load_model(eval_model_dir(), lo);
  share_weights(base, unified);
  const auto eval_no_wc = response_loss(unified, whole, {});
  CalibOptions co;
  co.pad_id = tok->pad_id().value_or(*enc.eos);
  co.ridge = 1e-4;
  const auto cr = calibrate(base, unified, held, held, co);
  const auto eval_wc = response_loss(unified, whole, {});
  EXPECT_EQ(cr.heldout_target_tokens, eval_base.target_tokens);
  EXPECT_NEAR(cr.loss_base, eval_base.loss, 1e-5 * eval_base.loss);
  EXPECT_NEAR(cr.loss_unified_no_wc, eval_no_wc.loss, 1e-5 * eval_no_wc.loss);
  EXPECT_NEAR(cr.loss_unified_wc, eval_wc.loss, 1e-5 * eval_wc.loss);
  EXPECT_GT(std::abs(eval_wc.loss - eval_no_wc.loss), 1e-6);  // W_c did something

  // Training evaluation: data.eval loaded by the trainer's data plan (data.max_length default),
  // scored with the options the trainer passes.
  const auto dir = test::scratch_dir();
  {
    std::ofstream f(dir / "held.jsonl");
    for (const auto& r : recs) {
      nlohmann::json j;
      for (const auto& [k, v] : r) j[k] = v;
      f << j.dump() << "\n";
    }
  }
  const auto c = TrainConfig::parse(
      "output_dir: " + (dir / "out").string() + "\nmodel: {path: " + eval_model_dir().string() +
      ", variant: none}\ndata: {train: " + (dir / "held.jsonl").string() + ", eval: " +
      (dir / "held.jsonl").string() + "}\nstages: [{params: all, steps: 1, lr: 1.0}]\n");
  const auto train_eval =
      train_detail::load_sequences(c, true, base->config().vocab_size, eval_model_dir().string());
  const auto tr = response_loss(
      base, train_eval,
      {.max_len = c.data.max_length, .batch_tokens = c.eval.batch_tokens, .pad_id = 0});
  EXPECT_EQ(tr.target_tokens, eval_base.target_tokens);
  EXPECT_NEAR(tr.loss, eval_base.loss, 1e-5 * eval_base.loss);

  // An explicit length feeds the same rule everywhere: tokenising at 300 = cutting at 300.
  ResponseLossOptions at300;
  at300.max_len = 300;
  const auto cut300 = response_loss(base, whole, at300);
  at300.max_len = 0;
  const auto tok300 = response_loss(base, tokenize_records(recs, pt, enc, 300), at300);
  EXPECT_EQ(cut300.target_tokens, tok300.target_tokens);
  EXPECT_NEAR(cut300.loss, tok300.loss, 1e-5 * tok300.loss);
}

}  // namespace
}  // namespace uniattn
