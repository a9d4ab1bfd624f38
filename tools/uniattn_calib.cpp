// uniattn-calib: closed-form W_c initialisation of a UniAttn model from a base checkpoint.
// A thin shell over uniattn::calibrate (include/uniattn/calib/calibrate.h); see
// docs/calibration.md.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "model_args.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/error.h"
#include "uniattn/error_message.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A one-line progress bar on stderr (one line per layer when stderr is not a terminal).
struct ProgressBar {
  Clock::time_point start = Clock::now(), last;
  bool tty = ::isatty(2) != 0;
  void operator()(const uniattn::CalibProgress& p) {
    const double t = since(start);
    if (p.phase == "layer-done") {
      std::fprintf(stderr, "%s[calib] layer %lld/%lld done  %.1fs\n", tty ? "\r\033[K" : "",
                   static_cast<long long>(p.layer + 1), static_cast<long long>(p.num_layers), t);
      return;
    }
    if (!tty || std::chrono::duration<double>(Clock::now() - last).count() < 0.2) return;
    last = Clock::now();
    const int width = 30;
    const double frac =
        (p.layer + static_cast<double>(p.batch) / std::max<int64_t>(1, p.num_batches)) /
        std::max<int64_t>(1, p.num_layers);
    std::string bar(static_cast<size_t>(frac * width), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r\033[K[calib] [%s] layer %lld/%lld %-7s batch %lld/%lld  %.0fs",
                 bar.c_str(), static_cast<long long>(p.layer + 1),
                 static_cast<long long>(p.num_layers), p.phase.c_str(),
                 static_cast<long long>(p.batch + 1), static_cast<long long>(p.num_batches), t);
  }
};

nlohmann::json num(double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); }

struct Args {
  std::string model, data, tmpl = "alpaca", blocks = "4,15,30", out, mode = "tokens",
                           ridge = "auto";
  std::string device = "cpu", dtype = "f32", save_dtype = "bf16", report_path;
  int64_t samples = 0, heldout = 0, max_len = 1024, batch_tokens = 8192;
  double budget_gb = 4.0;
  bool restart = false;
};

void add_options(CLI::App& app, Args& a) {
  app.add_option("--model", a.model, "base checkpoint: HF directory or .gguf")->required();
  app.add_option("--data", a.data, "calibration records (.json array or .jsonl)")->required();
  app.add_option("--template", a.tmpl, "prompt template: alpaca | tulu")->capture_default_str();
  app.add_option("--superblocks", a.blocks, "SIZE,BEGIN,END or explicit groups")
      ->capture_default_str();
  app.add_option("--out", a.out, "output checkpoint directory")->required();
  app.add_option("--mode", a.mode, "tokens | reference")->capture_default_str();
  app.add_option("--ridge", a.ridge, "relative ridge, or auto (tokens mode)")
      ->capture_default_str();
  app.add_option("--samples", a.samples, "calibration records (0: all but the held-out ones)");
  app.add_option("--heldout", a.heldout, "held-out records after the calibration ones");
  app.add_option("--max-len", a.max_len, "tokens per example (and reference padding length)")
      ->capture_default_str();
  app.add_option("--device", a.device, "cpu | cuda | cuda:N")
      ->capture_default_str()
      ->check(uniattn::cli::device_check);
  app.add_option("--dtype", a.dtype, "compute dtype: f32 | bf16")->capture_default_str();
  app.add_option("--save-dtype", a.save_dtype, "stored dtype: bf16 | f32")->capture_default_str();
  app.add_option("--batch-tokens", a.batch_tokens, "padded tokens per batch")
      ->capture_default_str();
  app.add_option("--memory-budget-gb", a.budget_gb, "activations kept in memory before spilling")
      ->capture_default_str();
  app.add_option("--report", a.report_path, "JSON report (default OUT/calib_report.json)");
  app.add_flag("--restart", a.restart, "discard the progress of an earlier run in OUT");
}

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "f32") return at::kFloat;
  if (s == "bf16") return at::kBFloat16;
  uniattn::fail("unknown dtype '", s, "' (expected f32 or bf16)");
}

// What the flags alone decide (mode, ridge), after checking the flags that need no files.
uniattn::CalibOptions options_from_flags(const Args& a) {
  uniattn::CalibOptions o;
  o.mode = uniattn::parse_calib_mode(a.mode);
  if (a.ridge != "auto") {
    try {
      o.ridge = std::stod(a.ridge);
    } catch (const std::exception&) {
      uniattn::fail("--ridge: expected a number or auto, got '", a.ridge, "'");
    }
    UNIATTN_CHECK(*o.ridge >= 0, "--ridge must be >= 0");
  }
  UNIATTN_CHECK(a.max_len >= 2 && a.batch_tokens >= a.max_len, "--batch-tokens (", a.batch_tokens,
                ") must be >= --max-len (", a.max_len, ") >= 2");
  return o;
}

// The first --samples records (all but the held-out ones by default) calibrate; the --heldout
// records after them are only measured.
struct CalibSets {
  std::unique_ptr<uniattn::Tokenizer> tok;
  std::vector<uniattn::TokenizedExample> cal, held;
  uniattn::TokenizeStats cal_stats;
  int32_t pad_id = 0;
};

CalibSets load_calib_sets(const Args& a) {
  using namespace uniattn;
  CalibSets s;
  s.tok = cli::load_tokenizer_noted(a.model, "calib");
  const auto pt = PromptTemplate::by_name(a.tmpl);
  auto records = load_records(a.data, &pt);
  UNIATTN_CHECK(a.heldout >= 0 && a.samples >= 0, "--samples and --heldout must be >= 0");
  UNIATTN_CHECK(static_cast<int64_t>(records.size()) > a.heldout, a.data, " holds ", records.size(),
                " records; --heldout ", a.heldout, " leaves none to calibrate on");
  const int64_t n_cal = a.samples > 0 ? std::min<int64_t>(a.samples, records.size() - a.heldout)
                                      : static_cast<int64_t>(records.size()) - a.heldout;
  std::vector<Record> rc(records.begin(), records.begin() + n_cal);
  std::vector<Record> rh(records.begin() + n_cal, records.begin() + n_cal + a.heldout);
  const auto enc = text_encoder(*s.tok);
  TokenizeStats held_stats;
  s.cal = tokenize_records(rc, pt, enc, a.max_len, &s.cal_stats);
  s.held = tokenize_records(rh, pt, enc, a.max_len, &held_stats);
  s.pad_id = s.tok->pad_id().value_or(*enc.eos);
  return s;
}

// Batching, memory and resumption: progress lives in OUT/.calib-work and is resumed only by a
// run with the same model, dtype, device and template (the fingerprint).
void set_run_options(const Args& a, int32_t pad_id, uniattn::CalibOptions& o) {
  o.pad_id = pad_id;
  o.pad_to = a.max_len;
  o.batch_tokens = a.batch_tokens;
  o.memory_budget_bytes = static_cast<std::size_t>(a.budget_gb * (1ull << 30));
  o.work_dir = std::filesystem::path(a.out) / ".calib-work";
  if (a.restart) uniattn::remove_tree(o.work_dir);
  o.fingerprint = nlohmann::json{
      {"model", std::filesystem::absolute(a.model).string()},
      {"dtype", a.dtype},
      {"device", a.device},
      {"template",
       a.tmpl}}.dump();
}

struct Models {
  uniattn::CausalLM base, unified;
  std::string superblocks;  // the unified model's SuperBlocks, described
};

// The unified model shares the base's weights (only W_c is its own).
Models load_models(const Args& a) {
  using namespace uniattn;
  const at::Device dev = cli::parse_device(a.device);
  const auto cfg = load_config(a.model);
  LoadOptions lo{.dtype = parse_dtype(a.dtype), .device = dev, .uniattn = std::nullopt};
  auto base = load_model(a.model, lo);
  lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, a.blocks, cfg.num_layers);
  auto unified = load_model(a.model, lo);
  share_weights(base, unified);
  return Models{std::move(base), std::move(unified), lo.uniattn->describe()};
}

struct Seconds {
  double data = 0, load = 0, save = 0;
};

// The per-follower table and the losses on stdout.
void print_results(const uniattn::CalibResult& res, const Seconds& t) {
  std::printf("%6s %6s %9s %10s %10s %10s %10s\n", "layer", "leader", "ridge", "cal|D|/|Y|",
              "cal res", "ho|D|/|Y|", "ho res");
  for (const auto& f : res.followers)
    std::printf("%6lld %6lld %9.1e %10.4f %10.4f %10.4f %10.4f\n", static_cast<long long>(f.layer),
                static_cast<long long>(f.leader), f.ridge, f.calib_err, f.calib_rel_residual,
                f.heldout_err, f.heldout_rel_residual);
  std::printf(
      "held-out response loss (%lld tokens): base %.4f | unified, no W_c %.4f | "
      "unified + W_c %.4f\n",
      static_cast<long long>(res.heldout_target_tokens), res.loss_base, res.loss_unified_no_wc,
      res.loss_unified_wc);
  std::printf("wall: data %.1fs, load %.1fs, calibrate %.1fs (resumed %lld layers), save %.1fs\n",
              t.data, t.load, res.seconds, static_cast<long long>(res.resumed_layers), t.save);
}

// One JSON row per follower; the "before" residuals are 1 by definition (W_c = 0).
nlohmann::json follower_rows(const uniattn::CalibResult& res, bool have_heldout) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& f : res.followers)
    rows.push_back(
        {{"layer", f.layer},
         {"leader", f.leader},
         {"ridge", f.ridge},
         {"lambda", f.lambda},
         {"calib_tokens", f.calib_tokens},
         {"heldout_tokens", f.heldout_tokens},
         {"calib_err", num(f.calib_err)},
         {"calib_rel_residual_before", 1.0},
         {"calib_rel_residual_after", num(f.calib_rel_residual)},
         {"heldout_err", num(f.heldout_err)},
         {"heldout_rel_residual_before", have_heldout ? nlohmann::json(1.0) : nlohmann::json()},
         {"heldout_rel_residual_after", num(f.heldout_rel_residual)},
         {"solve_seconds", f.solve_seconds}});
  return rows;
}

void write_report(const Args& a, const CalibSets& sets, const std::string& superblocks,
                  const uniattn::CalibOptions& o, const uniattn::CalibResult& res, const Seconds& t,
                  double total_s) {
  nlohmann::json rep = {{"model", a.model},
                        {"data", a.data},
                        {"template", a.tmpl},
                        {"superblocks", superblocks},
                        {"mode", uniattn::calib_mode_name(o.mode)},
                        {"ridge", a.ridge},
                        {"max_len", a.max_len},
                        {"device", a.device},
                        {"dtype", a.dtype},
                        {"calib_examples", sets.cal.size()},
                        {"calib_truncated", sets.cal_stats.truncated},
                        {"calib_tokens", res.calib_tokens},
                        {"heldout_examples", sets.held.size()},
                        {"heldout_target_tokens", res.heldout_target_tokens},
                        {"loss_base", num(res.loss_base)},
                        {"loss_unified_no_wc", num(res.loss_unified_no_wc)},
                        {"loss_unified_wc", num(res.loss_unified_wc)},
                        {"resumed_layers", res.resumed_layers},
                        {"seconds",
                         {{"data", t.data},
                          {"load", t.load},
                          {"calibrate", res.seconds},
                          {"save", t.save},
                          {"total", total_s}}},
                        {"followers", follower_rows(res, !sets.held.empty())}};
  uniattn::write_text_atomic(a.report_path.empty()
                                 ? std::filesystem::path(a.out) / "calib_report.json"
                                 : std::filesystem::path(a.report_path),
                             rep.dump(2) + "\n");
}

int run(const Args& a) {
  using namespace uniattn;
  const auto t_all = Clock::now();
  Seconds t;
  CalibOptions o = options_from_flags(a);
  const auto t_data = Clock::now();
  CalibSets sets = load_calib_sets(a);
  set_run_options(a, sets.pad_id, o);
  t.data = since(t_data);

  const auto t_load = Clock::now();
  Models m = load_models(a);
  t.load = since(t_load);
  std::fprintf(stderr,
               "[calib] %s: %lld calibration examples (%lld truncated), %lld held out; %s; "
               "mode %s\n",
               a.model.c_str(), static_cast<long long>(sets.cal.size()),
               static_cast<long long>(sets.cal_stats.truncated),
               static_cast<long long>(sets.held.size()), m.superblocks.c_str(),
               calib_mode_name(o.mode));

  ProgressBar bar;
  o.progress = [&bar](const CalibProgress& p) { bar(p); };
  const auto res = calibrate(m.base, m.unified, sets.cal, sets.held, o);

  const auto t_save = Clock::now();
  SaveOptions save;
  save.dtype = parse_dtype(a.save_dtype);
  save.source = a.model;  // tokenizer, chat template and generation_config.json travel along
  save_model(m.unified, a.out, save);
  t.save = since(t_save);

  print_results(res, t);
  write_report(a, sets, m.superblocks, o, res, t, since(t_all));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Closed-form W_c initialisation for UniAttn (one pass over the calibration set)"};
  Args args;
  add_options(app, args);
  CLI11_PARSE(app, argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uniattn-calib: error: %s\n", uniattn::error_message(e).c_str());
    return 1;
  }
}
