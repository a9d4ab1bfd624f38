// Data files nested deeper than any record needs are refused before they are parsed (found by
// fuzzing, fuzz/; docs/reliability.md): dump() and copies of nlohmann::json recurse per level.
#include <fstream>
#include <string>

#include "test_util.h"
#include "uniattn/data/mc_data.h"
#include "uniattn/data/records.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

using test::expect_error;

const std::string kDeep = std::string(300000, '[') + std::string(300000, ']');

TEST(DataFaults, DeeplyNestedRecordsAreRefused) {
  const auto d = test::scratch_dir();
  std::ofstream(d / "a.json") << R"([{"instruction": )" << kDeep << "}]";
  expect_error([&] { load_records(d / "a.json"); }, "a.json: JSON nested deeper than 128 levels");
  std::ofstream(d / "b.jsonl") << "{\"instruction\": \"x\", \"output\": \"y\"}\n{\"input\": "
                               << kDeep << "}\n";
  expect_error([&] { load_records(d / "b.jsonl"); }, "b.jsonl: line 2: JSON nested deeper");
}

TEST(DataFaults, DeeplyNestedMultipleChoiceIsRefused) {
  const auto d = test::scratch_dir();
  std::ofstream(d / "mc.jsonl") << R"({"id": 1, "question": )" << kDeep << "}\n";
  expect_error([&] { load_mc_jsonl(d / "mc.jsonl"); }, "mc.jsonl: line 1: JSON nested deeper");
}

}  // namespace
}  // namespace uniattn
