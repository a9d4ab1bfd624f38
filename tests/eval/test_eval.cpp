// uniattn eval library vs transformers: per-choice log-likelihoods, acc / acc_norm and the
// held-out response loss (response_loss) on a tiny random LLaMA
// (tests/fixtures/make_eval_fixtures.py).
#include <nlohmann/json.hpp>

#include <cmath>

#include "test_util.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/error.h"
#include "uniattn/eval/eval.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

std::filesystem::path dir() { return test::data_dir() / "eval"; }

nlohmann::json expected() { return nlohmann::json::parse(read_text_file(dir() / "expected.json")); }

void expect_close(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 2e-4 + 2e-6 * std::abs(want)) << what;
}

void check_mc(const McTaskResult& r, const nlohmann::json& e, const std::string& label) {
  const auto& items = e["items"];
  ASSERT_EQ(r.items.size(), items.size()) << label;
  for (std::size_t q = 0; q < items.size(); ++q) {
    const auto& it = r.items[q];
    const auto& x = items[q];
    EXPECT_EQ(it.id, x["id"].get<std::string>());
    ASSERT_EQ(it.logprob.size(), x["logprob"].size());
    for (std::size_t c = 0; c < it.logprob.size(); ++c) {
      const std::string what = label + " " + it.id + " choice " + std::to_string(c);
      expect_close(it.logprob[c], x["logprob"][c].get<double>(), what);
      EXPECT_EQ(it.tokens[c], x["tokens"][c].get<int64_t>()) << what;
      EXPECT_EQ(it.chars[c], x["chars"][c].get<int64_t>()) << what;
    }
    EXPECT_EQ(it.pred, x["pred"].get<int64_t>()) << label << " " << it.id;
    EXPECT_EQ(it.pred_norm, x["pred_norm"].get<int64_t>()) << label << " " << it.id;
  }
  EXPECT_DOUBLE_EQ(r.acc, e["acc"].get<double>()) << label;
  EXPECT_DOUBLE_EQ(r.acc_norm, e["acc_norm"].get<double>()) << label;
  const double n = static_cast<double>(r.n);
  EXPECT_NEAR(r.acc_stderr, std::sqrt(r.acc * (1 - r.acc) / (n - 1)), 1e-12);
}

class EvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new CausalLM(load_model(dir() / "model"));
    tok_ = load_tokenizer(dir() / "model").release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
  }
  static CausalLM* model_;
  static Tokenizer* tok_;
};
CausalLM* EvalTest::model_ = nullptr;
Tokenizer* EvalTest::tok_ = nullptr;

TEST_F(EvalTest, MultipleChoiceMatchesTransformers) {
  const auto qs = load_mc_jsonl(dir() / "mc.jsonl");
  const auto e = expected();
  for (int64_t batch : {1, 3, 64}) {
    McOptions o;
    o.score.batch = batch;
    int64_t calls = 0;
    o.score.progress = [&](int64_t done, int64_t total) {
      ++calls;
      EXPECT_LE(done, total);
    };
    const auto r = evaluate_mc(*model_, *tok_, qs, "tiny", o);
    EXPECT_EQ(r.n, 6);
    EXPECT_EQ(calls, (18 + batch - 1) / batch);
    check_mc(r, e["512"], "batch " + std::to_string(batch));
  }
}

TEST_F(EvalTest, LongInputsLoseContextFromTheFront) {
  const auto qs = load_mc_jsonl(dir() / "mc.jsonl");
  McOptions o;
  o.score.batch = 4;
  o.score.max_len = 32;
  check_mc(evaluate_mc(*model_, *tok_, qs, "tiny", o), expected()["32"], "max_len 32");
}

TEST_F(EvalTest, HeldoutLossMatchesTransformers) {
  const auto tmpl = PromptTemplate::alpaca();
  const auto records = load_records(dir() / "heldout.jsonl", &tmpl);
  const auto examples = tokenize_records(records, tmpl, text_encoder(*tok_), 512);
  const auto e = expected()["heldout"];
  for (int64_t batch_tokens : {1, 100, 8192}) {
    ResponseLossOptions o;
    o.batch_tokens = batch_tokens;
    const auto r = response_loss(*model_, examples, o);
    EXPECT_EQ(r.examples, e["examples"].get<int64_t>());
    EXPECT_EQ(r.target_tokens, e["target_tokens"].get<int64_t>());
    EXPECT_NEAR(r.loss, e["loss"].get<double>(), 1e-5 * e["loss"].get<double>());
    EXPECT_NEAR(r.perplexity, std::exp(r.loss), 1e-9 * r.perplexity);
  }
}

TEST_F(EvalTest, PoolsTasksByQuestionCount) {
  McTaskResult a, b;
  a.task = "a";
  a.n = 3;
  a.acc = 2.0 / 3;
  a.acc_norm = 1.0 / 3;
  b.task = "b";
  b.n = 5;
  b.acc = 0.2;
  b.acc_norm = 0.6;
  const auto p = pool_mc("ab", {&a, &b});
  EXPECT_EQ(p.n, 8);
  EXPECT_DOUBLE_EQ(p.acc, 3.0 / 8);
  EXPECT_DOUBLE_EQ(p.acc_norm, 4.0 / 8);
  EXPECT_NEAR(p.acc_stderr, std::sqrt(3.0 / 8 * 5.0 / 8 / 7), 1e-12);
}

TEST_F(EvalTest, BadRequestsThrow) {
  const int32_t v = static_cast<int32_t>((*model_)->config().vocab_size);
  EXPECT_THROW(score_loglikelihood(*model_, {{{1, 2}, {v}}}), Error);
  EXPECT_THROW(score_loglikelihood(*model_, {{{-1, 2}, {3}}}), Error);
  EXPECT_THROW(score_loglikelihood(*model_, {{{}, {3}}}), Error);
  EXPECT_THROW(score_loglikelihood(*model_, {{{1}, {}}}), Error);
  ScoreOptions o;
  o.max_len = 2;
  EXPECT_THROW(score_loglikelihood(*model_, {{{1}, {2, 3, 4}}}, o), Error);
  o = {};
  o.batch = 0;
  EXPECT_THROW(score_loglikelihood(*model_, {{{1}, {2}}}, o), Error);
  EXPECT_THROW(evaluate_mc(*model_, *tok_, {}, "empty"), Error);
  McQuestion q{"x", "Q", {"a", "b"}, 5};
  EXPECT_THROW(evaluate_mc(*model_, *tok_, {q}, "bad"), Error);
  // tokenize_pair: trailing context whitespace moves into the continuation.
  const auto r = tokenize_pair(*tok_, "Answer: ", "x");
  EXPECT_EQ(r.continuation, tok_->encode(" x", false, false));
  EXPECT_EQ(r.context, tok_->encode("Answer:", false, false));
}

}  // namespace
}  // namespace uniattn
