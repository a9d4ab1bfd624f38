// GGUF import and config.json defaults against llama.cpp's and transformers' rules, on tiny
// models written by tests/fixtures/make_gguf_import_fixtures.py:
// - LLaMA-3.x rope scaling stored as rope_freqs.weight becomes rope_type llama3 with the same
//   frequencies (four sets of factors);
// - keys llama.cpp defaults or derives when a GGUF lacks them (Gemma-2 soft-capping 50 / 30 and
//   window 4096, the 27B query scale of Gemma-2 and Gemma-3, Gemma-3 without a sliding window);
// - keys transformers' config classes default when config.json lacks them;
// - uniattn-convert's config.json carries the same model for transformers, also through the
//   legacy rope_theta / rope_scaling keys alone.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/layers.h"
#include "model_test_util.h"
#include "uniattn/io/gguf.h"
#include "uniattn/model/checkpoint.h"

using namespace uniattn;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path case_dir() { return test::data_dir() / "gguf_import"; }

json read_json(const fs::path& p) { return json::parse(read_text_file(p)); }

// fp32 on both sides: differences are summation order only (observed ~1e-6 of the logit scale);
// every fault these cases catch moves logits by 5e-3 or more (the fixture checks that).
double tolerance(const at::Tensor& oracle) {
  return 1e-5 * std::max(1.0, oracle.abs().max().item<double>());
}

void expect_logits(CausalLM& model, const fs::path& oracle_file, const std::string& what) {
  auto oracle = test::read_tensors(oracle_file);
  model->eval();
  at::NoGradGuard ng;
  auto logits = model->forward(oracle["input_ids"]);
  const double d = test::max_abs_diff(logits, oracle["logits"]);
  std::printf("%s: max |ours - transformers| = %.3g (logit scale %.3g)\n", what.c_str(), d,
              oracle["logits"].abs().max().item<double>());
  EXPECT_LT(d, tolerance(oracle["logits"])) << what;
}

RopeConfig rope_from(const json& r) {
  RopeConfig c;
  c.theta = r["rope_theta"].get<double>();
  c.type = RopeConfig::Type::Llama3;
  c.factor = r["factor"].get<double>();
  c.low_freq_factor = r["low_freq_factor"].get<double>();
  c.high_freq_factor = r["high_freq_factor"].get<double>();
  c.original_max_position = r["original_max_position_embeddings"].get<int64_t>();
  return c;
}

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) / b.to(at::kDouble) - 1.0).abs().max().item<double>();
}

const std::vector<std::string> kLlamaCases = {"llama31_rope_freqs", "llama32_rope_freqs",
                                              "llama3_other_factors", "llama31_8b_rope"};
const std::vector<std::string> kGemmaCases = {"gemma2_no_softcap_keys", "gemma2_27b_scale",
                                              "gemma3_sliding", "gemma3_no_sliding_key",
                                              "gemma3_27b_scale"};

class RopeFreqs : public ::testing::TestWithParam<std::string> {};

TEST_P(RopeFreqs, BecomeLlama3RopeWithTheSameFrequencies) {
  const auto name = GetParam();
  const auto gguf = case_dir() / (name + ".gguf");
  const auto want = read_json(case_dir() / (name + ".json"));
  auto c = load_config(gguf);
  ASSERT_EQ(c.rope.type, RopeConfig::Type::Llama3);
  EXPECT_EQ(c.rope_local.type, RopeConfig::Type::Llama3);
  EXPECT_DOUBLE_EQ(c.rope.theta, want["rope"]["rope_theta"].get<double>());
  // Frequencies: ours = base / rope_freqs = what transformers computes from the HF parameters.
  auto base = RopeConfig{};
  base.theta = c.rope.theta;
  auto factors = at::tensor(want["rope_freqs"].get<std::vector<double>>(), at::kDouble);
  auto ours = rope_inv_freq(c.rope, c.head_dim);
  EXPECT_LT(max_rel_diff(ours, rope_inv_freq(base, c.head_dim).to(at::kDouble) / factors), 1e-5);
  EXPECT_LT(max_rel_diff(ours, rope_inv_freq(rope_from(want["rope"]), c.head_dim)), 1e-5);
  std::printf("%s: factor %g low %g high %g original_max_position %lld\n", name.c_str(),
              c.rope.factor, c.rope.low_freq_factor, c.rope.high_freq_factor,
              static_cast<long long>(c.rope.original_max_position));
  if (name == "llama31_8b_rope") {  // the released parameters come back exactly
    EXPECT_EQ(c.rope.factor, 8.0);
    EXPECT_EQ(c.rope.low_freq_factor, 1.0);
    EXPECT_EQ(c.rope.high_freq_factor, 4.0);
    EXPECT_EQ(c.rope.original_max_position, 8192);
  }
  auto model = load_model(gguf);
  expect_logits(model, case_dir() / (name + ".safetensors"), name + " (gguf)");

  // uniattn-convert: legacy keys next to rope_parameters, and the directory loads the same.
  auto out = test::scratch_dir() / name;
  convert_gguf(gguf, out, at::kFloat);
  auto cfg = read_json(out / "config.json");
  EXPECT_EQ(cfg["rope_theta"].get<double>(), c.rope.theta);
  ASSERT_TRUE(cfg["rope_scaling"].is_object()) << cfg.dump();
  EXPECT_EQ(cfg["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(cfg["rope_scaling"]["factor"].get<double>(), c.rope.factor);
  EXPECT_EQ(cfg["rope_scaling"]["original_max_position_embeddings"].get<int64_t>(),
            c.rope.original_max_position);
  EXPECT_EQ(cfg["rope_parameters"]["rope_type"], "llama3");
  auto back = load_model(out);
  expect_logits(back, case_dir() / (name + ".safetensors"), name + " (converted)");
}

INSTANTIATE_TEST_SUITE_P(Llama3, RopeFreqs, ::testing::ValuesIn(kLlamaCases));

class GemmaDefaults : public ::testing::TestWithParam<std::string> {};

TEST_P(GemmaDefaults, MissingKeysGetLlamaCppDefaults) {
  const auto name = GetParam();
  const auto gguf = case_dir() / (name + ".gguf");
  const auto want = read_json(case_dir() / (name + ".json"));
  auto c = load_config(gguf);
  EXPECT_STREQ(arch_name(c.arch), want["arch"] == "gemma3" ? "gemma3_text" : "gemma2");
  if (want.contains("attn_logit_softcapping")) {
    EXPECT_EQ(c.attn_logit_softcap, want["attn_logit_softcapping"].get<double>());
  }
  if (want.contains("final_logit_softcapping")) {
    EXPECT_EQ(c.final_logit_softcap, want["final_logit_softcapping"].get<double>());
  }
  EXPECT_EQ(c.sliding_window, want["sliding_window"].get<int64_t>());
  EXPECT_EQ(c.query_pre_attn_scalar, want["query_pre_attn_scalar"].get<double>());
  auto types = want["layer_types"].get<std::vector<std::string>>();
  ASSERT_EQ(static_cast<int64_t>(types.size()), c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l)
    EXPECT_EQ(c.layer_is_sliding(l), types[l] == "sliding_attention") << "layer " << l;
  if (want.contains("rope_theta")) {
    EXPECT_EQ(c.rope.theta, want["rope_theta"].get<double>());
  }
  if (want.contains("rope_factor")) {
    EXPECT_EQ(c.rope.type, RopeConfig::Type::Linear);
    EXPECT_EQ(c.rope.factor, want["rope_factor"].get<double>());
  }
  if (want.contains("rope_local_theta")) {
    EXPECT_EQ(c.rope_local.theta, want["rope_local_theta"].get<double>());
    EXPECT_EQ(c.rope_local.type, RopeConfig::Type::Default);
  }
  auto model = load_model(gguf);
  expect_logits(model, case_dir() / (name + ".safetensors"), name + " (gguf)");

  // uniattn-convert writes the values (null for "off"), not nothing and not null for defaults.
  auto out = test::scratch_dir() / name;
  convert_gguf(gguf, out, at::kFloat);
  auto cfg = read_json(out / "config.json");
  for (auto& [key, value] : want["legacy"].items()) {
    ASSERT_TRUE(cfg.contains(key)) << key << " missing from " << cfg.dump();
    EXPECT_EQ(cfg[key], value) << key;
  }
  auto back = load_model(out);
  expect_logits(back, case_dir() / (name + ".safetensors"), name + " (converted)");
}

INSTANTIATE_TEST_SUITE_P(Gemma, GemmaDefaults, ::testing::ValuesIn(kGemmaCases));

class ConfigJsonDefaults : public ::testing::TestWithParam<std::string> {};

TEST_P(ConfigJsonDefaults, KeylessConfigLoadsAsTransformersReadsIt) {
  const auto name = GetParam();
  const auto dir = case_dir() / "hf" / name;
  auto c = load_config(dir);
  if (name == "gemma2_keyless") {
    EXPECT_EQ(c.attn_logit_softcap, 50.0);   // Gemma2Config.attn_logit_softcapping
    EXPECT_EQ(c.final_logit_softcap, 30.0);  // Gemma2Config.final_logit_softcapping
    EXPECT_EQ(c.sliding_window, 4096);
    EXPECT_EQ(c.query_pre_attn_scalar, 256.0);
  } else if (name == "gemma3_keyless") {
    EXPECT_EQ(c.rope.theta, 1e6);  // Gemma3TextConfig.default_theta["global"]
    EXPECT_EQ(c.rope_local.theta, 10000.0);
    EXPECT_EQ(c.attn_logit_softcap, 0.0);
    EXPECT_EQ(c.final_logit_softcap, 0.0);
    EXPECT_EQ(c.sliding_window, 4096);
    EXPECT_FALSE(c.layer_is_sliding(5));
    EXPECT_TRUE(c.layer_is_sliding(6));
  } else if (name == "mistral_keyless") {
    EXPECT_EQ(c.sliding_window, 4096);  // MistralConfig.sliding_window
    EXPECT_EQ(c.num_kv_heads, 8);       // MistralConfig.num_key_value_heads
    EXPECT_EQ(c.max_position_embeddings, 4096 * 32);
  } else if (name == "llama_legacy_rope") {
    EXPECT_EQ(c.rope.type, RopeConfig::Type::Llama3);
    EXPECT_EQ(c.rope.original_max_position, 32);  // = max_position_embeddings
  }
  auto model = load_model(dir);
  expect_logits(model, case_dir() / (name + ".safetensors"), name);
}

INSTANTIATE_TEST_SUITE_P(Transformers, ConfigJsonDefaults,
                         ::testing::Values("gemma2_keyless", "gemma3_keyless", "mistral_keyless",
                                           "llama_legacy_rope"));

TEST(ConfigJsonDefaults, NullTurnsAFeatureOff) {
  auto j = read_json(case_dir() / "hf" / "gemma2_keyless" / "config.json");
  j["attn_logit_softcapping"] = nullptr;
  j["final_logit_softcapping"] = nullptr;
  auto c = ModelConfig::from_json(j);
  EXPECT_EQ(c.attn_logit_softcap, 0.0);
  EXPECT_EQ(c.final_logit_softcap, 0.0);
  auto m = read_json(case_dir() / "hf" / "mistral_keyless" / "config.json");
  m["sliding_window"] = nullptr;
  auto cm = ModelConfig::from_json(m);
  EXPECT_EQ(cm.sliding_window, 0);
  EXPECT_FALSE(cm.layer_is_sliding(0));
  // And to_json writes null back rather than leaving the key out (which would mean 4096).
  EXPECT_TRUE(cm.to_json().at("sliding_window").is_null());
  EXPECT_TRUE(c.to_json().at("attn_logit_softcapping").is_null());
}

// transformers on uniattn-convert's output: the directory as written, and its config.json with
// only the legacy rope keys (rope_parameters and layer_types removed, as transformers 4.x and
// other readers see it).
TEST(ConvertedCheckpoints, TransformersReadsTheSameModel) {
  const char* py = std::getenv("UNIATTN_PYTHON");
  if (!py) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  auto root = test::scratch_dir();
  std::string args;
  std::vector<std::string> names = kLlamaCases;
  names.insert(names.end(), kGemmaCases.begin(), kGemmaCases.end());
  for (const auto& name : names) {
    convert_gguf(case_dir() / (name + ".gguf"), root / name, at::kFloat);
    args += " " + (root / name).string() + " " + (case_dir() / (name + ".safetensors")).string();
  }
  auto script = root / "check.py";
  std::ofstream(script)
      << "import json, shutil, sys, torch\n"
         "from transformers import AutoModelForCausalLM\n"
         "from safetensors.torch import load_file\n"
         "bad = 0\n"
         "a = sys.argv[1:]\n"
         "for d, ref in zip(a[0::2], a[1::2]):\n"
         "    o = load_file(ref)\n"
         "    tol = 1e-5 * max(1.0, o['logits'].abs().max().item())\n"
         "    legacy = d + '_legacy'\n"
         "    shutil.copytree(d, legacy)\n"
         "    c = json.load(open(d + '/config.json'))\n"
         "    c.pop('rope_parameters'); c.pop('layer_types', None)\n"
         "    json.dump(c, open(legacy + '/config.json', 'w'))\n"
         "    for path in (d, legacy):\n"
         "        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,\n"
         "                                                 attn_implementation='eager').eval()\n"
         "        with torch.no_grad():\n"
         "            diff = (m(input_ids=o['input_ids']).logits - "
         "o['logits']).abs().max().item()\n"
         "        print(path, 'max diff', diff, 'tol', tol)\n"
         "        bad += diff > tol\n"
         "sys.exit(1 if bad else 0)\n";
  auto cmd = std::string(py) + " " + script.string() + args;
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST(GgufImport, RopeFreqsThatAreNotLlama3AreRefused) {
  // A GGUF whose rope_freqs.weight is not of LLaMA-3's shape (here: decreasing factors) must not
  // load as some other rope.
  auto src = case_dir() / "llama31_rope_freqs.gguf";
  auto f = GgufFile::open(src);
  const auto& info = f.tensor("rope_freqs.weight");
  auto dst = test::scratch_dir() / "bad.gguf";
  fs::copy_file(src, dst);
  {
    std::fstream io(dst, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(info.offset));  // absolute
    std::vector<float> weird = {8, 1, 8, 1, 8, 1, 8, 1};
    io.write(reinterpret_cast<const char*>(weird.data()), weird.size() * sizeof(float));
  }
  test::expect_error([&] { load_config(dst); }, "rope_freqs.weight is not LLaMA-3 rope scaling");
}

}  // namespace
