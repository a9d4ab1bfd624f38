// GenerationConfig: the end tokens and sampling defaults of the fixture checkpoints
// (tests/fixtures/make_generation_fixtures.py) equal what transformers / llama.cpp read from
// them, stop_strings are those transformers' generate() matches
// (tests/fixtures/make_stop_string_fixtures.py), config.json and generation_config.json are
// merged, and every malformed value is an error naming the file and the key.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/io/file_io.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::expect_error;

fs::path data() { return test::data_dir() / "generation"; }

json expected() { return json::parse(read_text_file(data() / "expected.json")); }

std::vector<int64_t> ids(const json& j) { return j.get<std::vector<int64_t>>(); }

// Each fixture case: the end tokens transformers generate() stops at (for a GGUF: llama.cpp's
// eos, eot, eom) are exactly ours, in order.
TEST(GenerationConfig, EndTokensOfEveryCase) {
  const json e = expected();
  const std::map<std::string, fs::path> paths = {
      {"llama_generation_config", data() / "llama_generation_config"},
      {"llama_config_list", data() / "llama_config_list"},
      {"gemma_end_of_turn", data() / "gemma_end_of_turn"},
      {"llama_sampling", data() / "llama_sampling"},
      {"llama_sampling_defaults", data() / "llama_sampling_defaults"},
      {"llama_eot_gguf", data() / "llama_eot.gguf"},
      {"llama_eom_gguf", data() / "llama_eom.gguf"}};
  ASSERT_EQ(e.size(), paths.size());
  for (const auto& [name, path] : paths) {
    const auto g = GenerationConfig::load(path);
    EXPECT_EQ(g.eos_token_ids, ids(e[name]["settings"]["eos_token_id"])) << name;
  }
}

TEST(GenerationConfig, DirectoryValues) {
  // LLaMA-3-Instruct layout: config.json says 256, generation_config.json [256, 257].
  auto a = GenerationConfig::load(data() / "llama_generation_config");
  EXPECT_EQ(a.eos_token_ids, (std::vector<int64_t>{256, 257}));
  EXPECT_EQ(a.do_sample, false);
  EXPECT_FALSE(a.bos_token_id || a.pad_token_id || a.temperature || a.max_new_tokens);
  // Gemma: bos 2, pad 0, eos [1, 106].
  auto g = GenerationConfig::load(data() / "gemma_end_of_turn");
  EXPECT_EQ(g.eos_token_ids, (std::vector<int64_t>{1, 106}));
  EXPECT_EQ(g.bos_token_id, 2);
  EXPECT_EQ(g.pad_token_id, 0);
  auto s = GenerationConfig::load(data() / "llama_sampling");
  EXPECT_EQ(s.do_sample, true);
  EXPECT_DOUBLE_EQ(s.temperature.value(), 0.6);
  EXPECT_DOUBLE_EQ(s.top_p.value(), 0.9);
  EXPECT_DOUBLE_EQ(s.repetition_penalty.value(), 1.1);
  EXPECT_EQ(s.max_new_tokens, 7);
  EXPECT_FALSE(s.top_k);  // transformers' default 50 applies later
}

// stop_strings (one string, a list, null, absent) are the strings transformers' generate() stops
// at (GenerationConfig.from_dict, then StopStringCriteria), each once (a second copy matches
// nothing the first does not); an empty list, which StopStringCriteria refuses, is none.
TEST(GenerationConfig, StopStringsAsTransformersReadsThem) {
  const json rows = json::parse(read_text_file(test::data_dir() / "stop_strings" / "cases.json"));
  ASSERT_GE(rows.size(), 6u);
  for (const auto& row : rows) {
    std::vector<std::string> want;
    if (!row["stop_strings"].is_null())
      for (const auto& s : row["stop_strings"].get<std::vector<std::string>>())
        if (std::find(want.begin(), want.end(), s) == want.end()) want.push_back(s);
    const auto dir = test::scratch_dir();
    write_text_atomic(dir / "generation_config.json", row["body"].dump());
    EXPECT_EQ(GenerationConfig::load(dir).stop_strings, want) << row["body"].dump();
    EXPECT_EQ(GenerationConfig::from_json(row["body"], "x").stop_strings, want);
  }
  // The bounds themselves are accepted: 64 strings, 1 and 1024 bytes.
  std::vector<std::string> most;
  for (int i = 0; i < 64; ++i) most.push_back(std::to_string(i));
  most.back() = std::string(1024, 'x');
  EXPECT_EQ(GenerationConfig::from_json({{"stop_strings", most}}, "x").stop_strings, most);
}

TEST(GenerationConfig, GgufKeys) {
  auto eot = GenerationConfig::load(data() / "llama_eot.gguf");
  EXPECT_EQ(eot.eos_token_ids, (std::vector<int64_t>{256, 257}));
  EXPECT_EQ(eot.bos_token_id, 259);
  EXPECT_FALSE(eot.do_sample || eot.temperature || eot.top_k);
  auto eom = GenerationConfig::load(data() / "llama_eom.gguf");
  EXPECT_EQ(eom.eos_token_ids, (std::vector<int64_t>{256, 257, 258}));
  EXPECT_EQ(eom.do_sample, true);   // general.sampling.temp 0.7
  EXPECT_EQ(eom.temperature, 0.7);  // the decimal written, not the float32 0.699999988
  EXPECT_EQ(eom.top_k, 40);
  EXPECT_EQ(eom.top_p, 0.95);
  EXPECT_EQ(eom.repetition_penalty, 1.05);
  expect_error([] { GenerationConfig::load(data() / "bad_eot_type.gguf"); },
               "tokenizer.ggml.eot_token_id is STRING, not an integer token id");
  expect_error([] { GenerationConfig::load(data() / "bad_eom_range.gguf"); },
               "tokenizer.ggml.eom_token_id = 5000 lies outside the vocabulary of 260 tokens");
}

// Both files' end tokens, generation_config.json's first; bos/pad from config.json only where
// generation_config.json names none.
TEST(GenerationConfig, MergesConfigJson) {
  const auto dir = test::scratch_dir();
  write_text_atomic(dir / "generation_config.json",
                    R"({"eos_token_id": 257, "pad_token_id": null, "cache_implementation": "x"})");
  write_text_atomic(dir / "config.json",
                    R"({"eos_token_id": [256, 257, 258], "bos_token_id": 1, "pad_token_id": 3})");
  auto g = GenerationConfig::load(dir);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int64_t>{257, 256, 258}));
  EXPECT_EQ(g.bos_token_id, 1);
  EXPECT_EQ(g.pad_token_id, 3);
  // Neither file: nothing said.
  auto empty = GenerationConfig::load(test::scratch_dir());
  EXPECT_TRUE(empty.eos_token_ids.empty());
  EXPECT_EQ(empty.to_json(), json::object());
}

TEST(GenerationConfig, JsonRoundTrip) {
  GenerationConfig g;
  g.eos_token_ids = {1, 106};
  g.bos_token_id = 2;
  g.do_sample = true;
  g.temperature = 0.6;
  g.top_k = 64;
  g.top_p = 0.95;
  g.repetition_penalty = 1.1;
  g.max_new_tokens = 9;
  g.stop_strings = {"User:", "\n\n"};
  const json j = g.to_json();
  EXPECT_EQ(j["eos_token_id"], json({1, 106}));
  EXPECT_EQ(j["stop_strings"], json({"User:", "\n\n"}));
  const auto back = GenerationConfig::from_json(j, "x");
  EXPECT_EQ(back.to_json(), j);
  g.eos_token_ids = {7};
  EXPECT_EQ(g.to_json()["eos_token_id"], 7);  // one id: an integer, as transformers writes it
  g.add_eos(7);
  g.add_eos(8);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int64_t>{7, 8}));
}

TEST(GenerationConfig, MalformedValuesNameFileAndKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"eos_token_id": "</s>"})", "'eos_token_id' must be an integer token id"},
      {R"({"eos_token_id": [1, -2]})", "'eos_token_id' = -2 is not a token id"},
      {R"({"eos_token_id": [1, 2.5]})", "'eos_token_id' must be an integer token id"},
      {R"({"bos_token_id": 2147483648})", "'bos_token_id' = 2147483648 is not a token id"},
      {R"({"pad_token_id": {}})", "'pad_token_id' must be an integer token id"},
      {R"({"do_sample": "yes"})", "'do_sample' must be true or false"},
      {R"({"temperature": -1})", "'temperature' must be >= 0"},
      {R"({"temperature": "hot"})", "'temperature' must be a number"},
      {R"({"top_p": 1.5})", "'top_p' must lie in [0, 1]"},
      {R"({"top_k": -3})", "'top_k' must be >= 0"},
      {R"({"top_k": 2.5})", "'top_k' must be an integer"},
      {R"({"repetition_penalty": 0})", "'repetition_penalty' must be > 0"},
      {R"({"max_new_tokens": -1})", "'max_new_tokens' must be >= 0"},
      {R"({"stop_strings": 5})", "'stop_strings' must be a string or a list of strings, got 5"},
      {R"({"stop_strings": ["a", 3]})", "'stop_strings' must be a string or a list of strings"},
      {R"({"stop_strings": ["a", null]})", "'stop_strings' must be a string or a list"},
      {R"({"stop_strings": [["a"]]})", "'stop_strings' must be a string or a list of strings"},
      {R"({"stop_strings": ""})", "'stop_strings' holds a string of 0 bytes; each must have 1"},
      {R"({"stop_strings": ["a", ""]})", "'stop_strings' holds a string of 0 bytes"},
      {R"([1, 2])", "not a JSON object"},
      {R"({"eos_token_id": )", "not valid JSON"},
  };
  for (const auto& [text, needle] : cases) {
    const auto dir = test::scratch_dir();
    write_text_atomic(dir / "generation_config.json", text);
    expect_error([&] { GenerationConfig::load(dir); }, needle);
    expect_error([&] { GenerationConfig::load(dir); }, (dir / "generation_config.json").string());
  }
  // A list longer than any model's is refused before it is read further.
  json many = json::object();
  many["eos_token_id"] = std::vector<int64_t>(1025, 1);
  const auto dir = test::scratch_dir();
  write_text_atomic(dir / "generation_config.json", many.dump());
  expect_error([&] { GenerationConfig::load(dir); }, "lists 1025 ids; at most 1024");
  // stop_strings: at most 64, each at most 1024 bytes.
  write_text_atomic(dir / "generation_config.json",
                    json({{"stop_strings", std::vector<std::string>(65, "a")}}).dump());
  expect_error([&] { GenerationConfig::load(dir); },
               "'stop_strings' lists 65 strings; at most 64 are accepted");
  write_text_atomic(dir / "generation_config.json",
                    json({{"stop_strings", {"a", std::string(1025, 'x')}}}).dump());
  expect_error([&] { GenerationConfig::load(dir); },
               (dir / "generation_config.json").string() +
                   ": 'stop_strings' holds a string of 1025 bytes; each must have 1 to 1024");
  // config.json's list is checked as well, naming config.json.
  write_text_atomic(dir / "generation_config.json", "{}");
  write_text_atomic(dir / "config.json", R"({"eos_token_id": [1, "x"]})");
  expect_error([&] { GenerationConfig::load(dir); }, "config.json: 'eos_token_id' must be");
  expect_error([&] { GenerationConfig::load(dir / "missing"); },
               "is neither a checkpoint directory nor a file");
}

}  // namespace
}  // namespace uniattn
