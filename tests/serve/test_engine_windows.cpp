// The engine on the tiny Gemma-2, Gemma-3 and Mistral checkpoints of tests/data (CPU, fp32), whose
// layers attend through sliding windows of 5-6 tokens (Gemma: alternating with global layers;
// Mistral: every layer): greedy output with interleaved arrivals and chunked prefill over
// prompts longer than the window equals a plain greedy loop of full forward passes
// (CausalLM::forward, itself checked against transformers in tests/model/test_model_oracle.cpp).
// When every layer slides (Mistral), blocks whose keys left the window are given back: a
// sequence of 25 tokens holds at most 4 blocks of 4 tokens at once instead of 7.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>

#include "serve/engine_test_util.h"
#include "test_util.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/model/paged_kv_cache.h"
#include "uniattn/serve/engine.h"

namespace uniattn {
namespace {

using namespace serve;  // Engine, EngineOptions, EngineRequest, Finish, SeqOutput

constexpr int64_t kNewTokens = 8;

// Token ids of the tiny vocabulary (97), of 3 to 17 tokens: most are longer than the windows.
std::vector<std::vector<int32_t>> prompts() {
  return {{5, 17, 42},
          {60, 61, 2, 9, 33, 71, 14, 8, 90},
          {11, 23, 35, 47, 59, 71, 83, 95, 7, 19, 31, 43, 55, 67},
          {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2}};
}

// Chunks of 5 prompt tokens end inside windows and blocks.
EngineOptions small_blocks(int64_t num_blocks) { return test::small_blocks(num_blocks, 5); }

class EngineWindows : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    model_ = load_model(test::data_dir() / "models" / GetParam());
    ASSERT_GT(model_->config().sliding_window, 0) << GetParam();
  }

  // Greedy decoding by full forward passes over prompt + output: no cache at all.
  std::vector<int32_t> reference(const std::vector<int32_t>& prompt) {
    c10::InferenceMode guard;
    std::vector<int64_t> ids(prompt.begin(), prompt.end());
    std::vector<int32_t> out;
    while (int64_t(out.size()) < kNewTokens) {
      auto logits = model_->forward(at::tensor(ids).unsqueeze(0)).to(at::kFloat)[0];
      out.push_back(int32_t(logits[-1].argmax().item<int64_t>()));
      ids.push_back(out.back());
    }
    return out;
  }

  // Adds prompt i; its tokens are collected under `key` (default i).
  uint64_t add(Engine& e, size_t i, size_t key = SIZE_MAX) {
    if (key == SIZE_MAX) key = i;
    EngineRequest r;
    r.prompt = prompts()[i];
    r.max_tokens = kNewTokens;
    return e.add(r, [this, key](const SeqOutput& o) {
      tokens_[key].insert(tokens_[key].end(), o.tokens.begin(), o.tokens.end());
      if (o.finish != Finish::None) finish_[key] = o.finish;
    });
  }

  CausalLM model_{nullptr};
  std::map<size_t, std::vector<int32_t>> tokens_;
  std::map<size_t, Finish> finish_;
};

TEST_P(EngineWindows, InterleavedEqualsFullForwardGreedy) {
  const auto o = small_blocks(64);
  Engine e(model_, o);
  add(e, 0);
  add(e, 3);
  for (int i = 0; i < 3; ++i) e.step();
  add(e, 1);
  e.step();
  add(e, 2);
  while (e.step()) {
  }
  for (size_t i = 0; i < prompts().size(); ++i) {
    EXPECT_EQ(tokens_[i], reference(prompts()[i])) << "prompt " << i;
    EXPECT_EQ(finish_[i], Finish::Length) << "prompt " << i;
  }
  EXPECT_EQ(e.stats().blocks_free, e.stats().blocks_total);
}

// The longest prompt alone: 17 + 8 tokens, of which the cache holds 24 (the last token is never
// fed back), 6 blocks of 4. With a sliding window of at most 6 tokens and chunks of 5, a step
// reads keys from computed - 5 through computed + 4: at most 10 positions, so 4 blocks. Mistral
// (every layer slides) holds that many in its one group; Gemma's global layers keep all 6 blocks
// and its sliding layers, in a group of their own, at most 4. With num_sliding_blocks = -1 Gemma
// keeps one group of 6.
TEST_P(EngineWindows, BlocksHeldFollowTheKeptWindow) {
  const bool all_sliding = PagedKVCache::kept_window(model_->config()) > 0;
  EXPECT_EQ(all_sliding, std::string(GetParam()) == "mistral");
  EXPECT_EQ(PagedKVCache::mixes_windows(model_->config()), !all_sliding);
  for (int64_t sliding_blocks : {int64_t(0), int64_t(-1)}) {
    auto o = small_blocks(64);
    o.num_sliding_blocks = sliding_blocks;
    Engine e(model_, o);
    const bool split = !all_sliding && sliding_blocks == 0;
    EXPECT_EQ(e.stats().sliding_blocks_total, split ? 64 : 0);
    add(e, 3);
    int64_t most = 0, most_sliding = 0;
    while (e.step()) {
      const auto s = e.stats();
      most = std::max(most, o.num_blocks - (s.blocks_free - s.sliding_blocks_free));
      most_sliding = std::max(most_sliding, s.sliding_blocks_total - s.sliding_blocks_free);
    }
    EXPECT_EQ(tokens_[3], reference(prompts()[3])) << "sliding blocks " << sliding_blocks;
    tokens_.clear();
    if (all_sliding) {
      EXPECT_LE(most, 4);
    } else {
      EXPECT_EQ(most, 6);
      EXPECT_LE(most_sliding, 4);
      EXPECT_EQ(most_sliding > 0, split);
    }
    EXPECT_EQ(e.stats().blocks_free, e.stats().blocks_total);
  }
}

// A pool of 5 blocks (20 slots) for three sequences of 11, 17 and 17 tokens: with every layer
// sliding each holds at most 4 blocks at once, so they cannot all run together; the newest are
// preempted, recomputed later, and still give the same tokens.
class EngineAllSliding : public EngineWindows {};

TEST_P(EngineAllSliding, SmallPoolPreemptsAndRecomputes) {
  auto o = small_blocks(5);
  o.max_model_len = 20;  // the engine's check: one sequence of max_model_len fits the pool
  Engine e(model_, o);
  add(e, 0);
  add(e, 1);
  add(e, 1, 100);  // the same prompt again, as its own sequence
  while (e.step()) {
  }
  EXPECT_GT(e.stats().preemptions, 0);
  EXPECT_EQ(tokens_[0], reference(prompts()[0]));
  EXPECT_EQ(tokens_[1], reference(prompts()[1]));
  EXPECT_EQ(tokens_[100], reference(prompts()[1]));
  EXPECT_EQ(e.stats().blocks_free, o.num_blocks);
}

// Gemma with room for every global block but a sliding group of 5 blocks (what one sequence
// needs at most): four sequences of 17 and 22 tokens wait for sliding blocks, the group fills,
// and every sequence still gives the tokens of a full forward pass.
class EngineMixedWindows : public EngineWindows {};

TEST_P(EngineMixedWindows, SmallSlidingGroupLimitsTheBatch) {
  auto o = small_blocks(64);
  o.num_sliding_blocks = 5;
  o.max_model_len = 24;
  Engine e(model_, o);
  EXPECT_EQ(e.stats().sliding_blocks_total, 5);
  add(e, 1);
  add(e, 2);
  add(e, 1, 100);
  add(e, 2, 200);
  int64_t most = 0;
  while (e.step()) most = std::max(most, 5 - e.stats().sliding_blocks_free);
  EXPECT_EQ(most, 5);
  EXPECT_EQ(tokens_[1], reference(prompts()[1]));
  EXPECT_EQ(tokens_[2], reference(prompts()[2]));
  EXPECT_EQ(tokens_[100], reference(prompts()[1]));
  EXPECT_EQ(tokens_[200], reference(prompts()[2]));
  EXPECT_EQ(e.stats().blocks_free, e.stats().blocks_total);
}

// Sized from the same memory, the sliding layers' own group fits more sequences of
// max_model_len tokens than one group does, and both groups fit that many.
TEST_P(EngineMixedWindows, SlidingGroupFitsMoreSequencesInTheSameMemory) {
  const auto& c = model_->config();
  serve::EngineOptions o;
  o.block_size = 4;
  o.prefill_chunk = 5;
  o.max_model_len = 64;
  o.kv_memory_bytes = 64 * PagedKVCache::bytes_per_block(c, 4, at::kFloat);  // 64 whole blocks
  auto fits = [&](const EngineStats& s) {
    const int64_t per_seq = 64 / 4, sliding = s.sliding_blocks_total;
    const int64_t global = s.blocks_total - sliding;
    if (sliding == 0) return global / per_seq;
    const int64_t per_seq_sliding = (c.sliding_window + 5 + 3) / 4 + 2;
    return std::min(global / per_seq, sliding / per_seq_sliding);
  };
  auto one = o;
  one.num_sliding_blocks = -1;
  const auto split = Engine(model_, o).stats(), single = Engine(model_, one).stats();
  EXPECT_EQ(single.sliding_blocks_total, 0);
  EXPECT_EQ(single.blocks_total, 64);
  EXPECT_GT(split.sliding_blocks_total, 0);
  EXPECT_GT(fits(split), fits(single));
}

INSTANTIATE_TEST_SUITE_P(Families, EngineWindows, ::testing::Values("gemma2", "gemma3", "mistral"));
INSTANTIATE_TEST_SUITE_P(Mistral, EngineAllSliding, ::testing::Values("mistral"));
INSTANTIATE_TEST_SUITE_P(Gemma, EngineMixedWindows, ::testing::Values("gemma2", "gemma3"));

}  // namespace
}  // namespace uniattn
