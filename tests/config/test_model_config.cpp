// Config and SuperBlock parsing: the reference (size, begin, end) semantics, explicit groups, and
// a clear error for every invalid input.
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "uniattn/config/model_config.h"
#include "uniattn/error.h"

using namespace uniattn;
using nlohmann::json;

namespace {

using test::expect_error;

json llama_json() {
  return json{{"model_type", "llama"},        {"vocab_size", 100},
              {"hidden_size", 64},            {"intermediate_size", 128},
              {"num_hidden_layers", 32},      {"num_attention_heads", 4},
              {"num_key_value_heads", 2},     {"rms_norm_eps", 1e-5},
              {"rope_theta", 500000.0},       {"tie_word_embeddings", false},
              {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}};
}

TEST(SuperBlocks, ReferenceDefaultFor32Layers) {
  auto s = UniAttnSpec::from_range(Variant::UniAttn, 4, 16, 32, 32);
  // The reference rule: leader iff i < b, i >= e or (i - b) % g == 0.
  for (int64_t i = 0; i < 32; ++i) {
    bool leader = i < 16 || (i - 16) % 4 == 0;
    EXPECT_EQ(s.is_follower(i), !leader) << "layer " << i;
    if (!leader) {
      EXPECT_EQ(s.leader_of(i), i - (i - 16) % 4);
    }
  }
  EXPECT_EQ(s.num_followers(), 12);
}

TEST(SuperBlocks, EndBeyondLayersAndShortTail) {
  auto s = UniAttnSpec::from_range(Variant::Softmax, 4, 15, 40, 30);
  // Groups 15-18, 19-22, 23-26, 27-29.
  ASSERT_EQ(s.groups.size(), 4u);
  EXPECT_EQ(s.groups.back(), (std::vector<int64_t>{27, 28, 29}));
  EXPECT_EQ(s.num_followers(), 11);
  for (int64_t i = 0; i < 30; ++i) {
    bool leader = i < 15 || (i - 15) % 4 == 0;
    EXPECT_EQ(s.is_follower(i), !leader);
  }
}

TEST(SuperBlocks, ParseForms) {
  auto a = UniAttnSpec::parse(Variant::UniAttn, "4,16,32", 32);
  EXPECT_EQ(a.groups.size(), 4u);
  auto b = UniAttnSpec::parse(Variant::Cla, "16-19; 20,22,24", 32);
  ASSERT_EQ(b.groups.size(), 2u);
  EXPECT_EQ(b.groups[1], (std::vector<int64_t>{20, 22, 24}));
  EXPECT_EQ(b.leader_of(22), 20);
  EXPECT_EQ(b.leader_of(21), 21);
}

TEST(SuperBlocks, InvalidSpecsAreRejected) {
  expect_error([] { UniAttnSpec::from_range(Variant::UniAttn, 1, 16, 32, 32); }, "size 1 < 2");
  expect_error([] { UniAttnSpec::from_range(Variant::UniAttn, 4, 32, 40, 32); }, "begin 32 >=");
  expect_error([] { UniAttnSpec::from_range(Variant::UniAttn, 4, 16, 16, 32); }, "end 16 <=");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "4,16", 32); }, "expected SIZE,BEGIN,END");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "4,x,32", 32); }, "not an integer");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "16-19;19-21", 32); },
               "more than one group");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "30-33", 32); }, "outside the model");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "20,18;22,23", 32); }, "increasing order");
  expect_error([] { UniAttnSpec::parse(Variant::UniAttn, "20;21-23", 32); }, "fewer than 2");
  expect_error([] { parse_variant("shared"); }, "unknown UniAttn variant 'shared'");
}

TEST(Config, ParsesLlamaWithLlama3Rope) {
  auto c = ModelConfig::from_json(llama_json());
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope.type, RopeConfig::Type::Llama3);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_FALSE(c.uniattn.enabled());
}

TEST(Config, UniAttnRoundTripUsesDistinctModelType) {
  auto c = ModelConfig::from_json(llama_json());
  c.uniattn = UniAttnSpec::from_range(Variant::UniAttn, 4, 16, 32, 32);
  auto j = c.to_json();
  EXPECT_EQ(j["model_type"], "uniattn_llama");
  auto back = ModelConfig::from_json(j);
  EXPECT_EQ(back.uniattn.variant, Variant::UniAttn);
  EXPECT_EQ(back.uniattn.groups, c.uniattn.groups);
  EXPECT_EQ(back.rope.type, RopeConfig::Type::Llama3);
  // A plain model round-trips as plain llama.
  auto plain = ModelConfig::from_json(ModelConfig::from_json(llama_json()).to_json());
  EXPECT_EQ(plain.to_json()["model_type"], "llama");
}

TEST(Config, GemmaLayerTypesAndBoundaries) {
  json j = {{"model_type", "gemma2"},     {"vocab_size", 100},        {"hidden_size", 64},
            {"intermediate_size", 128},   {"num_hidden_layers", 8},   {"num_attention_heads", 4},
            {"num_key_value_heads", 2},   {"head_dim", 32},           {"sliding_window", 16},
            {"attn_logit_softcapping", 50.0}, {"final_logit_softcapping", 30.0},
            {"query_pre_attn_scalar", 32}};
  auto c = ModelConfig::from_json(j);
  EXPECT_TRUE(c.layer_is_sliding(0));
  EXPECT_FALSE(c.layer_is_sliding(1));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_NEAR(c.attention_scale(), 1.0 / std::sqrt(32.0), 1e-12);
  // Consecutive groups mix sliding and global layers on Gemma-2: rejected.
  auto bad = j;
  bad["model_type"] = "uniattn_gemma2";
  bad["uniattn"] = {{"variant", "uniattn"}, {"superblocks", {{"size", 2}, {"begin", 4}, {"end", 8}}}};
  expect_error([&] { ModelConfig::from_json(bad); }, "crosses a local/global attention boundary");
  // Groups of one attention type are fine.
  auto good = bad;
  good["uniattn"] = {{"variant", "uniattn"}, {"groups", {{4, 6}, {5, 7}}}};
  auto g = ModelConfig::from_json(good);
  EXPECT_EQ(g.uniattn.leader_of(6), 4);
  EXPECT_EQ(g.uniattn.leader_of(7), 5);
}

TEST(Config, ClearErrors) {
  auto with = [](const std::string& key, json v) {
    auto j = llama_json();
    j[key] = v;
    return j;
  };
  expect_error([&] { ModelConfig::from_json(with("model_type", "gpt_neox")); },
               "unsupported model_type 'gpt_neox'");
  expect_error([&] { ModelConfig::from_json(with("frobnicate", 3)); },
               "unknown config key 'frobnicate'");
  // A Gemma-only key in a LLaMA config is unknown there.
  expect_error([&] { ModelConfig::from_json(with("attn_logit_softcapping", 50.0)); },
               "unknown config key 'attn_logit_softcapping'");
  expect_error([&] { ModelConfig::from_json(with("num_key_value_heads", 3)); },
               "not a multiple of 'num_key_value_heads'");
  expect_error([&] { ModelConfig::from_json(with("hidden_size", "big")); },
               "'hidden_size' must be an integer");
  auto j = llama_json();
  j.erase("vocab_size");
  expect_error([&] { ModelConfig::from_json(j); }, "missing required key 'vocab_size'");
  expect_error([&] { ModelConfig::from_json(with("rope_scaling", {{"rope_type", "yarn"}})); },
               "unsupported rope_type 'yarn'");
  auto u = llama_json();
  u["uniattn"] = {{"variant", "uniattn"}, {"groups", {{16, 17}}}};
  expect_error([&] { ModelConfig::from_json(u); }, "'uniattn' section in a plain 'llama'");
  u["model_type"] = "uniattn_llama";
  u["uniattn"]["extra"] = 1;
  expect_error([&] { ModelConfig::from_json(u); }, "unknown key 'uniattn.extra'");
  auto dir = test::scratch_dir();
  std::ofstream(dir / "config.json") << "{not json";
  expect_error([&] { ModelConfig::load(dir / "config.json"); }, "not valid JSON");
}

}  // namespace
