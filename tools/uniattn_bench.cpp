// uniattn-bench: end-to-end inference speed (TTFT, CUDA-graph decode step time, roofline
// fractions, KV bytes and batch capacity) of LLaMA-3.1-8B-shaped and SmolLM2-135M models for
// each UniAttn variant. Measures the device's ceilings (copy bandwidth, GEMM rate) first and
// computes the rooflines from them. Prints a table as it goes and rewrites the JSON after every
// case.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "bench.h"
#include "cli_util.h"
#include "model_args.h"
#include "uniattn/error.h"

namespace {

// The argument as a POSIX shell would need it to read it back as one word.
std::string shell_word(const std::string& a) {
  if (!a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_.,:/=+@%") == std::string::npos)
    return a;
  std::string q = "'";
  for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

int run(int argc, char** argv) {
  CLI::App app{"Benchmark prefill (TTFT) and decode speed of UniAttn variants"};
  std::string model = "all", variants = "none,uniattn,cla", out = "bench/results/bench.json";
  std::string device = "cuda", cases, superblocks;
  int prefill_iters = 5, prefill_warmup = 1;
  bool quick = false, unfused_baseline = false;
  int iters = 20, warmup = 3, repeats = 5;
  std::vector<double> ceilings;
  std::string run_id;
  app.add_option("--model", model, "smollm2 | llama8b | all")
      ->check(CLI::IsMember({"smollm2", "llama8b", "all"}));
  app.add_option("--variants", variants, "comma list of none, softmax, uniattn, cla");
  app.add_option("--out", out, "JSON results file (rewritten after every case)");
  app.add_option("--device", device, "cuda | cuda:N | cpu")->check(uniattn::cli::device_check);
  app.add_option("--iters", iters, "timed decode steps per case")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed decode steps per case")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--repeats", repeats, "timed windows of --iters decode steps (mean and spread)")
      ->check(CLI::PositiveNumber);
  app.add_option("--ceilings", ceilings,
                 "COPY_GB/s,GEMM_TFLOP/s: use these ceilings instead of measuring them")
      ->delimiter(',')
      ->expected(2);
  app.add_option("--run-id", run_id,
                 "id shared by the result files of one run (default: $UNIATTN_RUN_ID)");
  app.add_flag("--quick", quick, "one prefill and two small decode shapes per model");
  app.add_flag("--unfused-baseline", unfused_baseline,
               "also time `none` with the fused RMSNorm/RoPE/activation kernels off");
  app.add_option("--cases", cases,
                 "comma list replacing each model's shapes: prefill:B:S, decode:B:S, "
                 "paged_decode:B:S or paged_prefill:B:S");
  app.add_option("--superblocks", superblocks,
                 "SuperBlocks of the unified variants, e.g. 24-27;28-31 (default: groups of 4 "
                 "over the second half)");
  app.add_option("--prefill-iters", prefill_iters, "timed prefills per case")
      ->check(CLI::PositiveNumber);
  app.add_option("--prefill-warmup", prefill_warmup, "untimed prefills per case")
      ->check(CLI::NonNegativeNumber);
  int64_t prefill_chunk = 2048;
  app.add_option("--prefill-chunk", prefill_chunk,
                 "paged_prefill cases: tokens per row and forward call (uniattn-serve's "
                 "--prefill-chunk)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  uniattn::BenchOptions opt;
  for (const auto& name : model == "all" ? std::vector<std::string>{"smollm2", "llama8b"}
                                         : std::vector<std::string>{model})
    opt.models.push_back(uniattn::bench_model(name, quick));
  if (!cases.empty())
    for (auto& m : opt.models) {
      m.cases.clear();
      for (const auto& c : uniattn::cli::split_list(cases))
        m.cases.push_back(uniattn::parse_bench_case(c));
    }
  opt.prefill_iters = prefill_iters;
  opt.prefill_warmup = prefill_warmup;
  opt.prefill_chunk = prefill_chunk;
  opt.variants.clear();
  for (const auto& v : uniattn::cli::split_list(variants))
    opt.variants.push_back(uniattn::parse_variant(v));
  opt.device = uniattn::cli::parse_device(device);
  opt.dtype = opt.device.is_cuda() ? at::kBFloat16 : at::kFloat;
  opt.decode_iters = iters;
  opt.decode_warmup = warmup;
  opt.decode_repeats = repeats;
  opt.run_id = run_id;
  if (!ceilings.empty()) opt.ceilings = uniattn::given_ceilings(ceilings[0], ceilings[1]);
  opt.out = out;
  opt.unfused_baseline = unfused_baseline;
  opt.superblocks = superblocks;
  for (int i = 0; i < argc; ++i) opt.command += (i ? " " : "") + shell_word(argv[i]);
  std::printf("%-36s %-8s %-20s %14s %s\n", "case", "variant", "metric", "value", "unit");
  opt.on_row = [](const uniattn::BenchRow& r) {
    char spread[64] = "";
    if (r.stats.n > 0)
      std::snprintf(spread, sizeof spread, " +- %.4f (n=%d)", r.stats.stdev, r.stats.n);
    std::printf("%-36s %-8s %-20s %14.4f %s%s%s%s\n", r.case_name.c_str(), r.variant.c_str(),
                r.metric.c_str(), r.value, r.unit.c_str(), spread, r.note.empty() ? "" : "  # ",
                r.note.c_str());
    std::fflush(stdout);
  };
  auto result = uniattn::run_bench(opt);
  std::printf(
      "gpu: %s, commit: %s, ceilings (%s): copy %.1f GB/s, GEMM %.1f TFLOP/s; %zu rows "
      "written to %s\n",
      result.gpu.c_str(), result.commit.c_str(), result.ceilings.method.c_str(),
      result.ceilings.copy_bytes_per_s * 1e-9, result.ceilings.gemm_flops_per_s * 1e-12,
      result.rows.size(), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return uniattn::cli::guarded_main("uniattn-bench", run, argc, argv);
}
