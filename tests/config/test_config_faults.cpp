// Inputs that made the config parsers fail with something other than uniattn::Error (found by
// fuzzing, fuzz/; docs/reliability.md): undefined integer overflow in SuperBlock specs, yaml-cpp
// exceptions from training YAML and --set overrides, counts from config.json used before they
// are checked, and deeply nested JSON. Each must give our error naming the key, flag or file.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/config/model_config.h"
#include "uniattn/config/superblock.h"
#include "uniattn/config/train_config.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

using test::expect_error;

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

// Signed overflow in the range check (a - b) and in from_range (lead + size): undefined
// behaviour, after which a release build filled memory until std::bad_alloc.
TEST(ConfigFaults, SuperBlockSpecsNearInt64Limits) {
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "-9223372036854775808-1", 32); },
               "outside the model's 32 layers");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "0-9223372036854775807", 32); },
               "outside the model's 32 layers");
  EXPECT_EQ(UniAttnSpec::parse(Variant::UniAttn, "9223372036854775807,2,4", 32).groups,
            (std::vector<std::vector<int64_t>>{{2, 3}}));
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "99999999999999999999,2,4", 32); },
               "is not an integer");
  // A size beyond the layers is one group to the end (the reference's semantics), not overflow.
  auto s = UniAttnSpec::from_range(Variant::UniAttn, kMax, 2, 4, 32);
  ASSERT_EQ(s.groups.size(), 1u);
  EXPECT_EQ(s.groups[0], (std::vector<int64_t>{2, 3}));
  s = UniAttnSpec::from_range(Variant::UniAttn, 2, 30, kMax, 32);
  EXPECT_EQ(s.groups, (std::vector<std::vector<int64_t>>{{30, 31}}));
  expect_error([] { UniAttnSpec::from_range(Variant::UniAttn, 2, kMin, 4, 32); }, "begin");
  // The layer count itself bounds every loop, so it is bounded first.
  expect_error([] { UniAttnSpec::from_range(Variant::UniAttn, 2, 0, kMax, kMax); },
               "layer count 9223372036854775807 is outside [1, 1024]");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "0-3", 0); }, "layer count 0");
}

// The same spec inside config.json (uniattn.superblocks) gives the same error, not overflow.
TEST(ConfigFaults, SuperBlocksInConfigJson) {
  nlohmann::json j = {
      {"model_type", "uniattn_llama"}, {"vocab_size", 10},       {"hidden_size", 8},
      {"intermediate_size", 8},        {"num_hidden_layers", 4}, {"num_attention_heads", 2}};
  j["uniattn"] = {{"variant", "uniattn"},
                  {"superblocks", {{"size", kMax}, {"begin", 2}, {"end", 4}}}};
  EXPECT_EQ(ModelConfig::from_json(j).uniattn.groups, (std::vector<std::vector<int64_t>>{{2, 3}}));
  j["uniattn"]["superblocks"] = {{"size", 2}, {"begin", kMin}, {"end", 4}};
  expect_error([&] { ModelConfig::from_json(j); }, "begin");
}

// num_hidden_layers 10^15 sized the per-layer tables before validate() capped it.
TEST(ConfigFaults, HugeLayerCountIsRefusedBeforeUse) {
  expect_error(
      [] {
        ModelConfig::load(test::source_dir() / "tests/config/data/huge_num_layers.config.json");
      },
      "'num_hidden_layers' must be in [1, 1024], got 1000000000000000");
}

std::filesystem::path write(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

// nlohmann::json::dump (used in messages) and copies recurse per level: a 2 MB config.json of
// nested brackets overflowed the stack (SIGSEGV) of a release build.
TEST(ConfigFaults, DeeplyNestedJsonIsRefused) {
  const auto dir = test::scratch_dir();
  const int n = 1 << 20;
  const std::string deep = std::string(n, '[') + std::string(n, ']');
  const auto cfg = write(dir / "config.json",
                         R"({"model_type":"uniattn_llama","uniattn":{"groups":[)" + deep + "]}}");
  expect_error([&] { ModelConfig::load(cfg); }, "config.json: JSON nested deeper than 128 levels");
  std::filesystem::create_directories(dir / "gen");
  write(dir / "gen" / "generation_config.json", R"({"eos_token_id":)" + deep + "}");
  expect_error([&] { GenerationConfig::load(dir / "gen"); },
               "generation_config.json: JSON nested deeper than 128 levels");
  // Brackets inside strings do not count; 100 levels are fine.
  const std::string ok_deep = std::string(100, '[') + std::string(100, ']');
  const auto ok = write(dir / "ok.json", R"({"model_type":"llama","x":")" + deep.substr(0, 4096) +
                                             R"(","y":)" + ok_deep + "}");
  expect_error([&] { ModelConfig::load(ok); }, "unknown config key");
}

const char* kYaml = R"(
output_dir: o
model: {path: m, variant: none}
data: {train: t.jsonl}
stages: [{params: all, steps: 1, lr: 1e-5}]
)";

std::string yaml_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    TrainConfig::parse(yaml, "cfg.yaml", overrides);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// yaml-cpp threw BadSubscript (override into a scalar) and TypedBadConversion (a mapping used as
// a key, thrown from the key check in a destructor); both escaped as library exceptions.
TEST(ConfigFaults, TrainYamlLibraryExceptionsBecomeOurErrors) {
  EXPECT_EQ(yaml_error(kYaml, {"output_dir.x=1"}),
            "cfg.yaml: override path 'output_dir.x': output_dir is a scalar, not a mapping, so it "
            "has no key 'x'");
  EXPECT_EQ(yaml_error(kYaml, {"stages[0].lr.x=1"}),
            "cfg.yaml: override path 'stages[0].lr.x': stages[0].lr is a scalar, not a mapping, "
            "so it has no key 'x'");
  EXPECT_EQ(yaml_error(kYaml, {"stages.x=1"}),
            "cfg.yaml: override path 'stages.x': stages is a list, not a mapping, so it has no "
            "key 'x'");
  EXPECT_EQ(yaml_error("output_dir: o\nmodel: {path: t, superblocks: 6, [a]: 1}\n"),
            "cfg.yaml: model has a list as a key (keys are names)");
  EXPECT_EQ(yaml_error("output_dir: o\n{a: 1}: 2\n"),
            "cfg.yaml: <root> has a mapping as a key (keys are names)");
  // Overrides that create keys still work.
  EXPECT_EQ(TrainConfig::parse(kYaml, "cfg.yaml", {"training.seed=7"}).training.seed, 7);
}

// A scalar or a list where a mapping is expected names the key, as do the other mismatches.
TEST(ConfigFaults, TrainYamlTypeMismatchesNameTheKey) {
  auto with = [](const std::string& line) { return std::string(kYaml) + line + "\n"; };
  EXPECT_EQ(yaml_error(with("training: 5")), "cfg.yaml: training must be a mapping, got scalar");
  EXPECT_EQ(yaml_error(with("optimizer: [1, 2]")),
            "cfg.yaml: optimizer must be a mapping, got list");
  EXPECT_EQ(yaml_error(with("checkpoint: {every_steps: {a: 1}}")),
            "cfg.yaml: checkpoint.every_steps must be a scalar, got a mapping");
  EXPECT_EQ(yaml_error(with("training: {seed: [1]}")),
            "cfg.yaml: training.seed must be a scalar, got a list");
  EXPECT_EQ(yaml_error(with("training: {seed: x}")),
            "cfg.yaml: training.seed has an invalid value 'x'");
  EXPECT_EQ(yaml_error("output_dir: o\nmodel: 3\n"),
            "cfg.yaml: model must be a mapping, got scalar");
  EXPECT_EQ(yaml_error("output_dir: o\nmodel: {path: m, variant: none}\ndata: {train: t}\n"
                       "stages: {a: 1}\n"),
            "cfg.yaml: stages must be a non-empty list");
}

}  // namespace
}  // namespace uniattn
