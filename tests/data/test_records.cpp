// Records, templates and response-only masks (torch-free).
#include <gtest/gtest.h>

#include <fstream>

#include "test_util.h"
#include "uniattn/data/records.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

std::filesystem::path write(const std::string& name, const std::string& text) {
  auto p = test::scratch_dir() / name;
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

// Expects load_records to throw an Error whose message contains every fragment.
void expect_error(const std::filesystem::path& p, std::vector<std::string> fragments,
                  const PromptTemplate* t) {
  try {
    load_records(p, t);
    FAIL() << "no error for " << p;
  } catch (const Error& e) {
    for (const auto& f : fragments)
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what() << " lacks " << f;
  }
}

// A byte-level "tokenizer": one id per byte, so expected ids are easy to write independently.
TextEncoder byte_encoder() {
  TextEncoder e;
  e.encode = [](std::string_view s) {
    std::vector<int32_t> ids;
    for (unsigned char c : s) ids.push_back(c);
    return ids;
  };
  e.bos = 1000;
  e.eos = 1001;
  return e;
}

TEST(Data, LoadsJsonArrayAndJsonLines) {
  auto t = PromptTemplate::alpaca();
  auto a = load_records(write("a.json", R"([{"instruction":"i","input":"x","output":"o","n":3},
    {"instruction":"j","input":null,"output":"p"}])"),
                        &t);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].at("instruction"), "i");
  EXPECT_EQ(a[0].count("n"), 0u);  // non-string fields are not kept
  EXPECT_EQ(a[1].count("input"), 0u);
  auto b = load_records(write(
      "b.jsonl", "{\"input\":\"q\",\"output\":\"r\"}\n\n{\"input\":\"s\",\"output\":\"t\"}\n"));
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[1].at("output"), "t");
}

TEST(Data, BadFilesGiveClearErrors) {
  auto t = PromptTemplate::alpaca();
  auto tulu = PromptTemplate::tulu();
  expect_error(write("empty.json", "  \n"), {"empty.json", "empty"}, &t);
  expect_error(write("arr.json", "[]"), {"arr.json", "no records"}, &t);
  expect_error(write("bad.json", "[{\"instruction\": \"x\",]"), {"bad.json", "not valid JSON"}, &t);
  expect_error(write("text.json", "hello"), {"text.json", "not a JSON array"}, &t);
  expect_error(
      write("miss.json", R"([{"instruction":"i","output":"o"},{"input":"x","output":"o"}])"),
      {"miss.json", "record 1", "missing field 'instruction'"}, &t);
  expect_error(write("type.json", R"([{"instruction":"i","output":7}])"),
               {"type.json", "record 0", "'output'", "must be a string"}, &t);
  expect_error(write("obj.json", R"([{"input":"i","output":"o"}, 5])"),
               {"obj.json", "record 1", "expected a JSON object"}, &tulu);
  expect_error(write("l.jsonl", "{\"input\":\"i\",\"output\":\"o\"}\n{oops}\n"),
               {"l.jsonl", "line 2", "not valid JSON"}, &tulu);
  expect_error(test::scratch_dir() / "none.json", {"none.json", "does not exist"}, &t);
  EXPECT_THROW(PromptTemplate::by_name("chatml"), Error);
  EXPECT_THROW(PromptTemplate::custom("{unclosed"), Error);
  EXPECT_THROW(PromptTemplate::custom("a } b"), Error);
}

TEST(Data, TemplatesRenderTheRecipeText) {
  Record r{{"instruction", "Add."}, {"input", "2 2"}, {"output", "4"}};
  EXPECT_EQ(PromptTemplate::alpaca().render_prompt(r),
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nAdd.\n\n### Input:\n2 2\n\n### Response:");
  r["input"] = "";
  EXPECT_EQ(PromptTemplate::alpaca().render_prompt(r),
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nAdd.\n\n### Response:");
  Record q{{"input", "Hi"}, {"output", "Hello"}};
  EXPECT_EQ(PromptTemplate::tulu().render_prompt(q), "### Input:\nHi\n\n### Response:");
  auto c = PromptTemplate::custom("Q: {input} {{x}}\nA:", "output");
  EXPECT_EQ(c.render_prompt(q), "Q: Hi {x}\nA:");
  EXPECT_EQ(c.required_fields(), (std::vector<std::string>{"input", "output"}));
  EXPECT_THROW(c.render_prompt(Record{{"output", "o"}}), Error);
}

TEST(Data, ResponseOnlyMaskAndTruncation) {
  auto t = PromptTemplate::custom("P{input}:");
  auto enc = byte_encoder();
  Record r{{"input", "ab"}, {"output", "xyz"}};
  auto ex = tokenize_example(r, t, enc, 100);
  EXPECT_EQ(ex.ids, (std::vector<int32_t>{1000, 'P', 'a', 'b', ':', 'x', 'y', 'z', 1001}));
  EXPECT_EQ(ex.loss_mask, (std::vector<uint8_t>{0, 0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(ex.prompt_tokens, 5);
  EXPECT_EQ(ex.target_tokens(), 4);
  EXPECT_FALSE(ex.truncated);
  auto cut = tokenize_example(r, t, enc, 7);
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(cut.ids, (std::vector<int32_t>{1000, 'P', 'a', 'b', ':', 'x', 'y'}));
  EXPECT_EQ(cut.target_tokens(), 2);
  TokenizeStats st;
  auto all =
      tokenize_records({r, Record{{"input", "long prompt"}, {"output", "o"}}}, t, enc, 7, &st);
  EXPECT_EQ(all.size(), 1u);
  EXPECT_EQ(st.records, 2);
  EXPECT_EQ(st.dropped_no_target, 1);
  EXPECT_EQ(st.truncated, 2);
  enc.eos.reset();
  EXPECT_THROW(tokenize_example(r, t, enc, 100), Error);
}

}  // namespace
}  // namespace uniattn
