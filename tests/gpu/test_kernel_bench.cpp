// Timing of the attention kernels against at::scaled_dot_product_attention (LLaMA-3.1-8B head
// shape: Hq=32, Hkv=8, D=128, bf16). Runs only when UNIATTN_KERNEL_BENCH_OUT names the JSON file
// to write (scripts/gpu_kernel_tests.sh); otherwise it skips, so CTest stays fast.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/layers.h"
#include "shared_softmax.h"
#include "uniattn/model/kernel_paths.h"

namespace uk = uniattn::kernels;

namespace {

// Median of `reps` event-timed runs after `warm` warm-up runs (ms).
double time_ms(const std::function<void(int)>& fn, int warm = 5, int reps = 30) {
  for (int i = 0; i < warm; ++i) fn(i);
  auto stream = at::cuda::getCurrentCUDAStream();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    at::cuda::CUDAEvent a(cudaEventDefault), b(cudaEventDefault);
    a.record(stream);
    fn(i);
    b.record(stream);
    b.synchronize();
    t.push_back(a.elapsed_time(b));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Appends {case, variant, metric, value, unit} to rows and prints it as a BENCH line.
void add_row(nlohmann::json& rows, const std::string& c, const std::string& variant,
             const std::string& metric, double value, const std::string& unit) {
  rows.push_back(
      {{"case", c}, {"variant", variant}, {"metric", metric}, {"value", value}, {"unit", unit}});
  std::printf("BENCH %-28s %-34s %-22s %10.4f %s\n", c.c_str(), variant.c_str(), metric.c_str(),
              value, unit.c_str());
}

// The GPU, commit (UNIATTN_COMMIT) and command (UNIATTN_BENCH_COMMAND, else `fallback`) of a
// result file.
nlohmann::json result_doc(const char* fallback) {
  nlohmann::json doc;
  doc["gpu"] = at::cuda::getCurrentDeviceProperties()->name;
  const char* commit = std::getenv("UNIATTN_COMMIT");
  const char* cmd = std::getenv("UNIATTN_BENCH_COMMAND");
  doc["commit"] = commit ? commit : "unknown";
  doc["command"] = cmd ? cmd : fallback;
  return doc;
}

// Device time of one replay of fn(0..sets-1) captured as a CUDA graph, per call (ms).
double graph_call_ms(int sets, const std::function<void(int)>& fn) {
  auto stream = c10::cuda::getStreamFromPool();
  c10::cuda::CUDAStreamGuard guard(stream);
  for (int i = 0; i < sets; ++i) fn(i);  // warm-up (cuBLAS picks its kernels) outside the capture
  stream.synchronize();
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  for (int i = 0; i < sets; ++i) fn(i);
  graph.capture_end();
  return time_ms([&](int) { graph.replay(); }, 3, 20) / sets;
}

TEST(KernelBench, Llama8bShapes) {
  const char* out_path = std::getenv("UNIATTN_KERNEL_BENCH_OUT");
  if (!out_path) GTEST_SKIP() << "set UNIATTN_KERNEL_BENCH_OUT to run the benchmark";
  if (!at::cuda::is_available() || !uk::cuda_kernels_available()) GTEST_SKIP() << "no CUDA";
  nlohmann::json rows = nlohmann::json::array();
  auto add = [&rows](const std::string& c, const std::string& variant, const std::string& metric,
                     double value,
                     const std::string& unit) { add_row(rows, c, variant, metric, value, unit); };
  const int64_t Hq = 32, Hkv = 8, D = 128;
  const float scale = 1.f / std::sqrt(128.f);
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);

  for (int64_t S : {1024, 4096}) {
    const std::string c = "prefill_B1_S" + std::to_string(S);
    auto q = at::randn({1, Hq, S, D}, opt), k = at::randn({1, Hkv, S, D}, opt);
    auto v = at::randn({1, Hkv, S, D}, opt), v2 = at::randn({1, Hkv, S, D}, opt);
    const double flops = 4.0 * Hq * S * S * D / 2.0;  // causal: half of QK^T and PV
    const uk::AttnParams p{scale, 0.f, 0}, pcap{scale, 50.f, 0};
    at::Tensor lse;
    const double t_sdpa = time_ms([&](int) {
      at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, scale, /*enable_gqa=*/true);
    });
    const double t_lead = time_ms([&](int) { lse = std::get<1>(uk::prefill_leader(q, k, v, p)); });
    const double t_cap = time_ms([&](int) { uk::prefill_leader(q, k, v, pcap); });
    const double t_fol = time_ms([&](int) { uk::prefill_follower(q, k, lse, v2, p); });
    const double t_lead_c =
        time_ms([&](int) { lse = std::get<1>(uk::prefill_leader_custom(q, k, v, p)); });
    const double t_fol_c = time_ms([&](int) { uk::prefill_follower_custom(q, k, lse, v2, p); });
    const double t_win = time_ms([&](int) { uk::prefill_leader(q, k, v, {scale, 0.f, 1024}); });
    for (auto [name, t] :
         std::vector<std::pair<std::string, double>>{{"sdpa", t_sdpa},
                                                     {"uniattn_leader (dispatch)", t_lead},
                                                     {"uniattn_follower (dispatch)", t_fol},
                                                     {"uniattn_leader_kernel", t_lead_c},
                                                     {"uniattn_follower_kernel", t_fol_c},
                                                     {"uniattn_leader_kernel_softcap50", t_cap},
                                                     {"uniattn_leader_kernel_window1024", t_win}}) {
      add(c, name, "median_time", t, "ms");
      add(c, name, "throughput", flops / t / 1e9, "TFLOP/s");
    }
  }

  for (auto [B, S] : std::vector<std::pair<int64_t, int64_t>>{{1, 4096}, {8, 32768}}) {
    const std::string c = "decode_B" + std::to_string(B) + "_S" + std::to_string(S);
    // Small caches fit in L2 (50 MB): rotate among sets so timings see HBM, not the cache.
    const int sets = B * S * Hkv * D * 2 * 2 < (256LL << 20) ? 8 : 1;
    std::vector<at::Tensor> qs, ks, vs, v2s, ps;
    for (int i = 0; i < sets; ++i) {
      qs.push_back(at::randn({B, Hq, 1, D}, opt));
      ks.push_back(at::randn({B, Hkv, S, D}, opt));
      vs.push_back(at::randn({B, Hkv, S, D}, opt));
      v2s.push_back(at::randn({B, Hkv, S, D}, opt));
    }
    auto lens = at::full({B}, S, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
    const uk::AttnParams p{scale, 0.f, 0};
    for (int i = 0; i < sets; ++i)
      ps.push_back(std::get<1>(uk::decode_leader(qs[i], ks[i], vs[i], lens, p)));
    const double t_sdpa = time_ms([&](int i) {
      const int s = i % sets;
      at::scaled_dot_product_attention(qs[s], ks[s], vs[s], {}, 0.0, false, scale, true);
    });
    const double t_lead = time_ms([&](int i) {
      const int s = i % sets;
      uk::decode_leader(qs[s], ks[s], vs[s], lens, p);
    });
    const double t_fol = time_ms([&](int i) {
      const int s = i % sets;
      uk::decode_follower(ps[s], v2s[s], lens, Hq);
    });
    // The same calls replayed from CUDA graphs (all `sets` calls in one graph, time / sets): the
    // device time without host launch overhead, which dominates at B=1.
    auto graph_ms = [&](const std::function<void(int)>& fn) { return graph_call_ms(sets, fn); };
    std::vector<at::Tensor> outs, prows, fouts;
    for (int i = 0; i < sets; ++i) {
      outs.push_back(at::empty({B, Hq, 1, D}, opt));
      fouts.push_back(at::empty({B, Hq, 1, D}, opt));
      prows.push_back(at::empty({B, Hq, S}, opt.dtype(at::kFloat)));
    }
    const double g_sdpa = graph_ms([&](int s) {
      at::scaled_dot_product_attention(qs[s], ks[s], vs[s], {}, 0.0, false, scale, true);
    });
    const double g_lead = graph_ms(
        [&](int s) { uk::decode_leader_out(qs[s], ks[s], vs[s], lens, p, outs[s], prows[s]); });
    const double g_fol =
        graph_ms([&](int s) { uk::decode_follower_out(ps[s], v2s[s], lens, Hq, fouts[s]); });
    add(c, "sdpa", "median_time_cuda_graph", g_sdpa, "ms");
    add(c, "uniattn_leader", "median_time_cuda_graph", g_lead, "ms");
    add(c, "uniattn_follower", "median_time_cuda_graph", g_fol, "ms");
    const double kv_bytes = 2.0 * B * Hkv * S * D * 2, p_bytes = 4.0 * B * Hq * S;
    add(c, "sdpa", "median_time", t_sdpa, "ms");
    add(c, "sdpa", "bandwidth", kv_bytes / t_sdpa / 1e6, "GB/s");
    add(c, "uniattn_leader", "median_time", t_lead, "ms");
    add(c, "uniattn_leader", "bandwidth", (kv_bytes + 3 * p_bytes) / t_lead / 1e6, "GB/s");
    add(c, "uniattn_follower", "median_time", t_fol, "ms");
    add(c, "uniattn_follower", "bandwidth", (kv_bytes / 2 + p_bytes) / t_fol / 1e6, "GB/s");
    add(c, "uniattn_follower", "bandwidth_cuda_graph", (kv_bytes / 2 + p_bytes) / g_fol / 1e6,
        "GB/s");
    add(c, "uniattn_leader", "bandwidth_cuda_graph", (kv_bytes + 3 * p_bytes) / g_lead / 1e6,
        "GB/s");
  }

  nlohmann::json doc = result_doc("UNIATTN_KERNEL_BENCH_OUT=<file> test_kernel_bench");
  doc["notes"] =
      "median of 30 CUDA-event-timed runs after 5 warm-ups; bf16; Hq=32 Hkv=8 D=128; "
      "decode B=1 rotates 8 cache sets to defeat L2; bandwidth counts K+V (+fp32 p_row "
      "written twice, read once for the leader; read once for the follower)";
  doc["prefill_library"] = uk::prefill_library_status();
  std::printf("prefill library path: %s\n", uk::prefill_library_status().c_str());
  doc["rows"] = rows;
  std::ofstream(out_path) << doc.dump(2) << "\n";
}

}  // namespace

namespace {
// Decode projections of LLaMA-3.1-8B at batch 1: linear_forward's GEMV kernel (with and without
// PDL: consecutive calls overlap one's start with the other's end) against at::linear (cuBLAS)
// on the same weights, each replayed from a CUDA graph over enough weight copies (>= 1 GiB) that
// L2 holds none of them; bandwidth = weight bytes / time, and the copy ceiling (dst.copy_(src) of
// 2 GiB, read + written) measured in the same run. 4 rows: cuBLAS only (linear_forward's ATen
// path). Runs only when UNIATTN_GEMV_BENCH_OUT names the JSON file to write.
TEST(KernelBench, DecodeProjections) {
  const char* out_path = std::getenv("UNIATTN_GEMV_BENCH_OUT");
  if (!out_path) GTEST_SKIP() << "set UNIATTN_GEMV_BENCH_OUT to run the benchmark";
  if (!at::cuda::is_available() || !uk::cuda_kernels_available()) GTEST_SKIP() << "no CUDA";
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  nlohmann::json rows = nlohmann::json::array();
  auto add = [&rows](const std::string& c, const std::string& variant, const std::string& metric,
                     double value,
                     const std::string& unit) { add_row(rows, c, variant, metric, value, unit); };
  // Further runs with UNIATTN_PDL=0, UNIATTN_GEMV_ROWS_PER_WARP=1|2, UNIATTN_GEMV_SPLIT_K=1|2|4|8
  // or UNIATTN_GEMV_WIDE_SPLIT_K=1|2|4 time the kernel launched without PDL or with the rows or
  // warps per row forced.
  auto tag = [](const char* env, const char* name) {  // "_<name><value>" when env is set
    const char* v = std::getenv(env);
    return v ? std::string("_") + name + v : std::string();
  };
  const char* pdl_env = std::getenv("UNIATTN_PDL");
  const std::string gemv_variant =
      std::string("gemv") + (pdl_env && std::string(pdl_env) == "0" ? "_no_pdl" : "") +
      tag("UNIATTN_GEMV_ROWS_PER_WARP", "rows") + tag("UNIATTN_GEMV_SPLIT_K", "split") +
      tag("UNIATTN_GEMV_WIDE_SPLIT_K", "wide");
  const int64_t copy_bytes = int64_t{1} << 31;
  {
    auto src = at::empty({copy_bytes}, opt.dtype(at::kByte)), dst = at::empty_like(src);
    const double t = time_ms([&](int) { dst.copy_(src); }, 3, 10);
    add("ceiling", "copy", "bandwidth", 2.0 * copy_bytes / t / 1e6, "GB/s");
  }
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  for (const Shape& s : {Shape{"qkv_proj", 6144, 4096}, Shape{"o_proj", 4096, 4096},
                         Shape{"v_proj+w_c", 5120, 4096}, Shape{"gate_up_proj", 28672, 4096},
                         Shape{"down_proj", 4096, 14336}, Shape{"lm_head", 128256, 4096}}) {
    const double bytes = 2.0 * s.n * s.k;
    const int sets = static_cast<int>(std::max(2.0, std::ceil((1 << 30) / bytes)));
    std::vector<at::Tensor> ws;
    for (int i = 0; i < sets; ++i) ws.push_back(at::randn({s.n, s.k}, opt) * 0.02);
    std::vector<at::Tensor> ys(sets);
    auto x = at::randn({1, s.k}, opt);
    auto record = [&](const std::string& c, const std::string& variant, double t) {
      add(c, variant, "time", t * 1e3, "us");
      add(c, variant, "bandwidth", bytes / t / 1e6, "GB/s");
    };
    const uint64_t calls = uniattn::kernel_call_count(uniattn::KernelOp::Gemv);
    record(std::string(s.name) + "/M=1", gemv_variant,
           graph_call_ms(sets, [&](int i) { ys[i] = uniattn::linear_forward(x, ws[i]); }));
    EXPECT_GT(uniattn::kernel_call_count(uniattn::KernelOp::Gemv), calls) << s.name;
    record(std::string(s.name) + "/M=1", "cublas",
           graph_call_ms(sets, [&](int i) { ys[i] = at::linear(x, ws[i]); }));
    auto x4 = at::randn({4, s.k}, opt);
    record(std::string(s.name) + "/M=4", "cublas",
           graph_call_ms(sets, [&](int i) { ys[i] = at::linear(x4, ws[i]); }));
    if (std::string(s.name) == "gate_up_proj") {
      // The MLP's first half at decode: the GEMV with SiLU(gate) * up in its epilogue, against the
      // GEMV followed by the gated activation kernel.
      const int64_t half = s.n / 2;
      const auto silu = uniattn::Activation::Silu;
      ASSERT_TRUE(uniattn::gated_linear_forward(x, ws[0], silu).defined()) << "no gated GEMV";
      record("gate_up_proj+silu/M=1", gemv_variant + "_gated", graph_call_ms(sets, [&](int i) {
               ys[i] = uniattn::gated_linear_forward(x, ws[i], silu);
             }));
      record("gate_up_proj+silu/M=1", gemv_variant + "+gated", graph_call_ms(sets, [&](int i) {
               auto gu = uniattn::linear_forward(x, ws[i]);
               ys[i] = uniattn::gated_activation(gu.narrow(-1, 0, half), gu.narrow(-1, half, half),
                                                 silu);
             }));
    }
  }
  nlohmann::json doc = result_doc("UNIATTN_GEMV_BENCH_OUT=<file> test_kernel_bench");
  doc["notes"] =
      "bf16, LLaMA-3.1-8B projection shapes; per call: the median of 20 replays of a CUDA graph "
      "of calls over >= 1 GiB of distinct weights, divided by the calls; gemv = "
      "linear_forward (kernels/gemv.cu), cublas = at::linear";
  doc["rows"] = rows;
  std::ofstream(out_path) << doc.dump(2) << "\n";
}

// One decode step at B=8, S=32K for a profiler (ncu); runs only with UNIATTN_KERNEL_PROFILE=1.
TEST(KernelBench, DecodeProfileTarget) {
  const char* e = std::getenv("UNIATTN_KERNEL_PROFILE");
  if (!e || std::string(e) != "1") GTEST_SKIP() << "set UNIATTN_KERNEL_PROFILE=1";
  if (!at::cuda::is_available() || !uk::cuda_kernels_available()) GTEST_SKIP() << "no CUDA";
  auto opt = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t B = 8, S = 32768;
  auto q = at::randn({B, 32, 1, 128}, opt), k = at::randn({B, 8, S, 128}, opt);
  auto v = at::randn({B, 8, S, 128}, opt);
  auto lens = at::full({B}, S, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
  for (int i = 0; i < 2; ++i) {
    auto [o, p] = uk::decode_leader(q, k, v, lens, {0.088f, 0.f, 0});
    uk::decode_follower(p, v, lens, 32);
  }
  at::cuda::getCurrentCUDAStream().synchronize();
}
}  // namespace
