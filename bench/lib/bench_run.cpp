// The benchmark loop: measures the device's ceilings, builds each model x variant on the device,
// times prefills (wall clock to the first token, synchronised) and CUDA-graph-replayed decode
// steps (CUDA events around windows of replays), and writes the JSON after every case.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>

#include "bench.h"
#include "model/layers.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/model/kv_cache.h"
#include "uniattn/model/paged_kv_cache.h"

#ifdef UNIATTN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace uniattn {
namespace {

using Clock = std::chrono::steady_clock;

void sync(const at::Device& dev) {
#ifdef UNIATTN_WITH_CUDA
  if (dev.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)dev;
#endif
}

void release_memory(const at::Device& dev) {
#ifdef UNIATTN_WITH_CUDA
  if (dev.is_cuda()) {
    c10::cuda::device_synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
  }
#else
  (void)dev;
#endif
}

std::string device_name(const at::Device& dev) {
#ifdef UNIATTN_WITH_CUDA
  if (dev.is_cuda()) return at::cuda::getCurrentDeviceProperties()->name;
#endif
  return dev.str();
}

// Total device memory in bytes; 0 where unknown (CPU).
int64_t device_memory(const at::Device& dev) {
#ifdef UNIATTN_WITH_CUDA
  if (dev.is_cuda())
    return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->totalGlobalMem);
#else
  (void)dev;
#endif
  return 0;
}

std::string git_commit() {
  if (const char* env = std::getenv("UNIATTN_COMMIT"); env && *env) return env;
  std::string out;
  if (FILE* p = popen("git rev-parse HEAD 2>/dev/null", "r")) {
    std::array<char, 128> buf{};
    while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out.empty() ? "unknown" : out;
}

bool is_oom(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e)) return true;
  const std::string what = e.what();
  return what.find("out of memory") != std::string::npos ||
         what.find("CUDA_ERROR_OUT_OF_MEMORY") != std::string::npos;
}

struct Ctx {
  const BenchOptions& opt;
  BenchResult& result;
  std::string model, variant;
  void add(std::string case_name, std::string metric, double value, std::string unit,
           std::string note = {}, SampleStats stats = {}) {
    BenchRow r{std::move(case_name), variant, std::move(metric), value, std::move(unit),
               std::move(note),      stats};
    if (opt.on_row) opt.on_row(r);
    result.rows.push_back(std::move(r));
  }
  // A repeated time: the mean as the value, with its spread.
  void add_time(const std::string& case_name, std::string metric, const SampleStats& s) {
    add(case_name, std::move(metric), s.mean, "ms", {}, s);
  }
  void flush() {
    if (opt.out.empty()) return;
    write_text_atomic(opt.out, result.to_json().dump(2) + "\n");
  }
};

CausalLM build_model(const BenchModel& m, Variant variant, const BenchOptions& opt) {
  if (!m.weights.empty()) {
    LoadOptions lo;
    lo.dtype = opt.dtype;
    lo.device = opt.device;
    if (variant != Variant::None)
      lo.uniattn = bench_spec(variant, m.config.num_layers, opt.superblocks);
    return load_model(m.weights, lo);
  }
  ModelConfig c = m.config;
  c.uniattn = bench_spec(variant, c.num_layers, opt.superblocks);
  return CausalLM(c, at::TensorOptions().dtype(opt.dtype).device(opt.device));
}

at::Tensor random_ids(const ModelConfig& c, int64_t b, int64_t s, const at::Device& dev) {
  return at::randint(c.vocab_size, {b, s}, at::TensorOptions().dtype(at::kLong).device(dev));
}

// Times `once` (a whole prefill and the greedy choice of the first token, synchronised) as the
// case's time to first token, against the GEMM roofline.
void time_ttft(Ctx& ctx, const ModelFootprint& fp, const BenchCase& bc, const std::string& name,
               const std::function<void()>& once) {
  const auto& opt = ctx.opt;
  const int iters = bc.seq >= 8192 ? std::max(2, opt.prefill_iters / 2) : opt.prefill_iters;
  for (int i = 0; i < opt.prefill_warmup; ++i) once();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    once();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  const auto s = summarize(ms);
  ctx.add_time(name, "ttft_ms", s);
  ctx.add(name, "roofline_fraction",
          prefill_roofline_ms(fp.matmul_params, fp.lm_head_params, bc.batch, bc.seq,
                              ctx.result.ceilings.gemm_flops_per_s) /
              s.mean,
          "fraction");
}

void run_prefill(Ctx& ctx, CausalLM& model, const ModelFootprint& fp, const BenchCase& bc,
                 const std::string& name) {
  const auto& opt = ctx.opt;
  const auto& c = model->config();
  KVCache cache(c, bc.batch, bc.seq, opt.dtype, opt.device);
  auto ids = random_ids(c, bc.batch, bc.seq, opt.device);
  ForwardOptions fo;
  fo.last_only = true;
  // Time to first token: the prefill into an empty cache plus the greedy choice of the token.
  time_ttft(ctx, fp, bc, name, [&] {
    cache.reset();
    model->forward(ids, &cache, fo).argmax(-1);
    sync(opt.device);
  });
}

// `batch` rows of `per_row` blocks each, block j of row i being j * batch + i: the rows' blocks
// interleaved as a busy server leaves them. Context and query lengths are left to the caller.
PagedBatch interleaved_batch(int64_t batch, int64_t per_row) {
  PagedBatch pb;
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<int32_t> table;
    for (int64_t j = 0; j < per_row; ++j) table.push_back(static_cast<int32_t>(j * batch + i));
    pb.block_tables.push_back(std::move(table));
  }
  pb.context_lens.assign(size_t(batch), 0);
  pb.query_lens.assign(size_t(batch), 1);
  return pb;
}

// The prefill through uniattn-serve's paged cache (blocks of 16, interleaved across rows): every
// row's prompt fed in chunks of prefill_chunk tokens per paged_forward call, as the server
// schedules a prompt longer than its chunk.
void run_paged_prefill(Ctx& ctx, CausalLM& model, const ModelFootprint& fp, const BenchCase& bc,
                       const std::string& name) {
  const auto& opt = ctx.opt;
  const int64_t bs = 16, per_row = bc.seq / bs + 1, chunk = opt.prefill_chunk;
  PagedKVCache cache(model->config(), bc.batch * per_row, bs, opt.dtype, opt.device);
  PagedBatch pb = interleaved_batch(bc.batch, per_row);
  auto ids = random_ids(model->config(), bc.batch, bc.seq, opt.device);
  time_ttft(ctx, fp, bc, name, [&] {
    at::Tensor logits;
    for (int64_t pos = 0; pos < bc.seq; pos += chunk) {
      const int64_t n = std::min(chunk, bc.seq - pos);
      pb.context_lens.assign(size_t(bc.batch), pos);
      pb.query_lens.assign(size_t(bc.batch), n);
      logits = paged_forward(model, ids.narrow(1, pos, n), cache, pb, true);
    }
    logits.argmax(-1);
    sync(opt.device);
  });
}

// Mean time of one decode step at a fixed cache length in each of `decode_repeats` windows of
// `decode_iters` steps, in ms. The cache holds `seq` random tokens (their values do not change
// the work); every step writes position `seq` again and nothing advances, so each timed step sees
// the same shape.
std::vector<double> time_decode(const BenchOptions& opt, const std::function<at::Tensor()>& step) {
#ifdef UNIATTN_WITH_CUDA
  if (opt.device.is_cuda()) {
    // As in the CUDA-graph decoder: warm up eagerly on a side stream (lazy initialisation must
    // not happen inside capture), capture one step, then replay it.
    auto stream = at::cuda::getStreamFromPool();
    at::cuda::getCurrentCUDAStream().synchronize();
    at::cuda::CUDAGraph graph;
    at::Tensor logits;
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      step();
      stream.synchronize();
      graph.capture_begin();
      try {
        logits = step();
      } catch (...) {
        // Leave capture mode (and the allocator's capture pool) before reporting the failure.
        try {
          graph.capture_end();
        } catch (...) {
        }
        throw;
      }
      graph.capture_end();
    }
    stream.synchronize();
    for (int i = 0; i < opt.decode_warmup; ++i) graph.replay();
    std::vector<double> ms;
    for (int w = 0; w < opt.decode_repeats; ++w) {
      at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
      start.record();
      for (int i = 0; i < opt.decode_iters; ++i) graph.replay();
      end.record();
      end.synchronize();
      ms.push_back(start.elapsed_time(end) / opt.decode_iters);
    }
    c10::cuda::device_synchronize();
    return ms;
  }
#endif
  for (int i = 0; i < opt.decode_warmup; ++i) step();
  sync(opt.device);
  std::vector<double> ms;
  for (int w = 0; w < opt.decode_repeats; ++w) {
    const auto t0 = Clock::now();
    for (int i = 0; i < opt.decode_iters; ++i) step();
    sync(opt.device);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() /
                 opt.decode_iters);
  }
  return ms;
}

void run_decode(Ctx& ctx, CausalLM& model, const ModelFootprint& fp, const BenchCase& bc,
                const std::string& name) {
  const auto& opt = ctx.opt;
  const auto& c = model->config();
  KVCache cache(c, bc.batch, bc.seq + 16, opt.dtype, opt.device);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (cache.has_k(l)) cache.k_buffer(l).normal_();
    if (cache.has_v(l)) cache.v_buffer(l).normal_();
  }
  cache.advance(bc.seq);
  auto tokens = random_ids(c, bc.batch, 1, opt.device);
  auto position = at::full({1}, bc.seq, at::TensorOptions().dtype(at::kLong).device(opt.device));
  const auto s = summarize(time_decode(opt, [&] {
    ForwardOptions fo;
    fo.last_only = true;
    fo.decode_position = position;
    return model->forward(tokens, &cache, fo);
  }));
  const double t = s.mean;
  ctx.add_time(name, "decode_step_ms", s);
  ctx.add(name, "tokens_per_s", static_cast<double>(bc.batch) * 1e3 / t, "tokens/s");
  const double roof = decode_roofline_ms(fp.decode_read_bytes, cache.bytes_per_token(), bc.batch,
                                         bc.seq, ctx.result.ceilings.copy_bytes_per_s);
  ctx.add(name, "roofline_fraction", roof / t, "fraction");
}

// The same step through uniattn-serve's paged cache: each row's `seq` tokens in blocks of 16,
// block ids interleaved across rows (block j of row i is j * batch + i), the table `width` the
// serving bucket's (DecodeRunner: the next power of two of the blocks, at least 16).
void run_paged_decode(Ctx& ctx, CausalLM& model, const ModelFootprint& fp, const BenchCase& bc,
                      const std::string& name) {
  const auto& opt = ctx.opt;
  const int64_t bs = 16, per_row = bc.seq / bs + 1;
  int64_t width = 16;
  while (width < per_row) width *= 2;
  PagedKVCache cache(model->config(), bc.batch * per_row, bs, opt.dtype, opt.device);
  for (int64_t l = 0; l < model->config().num_layers; ++l) {
    if (cache.has_k(l)) cache.k_pool(l).normal_();
    if (cache.has_v(l)) cache.v_pool(l).normal_();
  }
  PagedBatch pb = interleaved_batch(bc.batch, per_row);
  pb.context_lens.assign(size_t(bc.batch), bc.seq);
  const auto host = paged_decode_inputs(cache, pb, bc.batch, width);
  const PagedDecodeInputs in = host.to(opt.device);
  auto tokens = random_ids(model->config(), bc.batch, 1, opt.device);
  const auto s =
      summarize(time_decode(opt, [&] { return paged_decode_forward(model, tokens, cache, in); }));
  ctx.add_time(name, "decode_step_ms", s);
  ctx.add(name, "tokens_per_s", static_cast<double>(bc.batch) * 1e3 / s.mean, "tokens/s");
  const double roof = decode_roofline_ms(fp.decode_read_bytes, cache.bytes_per_block() / bs,
                                         bc.batch, bc.seq, ctx.result.ceilings.copy_bytes_per_s);
  ctx.add(name, "roofline_fraction", roof / s.mean, "fraction");
}

void run_model_variant(Ctx& ctx, const BenchModel& m, Variant variant) {
  const auto& opt = ctx.opt;
  const std::string mem_case = m.name + "/memory";
  CausalLM model{nullptr};
  try {
    model = build_model(m, variant, opt);
  } catch (const std::exception& e) {
    const bool oom = is_oom(e);
    model = CausalLM{nullptr};
    release_memory(opt.device);
    ctx.add(m.name + "/build", oom ? "oom" : "error", -1, "", e.what());
    ctx.flush();
    return;
  }
  const auto fp = model_footprint(model);
  {
    KVCache probe(model->config(), 1, 1, opt.dtype, opt.device);
    const int64_t kv = probe.bytes_per_token();
    ctx.add(mem_case, "kv_bytes_per_token", static_cast<double>(kv), "B", m.note);
    ctx.add(mem_case, "weight_bytes", static_cast<double>(fp.param_bytes), "B");
    if (const int64_t total = device_memory(opt.device); total > 0) {
      ctx.add(mem_case, "max_batch_at_32k",
              static_cast<double>(max_batch_at(total, fp.param_bytes, kv, 32768)), "sequences");
    }
  }
  ctx.flush();
  for (const auto& bc : m.cases) {
    const std::string name = bc.name(m.name);
    try {
      if (bc.kind == BenchKind::Prefill) {
        run_prefill(ctx, model, fp, bc, name);
      } else if (bc.kind == BenchKind::Decode) {
        run_decode(ctx, model, fp, bc, name);
      } else if (bc.kind == BenchKind::PagedDecode) {
        run_paged_decode(ctx, model, fp, bc, name);
      } else {
        run_paged_prefill(ctx, model, fp, bc, name);
      }
    } catch (const std::exception& e) {
      const bool oom = is_oom(e);
      release_memory(opt.device);
      std::string msg = e.what();
      if (msg.size() > 400) msg.resize(400);  // c10 errors carry long backtraces
      ctx.add(name, oom ? "oom" : "error", -1, "", msg);
    }
    release_memory(opt.device);
    ctx.flush();
  }
  model = CausalLM{nullptr};
  release_memory(opt.device);
}

}  // namespace

BenchResult run_bench(const BenchOptions& opt) {
  UNIATTN_CHECK(!opt.models.empty(), "uniattn bench: no models to run");
  UNIATTN_CHECK(!opt.variants.empty(), "uniattn bench: no variants to run");
  UNIATTN_CHECK(opt.decode_iters > 0 && opt.decode_repeats > 0 && opt.prefill_iters > 0 &&
                    opt.decode_warmup >= 0 && opt.prefill_warmup >= 0,
                "uniattn bench: iteration counts must be positive (warm-ups non-negative)");
#ifndef UNIATTN_WITH_CUDA
  UNIATTN_CHECK(!opt.device.is_cuda(),
                "uniattn was built without CUDA (UNIATTN_CUDA=OFF): cannot benchmark on ",
                opt.device);
#endif
  c10::InferenceMode guard;
  BenchResult result;
  result.gpu = device_name(opt.device);
  result.commit = opt.commit.empty() ? git_commit() : opt.commit;
  result.command = opt.command;
  result.run_id = opt.run_id;
  if (const char* env = std::getenv("UNIATTN_RUN_ID"); result.run_id.empty() && env)
    result.run_id = env;
  result.dtype = dtype_name(opt.dtype);
  result.ceilings =
      opt.ceilings
          ? *opt.ceilings
          : measure_ceilings(opt.device, opt.dtype,
                             opt.ceiling_sizes.value_or(CeilingSizes::for_device(opt.device)));
  if (!opt.out.empty() && opt.out.has_parent_path())
    std::filesystem::create_directories(opt.out.parent_path());
  Ctx ctx{opt, result, {}, {}};
  ctx.flush();
  for (const auto& m : opt.models) {
    for (Variant v : opt.variants) {
      ctx.model = m.name;
      ctx.variant = variant_name(v);
      run_model_variant(ctx, m, v);
      if (v == Variant::None && opt.unfused_baseline) {
        ctx.variant = "none_unfused";
        AtenOpsScope unfused;  // the benchmark builds, prefills and captures on this thread
        run_model_variant(ctx, m, v);
      }
    }
  }
  return result;
}

}  // namespace uniattn
