// uniattn-calib: closed-form W_c initialisation of a UniAttn model from a base checkpoint.
// A thin shell over uniattn::calibrate (include/uniattn/calibrate.h); see docs/calibration.md.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <unistd.h>

#include "uniattn/calib/calibrate.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Closed-form W_c initialisation for UniAttn (one pass over the calibration set)"};
  std::string model, data, tmpl = "alpaca", blocks = "4,15,30", out, mode = "tokens",
                           ridge = "auto";
  std::string device = "cpu", dtype = "f32", save_dtype = "bf16", report_path;
  int64_t samples = 0, heldout = 0, max_len = 1024, batch_tokens = 8192;
  double budget_gb = 4.0;
  bool restart = false;
  app.add_option("--model", model, "base checkpoint: HF directory or .gguf")->required();
  app.add_option("--data", data, "calibration records (.json array or .jsonl)")->required();
  app.add_option("--template", tmpl, "prompt template: alpaca | tulu")->capture_default_str();
  app.add_option("--superblocks", blocks, "SIZE,BEGIN,END or explicit groups")
      ->capture_default_str();
  app.add_option("--out", out, "output checkpoint directory")->required();
  app.add_option("--mode", mode, "tokens | reference")->capture_default_str();
  app.add_option("--ridge", ridge, "relative ridge, or auto (tokens mode)")->capture_default_str();
  app.add_option("--samples", samples, "calibration records (0: all but the held-out ones)");
  app.add_option("--heldout", heldout, "held-out records after the calibration ones");
  app.add_option("--max-len", max_len, "tokens per example (and reference padding length)")
      ->capture_default_str();
  app.add_option("--device", device, "cpu | cuda")->capture_default_str();
  app.add_option("--dtype", dtype, "compute dtype: f32 | bf16")->capture_default_str();
  app.add_option("--save-dtype", save_dtype, "stored dtype: bf16 | f32")->capture_default_str();
  app.add_option("--batch-tokens", batch_tokens, "padded tokens per batch")->capture_default_str();
  app.add_option("--memory-budget-gb", budget_gb, "activations kept in memory before spilling")
      ->capture_default_str();
  app.add_option("--report", report_path, "JSON report (default OUT/calib_report.json)");
  app.add_flag("--restart", restart, "discard the progress of an earlier run in OUT");
  CLI11_PARSE(app, argc, argv);

  try {
    const auto t_all = Clock::now();
    using namespace uniattn;
    auto parse_dt = [](const std::string& s) {
      if (s == "f32") return at::kFloat;
      if (s == "bf16") return at::kBFloat16;
      fail("unknown dtype '", s, "' (expected f32 or bf16)");
    };
    CalibOptions o;
    o.mode = parse_calib_mode(mode);
    if (ridge != "auto") {
      try {
        o.ridge = std::stod(ridge);
      } catch (const std::exception&) {
        fail("--ridge: expected a number or auto, got '", ridge, "'");
      }
      UNIATTN_CHECK(*o.ridge >= 0, "--ridge must be >= 0");
    }
    UNIATTN_CHECK(max_len >= 2 && batch_tokens >= max_len, "--batch-tokens (", batch_tokens,
                  ") must be >= --max-len (", max_len, ") >= 2");
    const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
    UNIATTN_CHECK(device == "cpu" || device == "cuda", "--device: expected cpu or cuda");

    // Data.
    const auto t_data = Clock::now();
    auto tok = load_tokenizer(model);
    const auto pt = PromptTemplate::by_name(tmpl);
    auto records = load_records(data, &pt);
    UNIATTN_CHECK(heldout >= 0 && samples >= 0, "--samples and --heldout must be >= 0");
    UNIATTN_CHECK(static_cast<int64_t>(records.size()) > heldout, data, " holds ", records.size(),
                  " records; --heldout ", heldout, " leaves none to calibrate on");
    const int64_t n_cal = samples > 0 ? std::min<int64_t>(samples, records.size() - heldout)
                                      : static_cast<int64_t>(records.size()) - heldout;
    std::vector<Record> rc(records.begin(), records.begin() + n_cal);
    std::vector<Record> rh(records.begin() + n_cal, records.begin() + n_cal + heldout);
    const auto enc = text_encoder(*tok);
    TokenizeStats sc, sh;
    auto cal = tokenize_records(rc, pt, enc, max_len, &sc);
    auto held = tokenize_records(rh, pt, enc, max_len, &sh);
    o.pad_id = tok->pad_id().value_or(*enc.eos);
    o.pad_to = max_len;
    o.batch_tokens = batch_tokens;
    o.memory_budget_bytes = static_cast<std::size_t>(budget_gb * (1ull << 30));
    o.work_dir = std::filesystem::path(out) / ".calib-work";
    if (restart) uniattn::remove_tree(o.work_dir);
    o.fingerprint = nlohmann::json{
        {"model", std::filesystem::absolute(model).string()},
        {"dtype", dtype},
        {"device", device},
        {"template",
         tmpl}}.dump();
    const double data_s = since(t_data);

    // Models: the unified one shares the base's weights (only W_c is its own).
    const auto t_load = Clock::now();
    const auto cfg = load_config(model);
    LoadOptions lo{.dtype = parse_dt(dtype), .device = dev, .uniattn = std::nullopt};
    auto base = load_model(model, lo);
    lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, blocks, cfg.num_layers);
    auto unified = load_model(model, lo);
    share_weights(base, unified);
    const double load_s = since(t_load);
    std::fprintf(stderr,
                 "[calib] %s: %lld calibration examples (%lld truncated), %lld held out; %s; "
                 "mode %s\n",
                 model.c_str(), static_cast<long long>(cal.size()),
                 static_cast<long long>(sc.truncated), static_cast<long long>(held.size()),
                 lo.uniattn->describe().c_str(), calib_mode_name(o.mode));

    ProgressBar bar;
    o.progress = [&bar](const CalibProgress& p) { bar(p); };
    auto res = calibrate(base, unified, cal, held, o);

    const auto t_save = Clock::now();
    save_model(unified, out, parse_dt(save_dtype));
    tok->save(out);
    const double save_s = since(t_save);

    // Report.
    nlohmann::json rows = nlohmann::json::array();
    std::printf("%6s %6s %9s %10s %10s %10s %10s\n", "layer", "leader", "ridge", "cal|D|/|Y|",
                "cal res", "ho|D|/|Y|", "ho res");
    for (const auto& f : res.followers) {
      std::printf("%6lld %6lld %9.1e %10.4f %10.4f %10.4f %10.4f\n",
                  static_cast<long long>(f.layer), static_cast<long long>(f.leader), f.ridge,
                  f.calib_err, f.calib_rel_residual, f.heldout_err, f.heldout_rel_residual);
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
           {"heldout_rel_residual_before", held.empty() ? nlohmann::json() : nlohmann::json(1.0)},
           {"heldout_rel_residual_after", num(f.heldout_rel_residual)},
           {"solve_seconds", f.solve_seconds}});
    }
    std::printf(
        "held-out response loss (%lld tokens): base %.4f | unified, no W_c %.4f | "
        "unified + W_c %.4f\n",
        static_cast<long long>(res.heldout_target_tokens), res.loss_base, res.loss_unified_no_wc,
        res.loss_unified_wc);
    std::printf("wall: data %.1fs, load %.1fs, calibrate %.1fs (resumed %lld layers), save %.1fs\n",
                data_s, load_s, res.seconds, static_cast<long long>(res.resumed_layers), save_s);
    nlohmann::json rep = {{"model", model},
                          {"data", data},
                          {"template", tmpl},
                          {"superblocks", lo.uniattn->describe()},
                          {"mode", calib_mode_name(o.mode)},
                          {"ridge", ridge},
                          {"max_len", max_len},
                          {"device", device},
                          {"dtype", dtype},
                          {"calib_examples", cal.size()},
                          {"calib_truncated", sc.truncated},
                          {"calib_tokens", res.calib_tokens},
                          {"heldout_examples", held.size()},
                          {"heldout_target_tokens", res.heldout_target_tokens},
                          {"loss_base", num(res.loss_base)},
                          {"loss_unified_no_wc", num(res.loss_unified_no_wc)},
                          {"loss_unified_wc", num(res.loss_unified_wc)},
                          {"resumed_layers", res.resumed_layers},
                          {"seconds",
                           {{"data", data_s},
                            {"load", load_s},
                            {"calibrate", res.seconds},
                            {"save", save_s},
                            {"total", since(t_all)}}},
                          {"followers", rows}};
    write_text_atomic(report_path.empty() ? std::filesystem::path(out) / "calib_report.json"
                                          : std::filesystem::path(report_path),
                      rep.dump(2) + "\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uniattn-calib: error: %s\n", e.what());
    return 1;
  }
}
