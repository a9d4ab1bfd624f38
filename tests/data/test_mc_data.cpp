// Loading and validating multiple-choice JSONL, and task-name resolution.
#include <fstream>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/data/mc_data.h"

namespace uniattn {
namespace {

std::filesystem::path write(const std::filesystem::path& dir, const std::string& name,
                            const std::string& text) {
  const auto p = dir / name;
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

// Expects load_mc_jsonl to throw an Error whose message contains every fragment.
void expect_error(const std::string& body, const std::vector<std::string>& fragments) {
  const auto p = write(test::scratch_dir(), "bad.jsonl", body);
  try {
    load_mc_jsonl(p);
    ADD_FAILURE() << "no error for: " << body;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.jsonl"), std::string::npos) << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << msg;
  }
}

const char* kGood =
    R"({"id": "q1", "question": "Question: 2+2?\nAnswer:", "choices": ["3", "4"], "answer": 1})"
    "\n\n"
    R"({"id": 7, "question": "Q?", "choices": ["a", "b", "c"], "answer": 0, "extra": null})"
    "\r\n";

TEST(McData, LoadsValidFile) {
  const auto p = write(test::scratch_dir(), "ok.jsonl", kGood);
  const auto qs = load_mc_jsonl(p);
  ASSERT_EQ(qs.size(), 2u);
  EXPECT_EQ(qs[0].id, "q1");
  EXPECT_EQ(qs[0].question, "Question: 2+2?\nAnswer:");
  EXPECT_EQ(qs[0].choices, (std::vector<std::string>{"3", "4"}));
  EXPECT_EQ(qs[0].answer, 1);
  EXPECT_EQ(qs[1].id, "7");
  EXPECT_EQ(qs[1].choices.size(), 3u);
  EXPECT_EQ(load_mc_jsonl(p, 1).size(), 1u);
}

TEST(McData, LimitStopsBeforeLaterBadLines) {
  const auto p = write(test::scratch_dir(), "ok.jsonl", std::string(kGood) + "not json\n");
  EXPECT_EQ(load_mc_jsonl(p, 2).size(), 2u);
  EXPECT_THROW(load_mc_jsonl(p), Error);
}

TEST(McData, MalformedFilesGiveClearErrors) {
  expect_error(R"({"question": "Q", "choices": ["a", "b"], "answer": 0})",
               {"line 1", "missing field \"id\""});
  expect_error(R"({"id": "x", "choices": ["a", "b"], "answer": 0})",
               {"missing field \"question\""});
  expect_error(R"({"id": "x", "question": "Q", "answer": 0})", {"missing field \"choices\""});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", "b"]})",
               {"missing field \"answer\""});
  expect_error(std::string(kGood) + R"({"id": "x", "question": "Q", "choices": [], "answer": 0})",
               {"line 4", "at least 2"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a"], "answer": 0})", {"at least 2"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", ""], "answer": 0})",
               {"choice 1 is empty"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", 3], "answer": 0})",
               {"choice 1 must be a string"});
  expect_error(R"({"id": "x", "question": "Q", "choices": "ab", "answer": 0})",
               {"\"choices\" must be an array"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", "b"], "answer": 2})",
               {"\"answer\" 2 is out of range [0, 2)"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", "b"], "answer": -1})",
               {"out of range"});
  expect_error(
      R"({"id": "x", "question": "Q", "choices": ["a", "b"], "answer": 18446744073709551615})",
      {"out of range"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", "b"], "answer": "A"})",
               {"must be an integer"});
  expect_error(R"({"id": "x", "question": "Q", "choices": ["a", "b"], "answer": 1.0})",
               {"must be an integer"});
  expect_error(R"({"id": "x", "question": "", "choices": ["a", "b"], "answer": 0})",
               {"\"question\" is empty"});
  expect_error(R"({"id": [1], "question": "Q", "choices": ["a", "b"], "answer": 0})",
               {"\"id\" must be a string or an integer"});
  expect_error(R"(["id", "question"])", {"expected a JSON object"});
  expect_error("{\"id\": \"x\", \"question\": \"Q\n", {"not valid JSON"});
  expect_error(
      "{\"id\": \"x\", \"question\": \"\xff\", \"choices\": [\"a\", \"b\"], \"answer\": 0}",
      {"not valid JSON"});
  expect_error("\n  \n", {"no questions"});
  std::string many = R"({"id": "x", "question": "Q", "choices": [)";
  for (int i = 0; i < 65; ++i) many += std::string(i ? "," : "") + "\"c\"";
  expect_error(many + R"(], "answer": 0})", {"limit 64"});
}

TEST(McData, MissingFileIsNamed) {
  try {
    load_mc_jsonl(test::scratch_dir() / "nope.jsonl");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.jsonl"), std::string::npos);
  }
}

TEST(McData, ResolvesTasks) {
  const auto dir = test::scratch_dir();
  for (const auto* n : {"arc_easy_test", "arc_easy_validation", "medqa_test", "my_set"})
    write(dir, std::string(n) + ".jsonl", kGood);
  for (const auto& s : mmlu_medical_subjects()) write(dir, "mmlu_" + s + "_test.jsonl", kGood);

  auto t =
      resolve_mc_tasks({"arc_easy", "arc_easy:validation", "mmlu_medical", "medqa", "my_set"}, dir);
  ASSERT_EQ(t.size(), 10u);
  EXPECT_EQ(t[0].task, "arc_easy");
  EXPECT_EQ(t[0].file, dir / "arc_easy_test.jsonl");
  EXPECT_EQ(t[1].task, "arc_easy:validation");
  EXPECT_EQ(t[1].file, dir / "arc_easy_validation.jsonl");
  EXPECT_EQ(t[2].task, "mmlu_anatomy");
  EXPECT_EQ(t[2].group, "mmlu_medical");
  EXPECT_EQ(t[7].task, "mmlu_professional_medicine");
  EXPECT_EQ(t[8].file, dir / "medqa_test.jsonl");
  EXPECT_EQ(t[9].file, dir / "my_set.jsonl");

  EXPECT_THROW(resolve_mc_tasks({"hellaswag"}, dir), Error);
  try {
    resolve_mc_tasks({"medmcqa"}, dir);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("medmcqa_validation.jsonl"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("prepare_eval_data.py"), std::string::npos);
  }
  EXPECT_THROW(resolve_mc_tasks({"arc_easy:"}, dir), Error);
}

}  // namespace
}  // namespace uniattn
