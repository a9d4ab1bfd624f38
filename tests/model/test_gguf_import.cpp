// GGUF import and config.json defaults against llama.cpp's and transformers' rules, on tiny
// models written by tests/fixtures/make_gguf_import_fixtures.py:
// - LLaMA-3.x rope scaling stored as rope_freqs.weight becomes rope_type llama3 with the same
//   frequencies (four sets of factors);
// - keys llama.cpp defaults or derives when a GGUF lacks them (Gemma-2 soft-capping 50 / 30 and
//   window 4096, the 27B query scale of Gemma-2 and Gemma-3, Gemma-3 without a sliding window);
// - keys transformers' config classes default when config.json lacks them;
// - uniattn-convert's config.json carries the same model for transformers, also through the
//   legacy rope_theta / rope_scaling keys alone;
// - the reported cases themselves (tests/model/data: a LLaMA-3.1-style GGUF with rope_freqs.weight,
//   Gemma-2 GGUF / config.json without the soft-capping keys), scored as uniattn-eval --items does
//   against the per-choice log-likelihoods transformers gave (their expected.json).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/layers.h"
#include "model_test_util.h"
#include "uniattn/data/mc_data.h"
#include "uniattn/eval/eval.h"
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

// ---- the reported cases, with transformers' values (tests/model/data/<case>/expected.json) ----

fs::path reported(const std::string& name) {
  return test::source_dir() / "tests" / "model" / "data" / name;
}

// Per-choice log-likelihoods of the case's data/bugtask.jsonl, as uniattn-eval --items computes
// them.
std::vector<std::vector<double>> bugtask_logprobs(const fs::path& model_path,
                                                  const fs::path& case_path) {
  auto model = load_model(model_path);
  model->eval();
  auto tok = load_tokenizer(model_path);
  at::NoGradGuard ng;
  const auto r =
      evaluate_mc(model, *tok, load_mc_jsonl(case_path / "data" / "bugtask.jsonl"), "bugtask");
  std::vector<std::vector<double>> out;
  for (const auto& item : r.items) out.push_back(item.logprob);
  return out;
}

// Agreement within 1e-2 (the reports' criterion; fp32 sums of ~10 log-softmax values on both
// sides differ by ~1e-5, while each fault moves these values by 0.7 to 1,600 nats).
void expect_logprobs(const fs::path& model_path, const fs::path& case_path, const json& want,
                     const std::string& what) {
  const auto got = bugtask_logprobs(model_path, case_path);
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  for (size_t q = 0; q < got.size(); ++q) {
    const auto w = want[q].get<std::vector<double>>();
    ASSERT_EQ(got[q].size(), w.size()) << what << " question " << q;
    for (size_t c = 0; c < w.size(); ++c) worst = std::max(worst, std::abs(got[q][c] - w[c]));
  }
  std::printf("%s: max |logprob - transformers| = %.3g\n", what.c_str(), worst);
  EXPECT_LT(worst, 1e-2) << what;
}

// The values with and without the fix differ: the test can fail.
double max_difference(const json& a, const json& b) {
  double d = 0;
  for (size_t q = 0; q < a.size(); ++q)
    for (size_t c = 0; c < a[q].size(); ++c)
      d = std::max(d, std::abs(a[q][c].get<double>() - b[q][c].get<double>()));
  return d;
}

// llama31_like.gguf stores LLaMA-3.1 rope scaling as rope_freqs.weight; llama_no_rope_freqs.gguf
// is the same model without it (default rope).
TEST(ReportedCases, Llama31RopeFreqsGguf) {
  const auto dir = reported("llama31_rope_freqs_gguf");
  const auto want = read_json(dir / "expected.json");
  ASSERT_GT(max_difference(want["hf_llama3_rope"], want["hf_default_rope"]), 0.5);
  expect_logprobs(dir / "llama31_like.gguf", dir, want["hf_llama3_rope"], "llama31_like.gguf");
  expect_logprobs(dir / "llama_no_rope_freqs.gguf", dir, want["hf_default_rope"],
                  "llama_no_rope_freqs.gguf");
  // uniattn-convert writes the matching rope_scaling, and the directory scores the same.
  const auto out = test::scratch_dir() / "llama31_like";
  convert_gguf(dir / "llama31_like.gguf", out, at::kFloat);
  const auto cfg = read_json(out / "config.json");
  ASSERT_TRUE(cfg["rope_scaling"].is_object()) << cfg.dump();
  EXPECT_EQ(cfg["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(cfg["rope_parameters"]["rope_type"], "llama3");
  expect_logprobs(out, dir, want["hf_llama3_rope"], "llama31_like converted");
}

// Gemma-2 without the soft-capping keys (GGUF and config.json) runs with transformers' and
// llama.cpp's 50 / 30, as the GGUF that has the keys does.
TEST(ReportedCases, Gemma2SoftcapDefaults) {
  const auto dir = reported("gemma2_softcap_defaults");
  const auto want = read_json(dir / "expected.json");
  ASSERT_GT(max_difference(want["hf_softcap_50_30"], want["hf_no_softcap"]), 100.0);
  for (const char* input :
       {"gemma2_no_softcap_keys.gguf", "gemma2_with_softcap_keys.gguf", "hf_no_softcap_keys"})
    expect_logprobs(dir / input, dir, want["hf_softcap_50_30"], input);
  // uniattn-convert writes the defaults, not null (which would turn capping off).
  const auto out = test::scratch_dir() / "gemma2_no_softcap_keys";
  convert_gguf(dir / "gemma2_no_softcap_keys.gguf", out, at::kFloat);
  const auto cfg = read_json(out / "config.json");
  EXPECT_EQ(cfg["attn_logit_softcapping"], 50.0) << cfg.dump();
  EXPECT_EQ(cfg["final_logit_softcapping"], 30.0) << cfg.dump();
  expect_logprobs(out, dir, want["hf_softcap_50_30"], "gemma2_no_softcap_keys converted");
}

// A copy of `src` whose UINT32 metadata value `key` is `value` (the value follows the key's
// length-prefixed name and its type tag, GGUF_TYPE_UINT32 = 4).
fs::path with_u32(const fs::path& src, const std::string& key, uint32_t value,
                  const fs::path& dst) {
  std::string bytes = read_text_file(src);
  // The key as GGUF stores it: uint64 length, then the bytes (so head_count is not found inside
  // head_count_kv).
  std::string stored(8, '\0');
  const uint64_t len = key.size();
  std::memcpy(stored.data(), &len, 8);
  const auto found = bytes.find(stored + key);
  if (found == std::string::npos) {
    ADD_FAILURE() << key << " not in " << src;
    return src;
  }
  const auto at = found + 8;
  uint32_t type = 0;
  std::memcpy(&type, bytes.data() + at + key.size(), 4);
  EXPECT_EQ(type, 4u) << key;
  std::memcpy(bytes.data() + at + key.size() + 4, &value, 4);
  std::ofstream(dst, std::ios::binary) << bytes;
  return dst;
}

// The kind of the reported huge_num_layers.config.json (a count read from a file sizing tables
// before it is checked), in GGUF metadata: block_count and head_count are checked first.
TEST(ReportedCases, CountsFromGgufMetadataAreCheckedBeforeUse) {
  const auto src = reported("gemma2_softcap_defaults") / "gemma2_no_softcap_keys.gguf";
  const auto d = test::scratch_dir();
  for (uint32_t n : {0u, 1025u, 0xFFFFFFFFu}) {
    const auto bad = with_u32(src, "gemma2.block_count", n, d / "bad.gguf");
    test::expect_error([&] { load_config(bad); },
                       "block_count must be in [1, 1024], got " + std::to_string(n));
  }
  const auto bad = with_u32(src, "gemma2.attention.head_count", 0, d / "heads.gguf");
  test::expect_error([&] { load_config(bad); }, "attention.head_count must be positive");
  EXPECT_EQ(load_config(with_u32(src, "gemma2.block_count", 4, d / "ok.gguf")).num_layers, 4);
}

}  // namespace
