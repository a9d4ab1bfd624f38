// uniattn-eval: multiple-choice accuracy (acc / acc_norm by log-likelihood, as
// lm-evaluation-harness computes them) on the JSONL written by scripts/prepare_eval_data.py, and
// response-only loss / perplexity on held-out instruction data. Writes JSON and prints a table.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <limits>
#include <map>

#include "cli_util.h"
#include "model_args.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/data/chat_records.h"
#include "uniattn/error.h"
#include "uniattn/eval/eval.h"
#include "uniattn/eval/response_loss.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

namespace {

using Clock = std::chrono::steady_clock;

nlohmann::json to_json(const uniattn::McTaskResult& r, bool items) {
  nlohmann::json j = {{"task", r.task},         {"n", r.n},
                      {"acc", r.acc},           {"acc_stderr", r.acc_stderr},
                      {"acc_norm", r.acc_norm}, {"acc_norm_stderr", r.acc_norm_stderr}};
  if (items) {
    auto& a = j["items"] = nlohmann::json::array();
    for (const auto& it : r.items)
      a.push_back({{"id", it.id},
                   {"answer", it.answer},
                   {"pred", it.pred},
                   {"pred_norm", it.pred_norm},
                   {"logprob", it.logprob},
                   {"tokens", it.tokens},
                   {"chars", it.chars}});
  }
  return j;
}

void print_row(const uniattn::McTaskResult& r) {
  std::printf("%-32s %6lld  %6.4f ± %6.4f  %6.4f ± %6.4f\n", r.task.c_str(),
              static_cast<long long>(r.n), r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr);
}

// Held-out records (alpaca/tulu) or conversations (chat), the first `limit` (0: all), tokenised
// without a length limit; also the number of records read.
std::pair<std::vector<uniattn::TokenizedExample>, int64_t> heldout_examples(
    const std::string& file, const std::string& tmpl, int64_t limit, const uniattn::Tokenizer& tok,
    const std::filesystem::path& model_path) {
  const int64_t whole = std::numeric_limits<int64_t>::max();
  if (tmpl == "chat") {
    auto conv = uniattn::load_conversations(file);
    if (limit > 0 && static_cast<int64_t>(conv.size()) > limit) conv.resize(limit);
    return {uniattn::tokenize_conversations(conv, uniattn::chat_template_for_data(model_path), tok,
                                            whole, nullptr, file),
            static_cast<int64_t>(conv.size())};
  }
  const auto pt = uniattn::PromptTemplate::by_name(tmpl);
  auto records = uniattn::load_records(file, &pt);
  if (limit > 0 && static_cast<int64_t>(records.size()) > limit) records.resize(limit);
  return {uniattn::tokenize_records(records, pt, uniattn::text_encoder(tok), whole),
          static_cast<int64_t>(records.size())};
}

int run(int argc, char** argv) {
  CLI::App app{"Evaluate a (UniAttn) model: multiple-choice accuracy and held-out loss"};
  std::string model_path, variant = "none", superblocks, tasks, data_dir = "data/eval", heldout,
                          tmpl = "alpaca", device = "cpu", dtype = "f32", out;
  int64_t limit = 0, batch = 16, max_len = 0, batch_tokens = 8192;
  bool items = false, quiet = false;
  app.add_option("--model", model_path, "HF model directory or .gguf file")->required();
  app.add_option("--uniattn", variant, "Unify the model: none|softmax|uniattn|cla")
      ->check(CLI::IsMember({"none", "softmax", "uniattn", "cla"}));
  app.add_option("--superblocks", superblocks,
                 "SuperBlocks as SIZE,BEGIN,END or explicit groups like 16-19;20-23");
  app.add_option("--tasks", tasks,
                 "Comma-separated: arc_easy,arc_challenge,mmlu_medical,medmcqa,medqa, "
                 "mmlu_<subject>, *_5shot variants; name:split picks a split");
  app.add_option("--data-dir", data_dir, "Directory written by scripts/prepare_eval_data.py");
  app.add_option("--heldout", heldout, "Instruction JSON/JSONL file for response loss");
  app.add_option("--template", tmpl,
                 "Prompt template of --heldout: alpaca|tulu, or chat ('messages' records "
                 "rendered with the model's chat template, loss on the assistant turns)")
      ->check(CLI::IsMember({"alpaca", "tulu", "chat"}));
  app.add_option("--limit", limit, "First N questions (or held-out records) per task; 0 = all")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch", batch, "Sequences per forward pass (--tasks)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch-tokens", batch_tokens, "Padded tokens per forward pass (--heldout)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-len", max_len,
                 "Tokens per sequence. --tasks: contexts lose their oldest tokens past it (0 = "
                 "model maximum); --heldout: examples are cut to their first max-len tokens "
                 "(0 = 1024, the calibration and training default)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--device", device, "cpu | cuda | cuda:N")->check(uniattn::cli::device_check);
  app.add_option("--dtype", dtype, "f32|bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--out", out, "Results JSON file")->required();
  app.add_flag("--items", items, "Store per-question log-likelihoods in the JSON");
  app.add_flag("--quiet", quiet, "No progress on stderr");
  CLI11_PARSE(app, argc, argv);
  if (tasks.empty() && heldout.empty())
    uniattn::fail("nothing to do: give --tasks and/or --heldout");

  const std::filesystem::path path(model_path);
  // Resolve tasks before loading the model so a missing file fails fast.
  const auto files = uniattn::resolve_mc_tasks(uniattn::cli::split_list(tasks), data_dir);

  auto lo = uniattn::cli::load_options(dtype, device, variant, superblocks, path);
  const auto t0 = Clock::now();
  auto model = uniattn::load_model(path, lo);
  auto tok = uniattn::cli::load_tokenizer_noted(path, "eval");

  nlohmann::json res = {{"model", model_path}, {"uniattn", variant},  {"superblocks", superblocks},
                        {"dtype", dtype},      {"device", device},    {"limit", limit},
                        {"batch", batch},      {"data_dir", data_dir}};
  res["format"] = "cloze: context 'Question: {q}\\nAnswer:', continuation ' {choice}'";
  std::vector<uniattn::McTaskResult> results;
  std::map<std::string, std::vector<std::size_t>> groups;
  for (const auto& f : files) {
    const auto qs = uniattn::load_mc_jsonl(f.file, limit);
    uniattn::McOptions o;
    o.score.batch = batch;
    o.score.max_len = max_len;
    const auto ts = Clock::now();
    if (!quiet)
      o.score.progress = [&](int64_t done, int64_t total) {
        std::fprintf(stderr, "\r%s: %lld/%lld sequences", f.task.c_str(),
                     static_cast<long long>(done), static_cast<long long>(total));
        if (done == total) std::fputc('\n', stderr);
      };
    results.push_back(uniattn::evaluate_mc(model, *tok, qs, f.task, o));
    auto j = to_json(results.back(), items);
    j["file"] = f.file.string();
    j["seconds"] = std::chrono::duration<double>(Clock::now() - ts).count();
    res["tasks"].push_back(j);
    if (!f.group.empty()) groups[f.group].push_back(results.size() - 1);
  }
  std::vector<uniattn::McTaskResult> pooled;
  for (const auto& [g, idx] : groups) {
    std::vector<const uniattn::McTaskResult*> parts;
    for (auto i : idx) parts.push_back(&results[i]);
    pooled.push_back(uniattn::pool_mc(g, parts));
    res["groups"].push_back(to_json(pooled.back(), false));
  }

  if (!heldout.empty()) {
    // Tokenised whole: response_loss applies the one truncation rule and counts what it cuts.
    const auto [ex, nrecords] = heldout_examples(heldout, tmpl, limit, *tok, path);
    uniattn::ResponseLossOptions lo;
    lo.max_len = max_len > 0 ? max_len : uniattn::kDefaultResponseLossMaxLen;
    lo.batch_tokens = batch_tokens;
    if (!quiet)
      lo.progress = [](int64_t done, int64_t total) {
        std::fprintf(stderr, "\rheld-out: %lld/%lld examples", static_cast<long long>(done),
                     static_cast<long long>(total));
        if (done == total) std::fputc('\n', stderr);
      };
    const auto lr = uniattn::response_loss(model, ex, lo);
    UNIATTN_CHECK(lr.target_tokens > 0, heldout, ": no record has a response token within the ",
                  lo.max_len, " tokens of --max-len");
    res["heldout"] = {{"file", heldout},
                      {"template", tmpl},
                      {"max_len", lo.max_len},
                      {"records", nrecords},
                      {"examples", lr.examples},
                      {"truncated", lr.truncated},
                      {"cut_target_tokens", lr.cut_target_tokens},
                      {"skipped", lr.skipped},
                      {"target_tokens", lr.target_tokens},
                      {"loss", lr.loss},
                      {"perplexity", lr.perplexity}};
  }
  res["seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
  uniattn::write_text_atomic(out, res.dump(1) + "\n");

  if (!results.empty()) {
    std::printf("%-32s %6s  %-15s  %-15s\n", "task", "n", "acc ± stderr", "acc_norm ± stderr");
    for (const auto& r : results) print_row(r);
    for (const auto& r : pooled) print_row(r);
  }
  if (res.contains("heldout"))
    std::printf("held-out %s: %lld target tokens, loss %.4f, perplexity %.3f\n", heldout.c_str(),
                static_cast<long long>(res["heldout"]["target_tokens"].get<int64_t>()),
                res["heldout"]["loss"].get<double>(), res["heldout"]["perplexity"].get<double>());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return uniattn::cli::guarded_main("uniattn-eval", run, argc, argv);
}
