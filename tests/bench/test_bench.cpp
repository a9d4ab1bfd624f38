// uniattn-bench on the CPU with a tiny model: every case yields its metrics, the JSON file is
// complete, KV bytes, weight bytes and GEMM parameter counts match counts derived from the spec's
// layer roles, and the derived metrics (tokens/s, roofline fractions from the given or measured
// ceilings) follow from the measured times by the roofline formulas written out here.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "bench.h"
#include "model/model_test_util.h"
#include "test_util.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

ModelConfig tiny_config() {
  auto c = test::tiny_llama_config(8);
  c.tie_word_embeddings = true;  // decode then reads every parameter
  return c;
}

// Follower by the reference (size, begin, end) rule, written out independently of UniAttnSpec.
bool follower(int64_t layer, int64_t size, int64_t begin, int64_t end) {
  return layer >= begin && layer < end && (layer - begin) % size != 0;
}

struct Expected {
  int64_t kv_bytes_per_token = 0;
  int64_t matmul_params = 0;
  int64_t all_params = 0;  // tied embedding: what a decode step reads
};

Expected expected_for(const ModelConfig& c, const std::string& variant, int64_t elem) {
  Expected e;
  const int64_t d = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const bool f = variant != "none" && follower(l, 4, c.num_layers / 2, c.num_layers);
    int64_t stored = 2;  // K and V
    int64_t params = d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size;
    if (f && variant == "uniattn") {
      stored = 1;                         // V only
      params += -d * q - d * kv + d * d;  // no q/k projections, plus W_c
    } else if (f && variant == "cla") {
      stored = 0;            // leader's K and V
      params -= 2 * d * kv;  // no k/v projections
    }
    e.kv_bytes_per_token += stored * kv * elem;
    e.matmul_params += params;
  }
  // Two RMSNorm weights per layer, the final norm, one embedding table (tied: also the head).
  e.all_params = e.matmul_params + (2 * c.num_layers + 1) * d + c.vocab_size * d;
  return e;
}

// value[case][variant][metric] of a results file, after checking the row schema.
using Table = std::map<std::string, std::map<std::string, std::map<std::string, double>>>;
Table read_rows(const nlohmann::json& j) {
  Table v;
  for (const auto& r : j.at("rows")) {
    EXPECT_TRUE(r.at("value").is_number()) << r.dump();
    const std::string metric = r.at("metric");
    if (metric == "ttft_ms" || metric == "decode_step_ms") {
      // A repeated time: the mean as the value, with its spread.
      EXPECT_GE(r.at("n").get<int>(), 2) << r.dump();
      EXPECT_GE(r.at("stdev").get<double>(), 0) << r.dump();
      EXPECT_LE(r.at("min").get<double>(), r.at("value").get<double>()) << r.dump();
      EXPECT_GE(r.at("max").get<double>(), r.at("value").get<double>()) << r.dump();
    }
    v[r.at("case")][r.at("variant")][metric] = r.at("value").get<double>();
  }
  return v;
}

BenchModel tiny_model() {
  BenchModel m;
  m.name = "tiny";
  m.config = tiny_config();
  m.cases = {{BenchKind::Prefill, 1, 16},
             {BenchKind::Prefill, 2, 8},
             {BenchKind::Decode, 1, 12},
             {BenchKind::Decode, 3, 20},
             {BenchKind::PagedDecode, 3, 20},
             {BenchKind::PagedPrefill, 2, 17}};  // three chunks of 7, 7 and 3 tokens
  return m;
}

BenchOptions tiny_options(const BenchModel& m) {
  BenchOptions opt;
  opt.models = {m};
  opt.device = at::kCPU;
  opt.dtype = at::kFloat;
  opt.decode_warmup = 1;
  opt.decode_iters = 2;
  opt.decode_repeats = 2;
  opt.prefill_iters = 2;
  opt.prefill_chunk = 7;
  opt.commit = "test-commit";
  opt.command = "test command";
  opt.run_id = "run-1";
  return opt;
}

// Every case's roofline fraction against the formulas: decode (weights + KV of B*S tokens) /
// bandwidth, prefill 2 (GEMM params * B * S + vocab * d * B) / GEMM rate.
void check_rooflines(const ModelConfig& c, const std::vector<BenchCase>& cases, const Table& v,
                     double bytes_per_s, double flops_per_s) {
  for (const std::string var : {"none", "uniattn", "cla"}) {
    SCOPED_TRACE(var);
    const auto e = expected_for(c, var, 4);
    const auto& mem = v.at("tiny/memory").at(var);
    EXPECT_EQ(mem.at("kv_bytes_per_token"), e.kv_bytes_per_token);
    EXPECT_EQ(mem.at("weight_bytes"), e.all_params * 4);
    EXPECT_FALSE(mem.count("max_batch_at_32k"));  // no device memory size on the CPU
    for (const auto& bc : cases) {
      const auto name = bc.name("tiny");
      SCOPED_TRACE(name);
      ASSERT_TRUE(v.count(name) && v.at(name).count(var));
      const auto& row = v.at(name).at(var);
      EXPECT_FALSE(row.count("oom") || row.count("error"));
      if (bc.kind == BenchKind::Prefill || bc.kind == BenchKind::PagedPrefill) {
        const double t = row.at("ttft_ms");
        EXPECT_GT(t, 0);
        const double flops = 2.0 * (static_cast<double>(e.matmul_params) * bc.batch * bc.seq +
                                    static_cast<double>(c.vocab_size) * c.hidden_size * bc.batch);
        const double want = flops / flops_per_s * 1e3 / t;
        EXPECT_NEAR(row.at("roofline_fraction"), want, 1e-9 * want);
      } else {
        const double t = row.at("decode_step_ms");
        EXPECT_GT(t, 0);
        EXPECT_NEAR(row.at("tokens_per_s"), bc.batch * 1e3 / t, 1e-6 * bc.batch * 1e3 / t);
        const double bytes = static_cast<double>(e.all_params) * 4 +
                             static_cast<double>(e.kv_bytes_per_token) * bc.batch * bc.seq;
        const double want = bytes / bytes_per_s * 1e3 / t;
        EXPECT_NEAR(row.at("roofline_fraction"), want, 1e-9 * want);
      }
    }
  }
}

TEST(Bench, TinyCpuRunWritesEveryMetric) {
  const auto m = tiny_model();
  auto opt = tiny_options(m);
  // Given ceilings: the rooflines must use them, not constants of some GPU.
  opt.ceilings = given_ceilings(2.5, 0.04);  // 2.5 GB/s, 40 GFLOP/s
  const auto out = test::scratch_dir() / "sub" / "bench.json";
  opt.out = out;
  int printed = 0;
  opt.on_row = [&](const BenchRow&) { ++printed; };
  const auto result = run_bench(opt);

  std::ifstream in(out);
  ASSERT_TRUE(in) << out;
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("gpu"), "cpu");
  EXPECT_EQ(j.at("commit"), "test-commit");
  EXPECT_EQ(j.at("command"), "test command");
  EXPECT_EQ(j.at("run"), "run-1");
  EXPECT_EQ(j.at("dtype"), "float32");
  EXPECT_EQ(j.at("ceilings").at("method"), "given");
  EXPECT_DOUBLE_EQ(j.at("ceilings").at("copy_gb_per_s").get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(j.at("ceilings").at("gemm_tflop_per_s").get<double>(), 0.04);
  ASSERT_EQ(j.at("rows").size(), result.rows.size());
  EXPECT_EQ(printed, static_cast<int>(result.rows.size()));
  check_rooflines(m.config, m.cases, read_rows(j), 2.5e9, 0.04e12);
}

// Without given ceilings the run measures them first, records how, and judges every time
// against them.
TEST(Bench, MeasuredCeilingsGoIntoJsonAndRooflines) {
  auto m = tiny_model();
  m.cases = {{BenchKind::Prefill, 1, 16}, {BenchKind::Decode, 2, 20}};
  auto opt = tiny_options(m);
  CeilingSizes sizes;
  sizes.copy_bytes = int64_t{8} << 20;
  sizes.gemm_n = 128;
  sizes.warmup = 1;
  sizes.iters = 3;
  opt.ceiling_sizes = sizes;
  const auto j = run_bench(opt).to_json();
  const auto& c = j.at("ceilings");
  EXPECT_EQ(c.at("method"), "measured");
  EXPECT_EQ(c.at("copy_bytes"), sizes.copy_bytes);
  EXPECT_EQ(c.at("gemm_n"), 128);
  EXPECT_EQ(c.at("gemm_dtype"), "float32");
  EXPECT_EQ(c.at("iters"), 3);
  EXPECT_EQ(c.at("timer"), "steady_clock");
  const double bw = c.at("copy_gb_per_s").get<double>() * 1e9;
  const double rate = c.at("gemm_tflop_per_s").get<double>() * 1e12;
  EXPECT_GT(bw, 1e8);
  EXPECT_GT(rate, 1e7);
  check_rooflines(m.config, m.cases, read_rows(j), bw, rate);
}

TEST(Bench, CeilingsOnCpuArePlausible) {
  CeilingSizes sizes = CeilingSizes::for_device(at::kCPU);
  EXPECT_EQ(sizes.copy_bytes, int64_t{64} << 20);
  EXPECT_EQ(CeilingSizes::for_device(at::Device(at::kCUDA, 0)).gemm_n, 8192);
  sizes.iters = 4;
  const auto c = measure_ceilings(at::kCPU, at::kFloat, sizes);
  // Any machine that runs the suite copies between 0.1 GB/s and 10 TB/s and multiplies fp32
  // matrices between 10 MFLOP/s and 100 TFLOP/s.
  EXPECT_GT(c.copy_bytes_per_s, 1e8);
  EXPECT_LT(c.copy_bytes_per_s, 1e13);
  EXPECT_GT(c.gemm_flops_per_s, 1e7);
  EXPECT_LT(c.gemm_flops_per_s, 1e14);
  EXPECT_GE(c.copy_stdev, 0);
  EXPECT_GE(c.gemm_stdev, 0);
  const auto j = c.to_json();
  for (const char* key : {"method", "copy_gb_per_s", "copy_gb_per_s_stdev", "gemm_tflop_per_s",
                          "gemm_tflop_per_s_stdev", "copy_bytes", "gemm_n", "gemm_dtype", "warmup",
                          "iters", "timer", "description"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_NEAR(j.at("copy_gb_per_s").get<double>(), c.copy_bytes_per_s * 1e-9, 1e-9);

  sizes.gemm_n = 0;
  test::expect_error([&] { measure_ceilings(at::kCPU, at::kFloat, sizes); }, "gemm_n");
  test::expect_error([&] { given_ceilings(0, 800); }, "must be positive");
  test::expect_error([&] { given_ceilings(3000, std::nan("")); }, "must be positive");
#ifndef UNIATTN_WITH_CUDA
  test::expect_error(
      [&] { measure_ceilings(at::Device(at::kCUDA, 0), at::kFloat, CeilingSizes{}); },
      "without CUDA");
#endif
}

TEST(Bench, SummarizeMeanAndSampleSpread) {
  const auto s = summarize({2.0, 4.0, 9.0});
  EXPECT_EQ(s.n, 3);
  EXPECT_DOUBLE_EQ(s.mean, 5.0);
  // sum of squared deviations 9 + 1 + 16 = 26, over n - 1 = 2.
  EXPECT_DOUBLE_EQ(s.stdev, std::sqrt(13.0));
  EXPECT_EQ(s.min, 2.0);
  EXPECT_EQ(s.max, 9.0);
  EXPECT_EQ(summarize({7.0}).stdev, 0.0);
  EXPECT_EQ(dtype_name(at::kBFloat16), "bfloat16");
  test::expect_error([] { summarize({}); }, "no samples");
}

TEST(Bench, FootprintSeparatesEmbeddingAndHead) {
  auto c = tiny_config();
  c.tie_word_embeddings = false;
  CausalLM model(c, at::TensorOptions().dtype(at::kFloat));
  const auto fp = model_footprint(model);
  const int64_t table = c.vocab_size * c.hidden_size;
  EXPECT_EQ(fp.lm_head_params, table);
  EXPECT_EQ(fp.matmul_params, expected_for(c, "none", 4).matmul_params);
  int64_t all = 0;
  for (const auto& p : model->parameters()) all += p.numel();
  EXPECT_EQ(fp.param_bytes, all * 4);
  EXPECT_EQ(fp.decode_read_bytes, (all - table) * 4);  // the untied input table is not read
}

TEST(Bench, RooflineAndCapacityArithmetic) {
  // LLaMA-3.1-8B: 128 KiB of KV per token; 80 GiB card, 16 GB of weights, 4 GiB workspace.
  const int64_t gib = int64_t{1} << 30, kv = 32 * 2 * 8 * 128 * 2;
  EXPECT_EQ(kv, 131072);
  const int64_t total = 80 * gib, weights = 16'060'000'000;
  EXPECT_EQ(max_batch_at(total, weights, kv, 32768), (total - weights - 4 * gib) / (kv * 32768));
  EXPECT_EQ(max_batch_at(10 * gib, 8 * gib, kv, 32768), 0);
  EXPECT_THROW(max_batch_at(total, weights, 0, 32768), Error);
  // 16.06 GB at 3 TB/s is 5.35 ms (the 5.4 ms HBM roofline of an H100 at 3 TB/s); at the 4.27
  // TB/s an H200 copies, 3.76 ms.
  EXPECT_NEAR(decode_roofline_ms(weights, kv, 1, 0, 3.0e12), 5.3533, 1e-3);
  EXPECT_NEAR(decode_roofline_ms(weights, kv, 1, 0, 4.27e12), 3.7612, 1e-3);
  EXPECT_NEAR(decode_roofline_ms(0, kv, 8, 16384, 3.0e12), 8.0 * 16384 * kv / 3e12 * 1e3, 1e-9);
  EXPECT_NEAR(prefill_roofline_ms(1'000'000'000, 0, 1, 4000, 800e12), 2e9 * 4000 / 800e12 * 1e3,
              1e-9);
  EXPECT_NEAR(prefill_roofline_ms(1'000'000'000, 1000, 2, 4000, 1e12),
              2 * (1e9 * 2 * 4000 + 1000 * 2) / 1e12 * 1e3, 1e-9);
}

TEST(Bench, ModelsAndCases) {
  const auto l = bench_model("llama8b", false);
  EXPECT_NO_THROW(l.config.validate());
  std::set<std::string> names;
  for (const auto& c : l.cases) names.insert(c.name("llama8b"));
  for (const char* n :
       {"llama8b/prefill/S=1024/B=1", "llama8b/prefill/S=4096/B=1", "llama8b/prefill/S=16384/B=1",
        "llama8b/decode/S=512/B=1", "llama8b/decode/S=16384/B=8", "llama8b/decode/S=4096/B=32"})
    EXPECT_TRUE(names.count(n)) << n;
  const auto s = bench_model("smollm2", true);
  EXPECT_NO_THROW(s.config.validate());
  EXPECT_EQ(s.config.num_layers, 30);
  EXPECT_LT(s.cases.size(), l.cases.size());
  EXPECT_THROW(bench_model("gpt5", false), Error);

  const auto spec = bench_spec(Variant::UniAttn, 32);
  EXPECT_EQ(spec.num_followers(), 12);  // 4 groups of 4 in layers 16..31
  for (int64_t i = 0; i < 32; ++i) EXPECT_EQ(spec.is_follower(i), follower(i, 4, 16, 32)) << i;
  EXPECT_FALSE(bench_spec(Variant::None, 32).enabled());
  // A given layout replaces the default one for the unified variants only.
  const auto given = bench_spec(Variant::UniAttn, 32, "24-27;28-31");
  EXPECT_EQ(given.num_followers(), 6);
  for (int64_t i = 0; i < 32; ++i)
    EXPECT_EQ(given.is_follower(i), i != 24 && i >= 24 && i != 28) << i;
  EXPECT_FALSE(bench_spec(Variant::None, 32, "24-27").enabled());
  EXPECT_THROW(bench_spec(Variant::UniAttn, 30, "28-31"), Error);

  BenchOptions empty;
  empty.device = at::kCPU;
  EXPECT_THROW(run_bench(empty), Error);
#ifndef UNIATTN_WITH_CUDA
  BenchOptions cuda;
  cuda.models = {l};
  EXPECT_THROW(run_bench(cuda), Error);
#endif
}

TEST(Bench, ParsesCaseSpecs) {
  const auto p = parse_bench_case("prefill:1:4096");
  EXPECT_EQ(p.kind, BenchKind::Prefill);
  EXPECT_EQ(p.batch, 1);
  EXPECT_EQ(p.seq, 4096);
  const auto d = parse_bench_case("decode:8:16384");
  EXPECT_EQ(d.kind, BenchKind::Decode);
  EXPECT_EQ(d.name("m"), "m/decode/S=16384/B=8");
  const auto pd = parse_bench_case("paged_decode:32:640");
  EXPECT_EQ(pd.kind, BenchKind::PagedDecode);
  EXPECT_EQ(pd.name("m"), "m/paged_decode/S=640/B=32");
  const auto pp = parse_bench_case("paged_prefill:2:300");
  EXPECT_EQ(pp.kind, BenchKind::PagedPrefill);
  EXPECT_EQ(pp.name("m"), "m/paged_prefill/S=300/B=2");
  for (const char* bad : {"", "prefill", "prefill:1", "train:1:2", "decode:0:5", "decode:1:-5",
                          "decode:1:5x", "decode:1:99999999999", "decode:5000:8", "decode::8"})
    EXPECT_THROW(parse_bench_case(bad), Error) << bad;
}

}  // namespace
}  // namespace uniattn
