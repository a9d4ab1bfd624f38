// A checkpoint's end tokens and sampling defaults, end to end, on the tiny models of
// tests/fixtures/make_generation_fixtures.py (greedy output: a chain of tokens ending in an end
// token that is not config.json's first):
//  * generate() with GenerationConfig::load + apply_generation_config gives transformers' greedy
//    generate() tokens for every case (LLaMA-3 generation_config.json [256, 257], config.json
//    eos list, Gemma <end_of_turn>, GGUF eot / eom);
//  * the settings equal those transformers' generate() runs with;
//  * uniattn-generate stops there (and at generation_config.json stop_strings) and applies the
//    defaults unless a flag says otherwise;
//  * save_model / convert_gguf write generation_config.json and tokenizer_config.json that
//    transformers loads with the source's values (the fixture script's --verify mode);
//  * the reported case (tests/infer/data/two_end_tokens: [256, 257] in generation_config.json, or
//    as config.json's eos_token_id list) stops where transformers does (its expected.json).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path data() { return test::data_dir() / "generation"; }

json expected() { return json::parse(read_text_file(data() / "expected.json")); }

// Case name -> checkpoint path.
const std::map<std::string, fs::path>& cases() {
  static const std::map<std::string, fs::path> c = {
      {"llama_generation_config", data() / "llama_generation_config"},
      {"llama_config_list", data() / "llama_config_list"},
      {"gemma_end_of_turn", data() / "gemma_end_of_turn"},
      {"llama_sampling", data() / "llama_sampling"},
      {"llama_sampling_defaults", data() / "llama_sampling_defaults"},
      {"llama_eot_gguf", data() / "llama_eot.gguf"},
      {"llama_eom_gguf", data() / "llama_eom.gguf"}};
  return c;
}

std::vector<int32_t> ids32(const json& j) { return j.get<std::vector<int32_t>>(); }

// Greedy generation of 20 tokens at most from the case's prompt, with the checkpoint's settings
// (sampling forced greedy, as the oracle ran generate(do_sample=False, max_new_tokens=20)).
GenerateResult greedy_run(const fs::path& path, const json& c) {
  auto model = load_model(path);
  auto tok = load_tokenizer(path);
  EXPECT_EQ(tok->encode("Hi", tok->adds_bos(), true), ids32(c["prompt_ids"])) << path;
  GenerateOptions o;
  apply_generation_config(GenerationConfig::load(path), o);
  o.sampling.temperature = 0.0;
  o.max_new_tokens = 20;
  return generate(model, tok.get(), {ids32(c["prompt_ids"])}, o);
}

TEST(EndTokens, GreedyOutputEqualsTransformers) {
  const json e = expected();
  for (const auto& [name, path] : cases()) {
    const auto r = greedy_run(path, e[name]);
    EXPECT_EQ(r.tokens[0], ids32(e[name]["new_tokens"])) << name;
    EXPECT_EQ(r.texts[0], e[name]["text"].get<std::string>()) << name;
    EXPECT_EQ(r.finish[0], FinishReason::StopToken) << name;
  }
}

// Without a GenerationConfig, generate() still stops at every id of config.json's eos_token_id.
TEST(EndTokens, ModelConfigListStopsWithoutGenerationConfig) {
  auto model = load_model(data() / "llama_config_list");
  GenerateOptions o;
  o.max_new_tokens = 20;
  auto r = generate(model, nullptr, {{72, 105}}, o);
  EXPECT_EQ(r.tokens[0], std::vector<int32_t>{257});
  o.stop_at_eos = false;  // fixed-length runs ignore every end token
  EXPECT_EQ(generate(model, nullptr, {{72, 105}}, o).tokens[0].size(), 20u);
}

// apply_generation_config gives the settings transformers' generate() runs with.
TEST(EndTokens, SettingsEqualTransformers) {
  const json e = expected();
  for (const auto& [name, path] : cases()) {
    if (name.find("gguf") != std::string::npos) continue;  // transformers has no GGUF eot
    const json& s = e[name]["settings"];
    GenerateOptions o;
    o.max_new_tokens = 128;
    apply_generation_config(GenerationConfig::load(path), o);
    EXPECT_EQ(o.eos_tokens, ids32(s["eos_token_id"])) << name;
    EXPECT_EQ(!o.sampling.greedy(), s["do_sample"].get<bool>()) << name;
    if (!o.sampling.greedy()) {
      EXPECT_DOUBLE_EQ(o.sampling.temperature, s["temperature"].get<double>()) << name;
      EXPECT_EQ(o.sampling.top_k, s["top_k"].get<int64_t>()) << name;
      EXPECT_DOUBLE_EQ(o.sampling.top_p, s["top_p"].get<double>()) << name;
    }
    EXPECT_DOUBLE_EQ(o.sampling.repetition_penalty, s["repetition_penalty"].get<double>()) << name;
    EXPECT_EQ(o.max_new_tokens,
              s["max_new_tokens"].is_null() ? 128 : s["max_new_tokens"].get<int64_t>())
        << name;
  }
  GenerationConfig top_p0;  // transformers keeps only the most likely token
  top_p0.do_sample = true;
  top_p0.top_p = 0.0;
  GenerateOptions o;
  apply_generation_config(top_p0, o);
  EXPECT_EQ(o.sampling.top_k, 1);
  EXPECT_NO_THROW(o.sampling.validate());
}

// --- the command-line tool ---------------------------------------------------------------------

fs::path generate_exe() {
  return fs::read_symlink("/proc/self/exe").parent_path() / ".." / "uniattn-generate";
}

struct CliRun {
  int rc = -1;
  std::string out, err;
};

CliRun run_cli(const std::string& args) {
  // Not test::scratch_dir(), which would empty the directory the test keeps its inputs in.
  const auto dir = fs::temp_directory_path() / "uniattn-tests" / "end-tokens-cli";
  fs::create_directories(dir);
  const std::string cmd = generate_exe().string() + " " + args + " > '" +
                          (dir / "out.txt").string() + "' 2> '" + (dir / "err.txt").string() + "'";
  CliRun r;
  const int rc = std::system(cmd.c_str());
  r.rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = read_text_file(dir / "out.txt");
  r.err = read_text_file(dir / "err.txt");
  return r;
}

std::string model_arg(const std::string& name) {
  return "--model '" + cases().at(name).string() + "'";
}

TEST(EndTokensCli, StopsAtEveryEndToken) {
  if (!fs::exists(generate_exe())) GTEST_SKIP() << generate_exe() << " not built";
  const json e = expected();
  for (const std::string name : {"llama_generation_config", "llama_config_list",
                                 "gemma_end_of_turn", "llama_eot_gguf", "llama_eom_gguf"}) {
    const auto r = run_cli(model_arg(name) + " --prompt Hi --max-new-tokens 20 --bench");
    ASSERT_EQ(r.rc, 0) << name << ": " << r.err;
    EXPECT_EQ(r.out, e[name]["text"].get<std::string>() + "\n") << name;
    const auto n = e[name]["new_tokens"].size();
    EXPECT_NE(r.err.find("generated tokens " + std::to_string(n) + "\n"), std::string::npos)
        << name << ": " << r.err;
  }
  const auto r = run_cli(model_arg("llama_generation_config") +
                         " --prompt Hi --max-new-tokens 20 --bench --ignore-eos");
  EXPECT_NE(r.err.find("generated tokens 20\n"), std::string::npos) << r.err;
}

// --stop: a text ends the sequence before it (transformers' greedy text "ok" cut at "k"); a
// special token given as text stops by id.
TEST(EndTokensCli, StopStrings) {
  if (!fs::exists(generate_exe())) GTEST_SKIP() << generate_exe() << " not built";
  const json e = expected();
  const auto text = e["gemma_end_of_turn"]["text"].get<std::string>();
  ASSERT_EQ(text, "ok");
  auto r = run_cli(model_arg("gemma_end_of_turn") + " --prompt Hi --bench --stop k");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, text.substr(0, text.find('k')) + "\n");
  EXPECT_NE(r.err.find("generated tokens 2\n"), std::string::npos) << r.err;
  // With end tokens ignored, only the --stop token ends it.
  r = run_cli(model_arg("llama_generation_config") +
              " --prompt Hi --bench --max-new-tokens 20 --ignore-eos --stop '<|eot_id|>'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("generated tokens 1\n"), std::string::npos) << r.err;
}

// generation_config.json stop_strings: a text ends the sequence before it (transformers' greedy
// text "ok" cut at "k"), after the user's --stop texts; a special token stops by id, as with
// --stop; --ignore-eos drops the checkpoint's (the run goes to --max-new-tokens) but not --stop.
TEST(EndTokensCli, CheckpointStopStrings) {
  if (!fs::exists(generate_exe())) GTEST_SKIP() << generate_exe() << " not built";
  const auto text = expected()["gemma_end_of_turn"]["text"].get<std::string>();
  ASSERT_EQ(text, "ok");
  const auto dir = test::scratch_dir() / "stops";
  fs::create_directories(dir);
  for (const auto& f : fs::directory_iterator(cases().at("gemma_end_of_turn")))
    if (f.path().filename() != "generation_config.json")
      fs::copy_file(f.path(), dir / f.path().filename());
  const std::string model = "--model '" + dir.string() + "' --prompt Hi --bench ";
  auto tokens = [](const CliRun& r) {
    const auto at = r.err.find("generated tokens ");
    return at == std::string::npos ? r.err : r.err.substr(at, r.err.find('\n', at) - at);
  };
  // config.json's eos (1) only: without a stop string the run goes on past <end_of_turn>.
  write_text_atomic(dir / "generation_config.json", R"({"stop_strings": ["zz", "k"]})");
  auto r = run_cli(model + "--max-new-tokens 20");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, text.substr(0, text.find('k')) + "\n");
  EXPECT_EQ(tokens(r), "generated tokens 2");
  r = run_cli(model + "--max-new-tokens 20 --ignore-eos");
  EXPECT_EQ(tokens(r), "generated tokens 20");
  r = run_cli(model + "--max-new-tokens 20 --ignore-eos --stop k");
  EXPECT_EQ(r.out, text.substr(0, text.find('k')) + "\n");
  write_text_atomic(dir / "generation_config.json", R"({"stop_strings": "<end_of_turn>"})");
  r = run_cli(model + "--max-new-tokens 20");
  EXPECT_EQ(r.out, text + "\n");
  EXPECT_EQ(tokens(r), "generated tokens 3");
  write_text_atomic(dir / "generation_config.json", "{}");
  EXPECT_EQ(tokens(run_cli(model + "--max-new-tokens 20")), "generated tokens 20");
}

// The settings line (--verbose): the checkpoint's defaults, each flag given replacing one.
TEST(EndTokensCli, SamplingDefaultsUnlessFlagsSayOtherwise) {
  if (!fs::exists(generate_exe())) GTEST_SKIP() << generate_exe() << " not built";
  auto settings = [](const std::string& model, const std::string& flags) {
    const auto r = run_cli(model_arg(model) + " --prompt Hi --verbose " + flags);
    EXPECT_EQ(r.rc, 0) << r.err;
    const auto at = r.err.find("settings: ");
    return at == std::string::npos ? r.err : r.err.substr(at, r.err.find('\n', at) - at);
  };
  EXPECT_EQ(settings("llama_sampling", ""),
            "settings: max_new_tokens=7 do_sample=1 temperature=0.6 top_k=50 top_p=0.9 "
            "repetition_penalty=1.1 seed=0 end_tokens=256,257");
  EXPECT_EQ(settings("llama_sampling", "--temperature 0 --max-new-tokens 3 --seed 4"),
            "settings: max_new_tokens=3 do_sample=0 repetition_penalty=1.1 seed=4 "
            "end_tokens=256,257");
  EXPECT_EQ(settings("llama_sampling", "--do-sample false --top-k 5 --repetition-penalty 1"),
            "settings: max_new_tokens=7 do_sample=0 repetition_penalty=1 seed=0 "
            "end_tokens=256,257");
  EXPECT_EQ(settings("llama_sampling_defaults", ""),
            "settings: max_new_tokens=128 do_sample=1 temperature=1 top_k=50 top_p=1 "
            "repetition_penalty=1 seed=0 end_tokens=256,257");
  // --temperature alone samples, with transformers' top_k default of 50.
  EXPECT_EQ(settings("llama_generation_config", "--temperature 0.8"),
            "settings: max_new_tokens=128 do_sample=1 temperature=0.8 top_k=50 top_p=1 "
            "repetition_penalty=1 seed=0 end_tokens=256,257");
  EXPECT_EQ(settings("gemma_end_of_turn", ""),
            "settings: max_new_tokens=128 do_sample=0 repetition_penalty=1 seed=0 "
            "end_tokens=1,106");
  EXPECT_EQ(settings("llama_eom_gguf", "--ignore-eos"),
            "settings: max_new_tokens=128 do_sample=1 temperature=0.7 top_k=40 top_p=0.95 "
            "repetition_penalty=1.05 seed=0 end_tokens=none");
  // A malformed generation_config.json stops the tool with the file and key named.
  const auto bad = test::scratch_dir() / "bad";
  fs::create_directories(bad);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    fs::copy_file(cases().at("llama_sampling") / f, bad / f);
  write_text_atomic(bad / "generation_config.json", R"({"top_p": 7})");
  const auto r = run_cli("--model '" + bad.string() + "' --prompt Hi");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("generation_config.json: 'top_p' must lie in [0, 1]"), std::string::npos)
      << r.err;
}

// --- the reported case, with transformers' values ---------------------------------------------

fs::path two_end_tokens() { return test::source_dir() / "tests/infer/data/two_end_tokens"; }

TEST(EndTokensReportedCase, StopsAtTheSecondEndToken) {
  const json e = json::parse(read_text_file(two_end_tokens() / "expected.json"));
  for (const std::string name : {"a_generation_config", "b_config_list"}) {
    SCOPED_TRACE(name);
    const auto path = two_end_tokens() / name;
    const json& want = e[name];
    GenerateOptions o;
    apply_generation_config(GenerationConfig::load(path), o);
    EXPECT_EQ(o.eos_tokens, ids32(want["generation_config_eos"]));
    auto model = load_model(path);
    auto tok = load_tokenizer(path);
    o.max_new_tokens = 20;
    const auto r = generate(model, tok.get(), {tok->encode("Hi", tok->adds_bos(), true)}, o);
    EXPECT_EQ(r.tokens[0], ids32(want["new_tokens"]));
    EXPECT_EQ(r.texts[0], want["text"].get<std::string>());
    EXPECT_EQ(r.finish[0], FinishReason::StopToken);
    if (!fs::exists(generate_exe())) continue;
    // The report's command line.
    const auto cli =
        run_cli("--model '" + path.string() + "' --prompt Hi --max-new-tokens 20 --bench");
    ASSERT_EQ(cli.rc, 0) << cli.err;
    EXPECT_EQ(cli.out, want["text"].get<std::string>() + "\n");
    EXPECT_NE(cli.err.find("generated tokens " + std::to_string(want["n_new"].get<int>()) + "\n"),
              std::string::npos)
        << cli.err;
  }
}

// --- saved checkpoints ----------------------------------------------------------------------

fs::path python() {
  if (const char* p = std::getenv("UNIATTN_PYTHON")) return p;
  return test::source_dir() / ".venv" / "bin" / "python";
}

// The fixture script's --verify, in one Python run: transformers loads each saved directory with
// the values of save_expect/<case>.json. Returns its exit status (0: all agree).
int python_verify(const std::vector<std::pair<fs::path, std::string>>& saved) {
  std::string cmd = "'" + python().string() + "' '" +
                    (test::source_dir() / "tests/fixtures/make_generation_fixtures.py").string() +
                    "'";
  for (const auto& [dir, name] : saved)
    cmd += " --verify '" + dir.string() + "' --expect '" +
           (data() / "save_expect" / (name + ".json")).string() + "'";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(EndTokensSave, SavedDirectoryCarriesGenerationAndTokenizerConfig) {
  const json e = expected();
  std::vector<std::pair<fs::path, std::string>> saved;
  const auto root = test::scratch_dir();
  for (const auto& [name, path] : cases()) {
    const auto out = root / name;
    if (name.find("gguf") != std::string::npos) {
      convert_gguf(path, out, at::kFloat);
    } else {
      auto model = load_model(path);
      SaveOptions so;
      so.dtype = at::kFloat;
      so.source = path;
      save_model(model, out, so);
    }
    for (const char* f : {"generation_config.json", "tokenizer_config.json"})
      EXPECT_TRUE(fs::exists(out / f)) << name << ": " << f;
    EXPECT_EQ(GenerationConfig::load(out).to_json(), GenerationConfig::load(path).to_json())
        << name;
    // The saved directory generates what the source does (the GGUF's eot/eom survive).
    const auto r = greedy_run(out, e[name]);
    EXPECT_EQ(r.tokens[0], ids32(e[name]["new_tokens"])) << name;
    saved.emplace_back(out, name);
  }
  EXPECT_EQ(python_verify(saved), 0) << "transformers reads other values (printed above)";
}

// Without a source, generation_config.json still holds config.json's ids; other keys of the
// source's generation_config.json survive a save with a source.
TEST(EndTokensSave, WithoutSourceAndExtraKeys) {
  auto model = load_model(data() / "llama_config_list");
  const auto dir = test::scratch_dir();
  save_model(model, dir / "plain", at::kFloat);
  const auto plain = json::parse(read_text_file(dir / "plain" / "generation_config.json"));
  EXPECT_EQ(plain, json::parse(R"({"eos_token_id": [256, 257]})"));
  EXPECT_FALSE(fs::exists(dir / "plain" / "tokenizer_config.json"));

  const auto src = dir / "src";
  fs::create_directories(src);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
    fs::copy_file(cases().at("llama_sampling") / f, src / f);  // no tokenizer_config.json
  write_text_atomic(src / "generation_config.json",
                    R"({"eos_token_id": 257, "cache_implementation": "hybrid", "top_k": 3})");
  SaveOptions so;
  so.dtype = at::kFloat;
  so.source = src;
  auto m = load_model(src);
  save_model(m, dir / "out", so);
  const auto out = json::parse(read_text_file(dir / "out" / "generation_config.json"));
  EXPECT_EQ(out["cache_implementation"], "hybrid");
  EXPECT_EQ(out["top_k"], 3);
  EXPECT_EQ(out["eos_token_id"], json({257, 256}));  // config.json's 256 added
  // tokenizer_config.json produced by the tokenizer, since the source has none.
  EXPECT_TRUE(fs::exists(dir / "out" / "tokenizer_config.json"));
  EXPECT_EQ(load_tokenizer(dir / "out")->encode("Hi there"),
            load_tokenizer(src)->encode("Hi there"));
  test::expect_error([&] { save_tokenizer(dir / "plain", dir / "x"); }, "has no tokenizer");
}

}  // namespace
}  // namespace uniattn
