// Measuring the device's copy bandwidth and GEMM rate (see ceilings.h).
#include "ceilings.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>

#include "uniattn/error.h"

#ifdef UNIATTN_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace uniattn {

SampleStats summarize(const std::vector<double>& samples) {
  UNIATTN_CHECK(!samples.empty(), "summarize: no samples");
  SampleStats s;
  s.n = static_cast<int>(samples.size());
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / s.n;
  double ss = 0;
  for (double x : samples) ss += (x - s.mean) * (x - s.mean);
  s.stdev = s.n > 1 ? std::sqrt(ss / (s.n - 1)) : 0.0;
  const auto [lo, hi] = std::minmax_element(samples.begin(), samples.end());
  s.min = *lo;
  s.max = *hi;
  return s;
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kFloat:
      return "float32";
    default:
      return c10::toString(dtype);
  }
}

CeilingSizes CeilingSizes::for_device(const at::Device& device) {
  CeilingSizes s;
  if (!device.is_cuda()) {
    s.copy_bytes = int64_t{64} << 20;
    s.gemm_n = 512;
  }
  return s;
}

namespace {

// Seconds of each of `iters` runs of `fn` after `warmup` untimed ones.
std::vector<double> time_runs(const at::Device& device, int warmup, int iters,
                              const std::function<void()>& fn) {
  std::vector<double> s;
#ifdef UNIATTN_WITH_CUDA
  if (device.is_cuda()) {
    for (int i = 0; i < warmup; ++i) fn();
    c10::cuda::device_synchronize();
    for (int i = 0; i < iters; ++i) {
      at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
      start.record();
      fn();
      end.record();
      end.synchronize();
      s.push_back(start.elapsed_time(end) * 1e-3);
    }
    return s;
  }
#endif
  for (int i = 0; i < warmup; ++i) fn();
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return s;
}

std::vector<double> rates(double work, const std::vector<double>& seconds) {
  std::vector<double> r;
  for (double t : seconds) r.push_back(work / std::max(t, 1e-12));
  return r;
}

}  // namespace

Ceilings measure_ceilings(const at::Device& device, at::ScalarType gemm_dtype,
                          const CeilingSizes& sizes) {
  UNIATTN_CHECK(
      sizes.copy_bytes >= 1024 && sizes.gemm_n > 0 && sizes.iters > 0 && sizes.warmup >= 0,
      "device ceilings: copy_bytes (>= 1024), gemm_n and iters must be positive, "
      "warmup non-negative");
#ifndef UNIATTN_WITH_CUDA
  UNIATTN_CHECK(!device.is_cuda(), "uniattn was built without CUDA (UNIATTN_CUDA=OFF): cannot ",
                "measure the ceilings of ", device);
#endif
  c10::InferenceMode guard;
  Ceilings c;
  c.method = "measured";
  c.sizes = sizes;
  c.gemm_dtype = dtype_name(gemm_dtype);
  c.timer = device.is_cuda() ? "cuda events" : "steady_clock";
  {
    auto opts = at::TensorOptions().dtype(at::kByte).device(device);
    auto src = at::randint(256, {sizes.copy_bytes}, opts), dst = at::empty_like(src);
    const auto s =
        summarize(rates(2.0 * static_cast<double>(sizes.copy_bytes),
                        time_runs(device, sizes.warmup, sizes.iters, [&] { dst.copy_(src); })));
    c.copy_bytes_per_s = s.mean;
    c.copy_stdev = s.stdev;
  }
  {
    const int64_t n = sizes.gemm_n;
    auto opts = at::TensorOptions().dtype(gemm_dtype).device(device);
    auto a = at::randn({n, n}, opts), b = at::randn({n, n}, opts), out = at::empty({n, n}, opts);
    const double flops =
        2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
    const auto s = summarize(
        rates(flops, time_runs(device, sizes.warmup, sizes.iters, [&] { at::mm_out(out, a, b); })));
    c.gemm_flops_per_s = s.mean;
    c.gemm_stdev = s.stdev;
  }
  return c;
}

Ceilings given_ceilings(double copy_gb_per_s, double gemm_tflop_per_s) {
  UNIATTN_CHECK(std::isfinite(copy_gb_per_s) && copy_gb_per_s > 0 &&
                    std::isfinite(gemm_tflop_per_s) && gemm_tflop_per_s > 0,
                "device ceilings: copy GB/s and GEMM TFLOP/s must be positive, got ", copy_gb_per_s,
                " and ", gemm_tflop_per_s);
  Ceilings c;
  c.method = "given";
  c.copy_bytes_per_s = copy_gb_per_s * 1e9;
  c.gemm_flops_per_s = gemm_tflop_per_s * 1e12;
  return c;
}

nlohmann::json Ceilings::to_json() const {
  nlohmann::json j = {{"method", method},
                      {"copy_gb_per_s", copy_bytes_per_s * 1e-9},
                      {"copy_gb_per_s_stdev", copy_stdev * 1e-9},
                      {"gemm_tflop_per_s", gemm_flops_per_s * 1e-12},
                      {"gemm_tflop_per_s_stdev", gemm_stdev * 1e-12}};
  if (method == "measured") {
    j["copy_bytes"] = sizes.copy_bytes;
    j["gemm_n"] = sizes.gemm_n;
    j["gemm_dtype"] = gemm_dtype;
    j["warmup"] = sizes.warmup;
    j["iters"] = sizes.iters;
    j["timer"] = timer;
    j["description"] =
        "copy: dst.copy_(src) of copy_bytes, rate = 2 x copy_bytes (read + written) / time; "
        "GEMM: gemm_n^3 matmul of N(0,1) gemm_dtype inputs, rate = 2 gemm_n^3 / time; each run "
        "timed on its own after the warm-ups; mean and sample standard deviation of the rates";
  } else {
    j["description"] = "given by the caller, not measured";
  }
  return j;
}

}  // namespace uniattn
