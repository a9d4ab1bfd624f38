// The device's ceilings every roofline is computed from: memory bandwidth (a large
// device-to-device copy) and the GEMM rate (a large square matmul in the benchmark's dtype),
// measured at the start of a benchmark run. The method follows the usual roofline practice: the
// copy counts the bytes read plus the bytes written; the matmul counts 2 n^3 FLOP.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace uniattn {

// Mean and spread of repeated measurements (stdev: the sample standard deviation, n - 1; 0 for
// one sample). Throws uniattn::Error for no samples.
struct SampleStats {
  int n = 0;
  double mean = 0, stdev = 0, min = 0, max = 0;
};
SampleStats summarize(const std::vector<double>& samples);

struct CeilingSizes {
  int64_t copy_bytes = int64_t{2} << 30;  // bytes of the copied buffer (>> any L2 cache)
  int64_t gemm_n = 8192;                  // n of the n x n x n matmul
  int warmup = 3;                         // untimed runs of each
  int iters = 10;                         // timed runs of each (every run timed on its own)
  // CUDA: 2 GiB and n = 8192 (about 1 ms each on an H100/H200); CPU: 64 MiB and n = 512.
  static CeilingSizes for_device(const at::Device& device);
};

struct Ceilings {
  // "measured" (measure_ceilings) or "given" (the caller's numbers, e.g. --ceilings).
  std::string method = "given";
  double copy_bytes_per_s = 0;  // mean over the timed copies, (read + written bytes) / s
  double copy_stdev = 0;        // standard deviation of the per-copy rates, bytes/s
  double gemm_flops_per_s = 0;  // mean over the timed matmuls, 2 n^3 / s
  double gemm_stdev = 0;        // standard deviation of the per-matmul rates, FLOP/s
  CeilingSizes sizes;           // what was measured (ignored for "given")
  std::string gemm_dtype;       // e.g. "bfloat16"
  std::string timer;            // "cuda events" | "steady_clock"
  // {"method", "copy_gb_per_s", "copy_gb_per_s_stdev", "gemm_tflop_per_s",
  //  "gemm_tflop_per_s_stdev", "copy_bytes", "gemm_n", "gemm_dtype", "warmup", "iters", "timer",
  //  "description"}; the size fields only for "measured".
  nlohmann::json to_json() const;
};

// Measures both ceilings on `device`: `sizes.iters` copies dst.copy_(src) of a
// `sizes.copy_bytes` buffer and matmuls of two [n, n] N(0, 1) tensors of `gemm_dtype` (random
// values: zeros run faster on some GPUs), each timed on its own after `sizes.warmup` untimed
// ones (CUDA events on a GPU, the steady clock with synchronisation on the CPU). Throws
// uniattn::Error for non-positive sizes or a CUDA device in a build without CUDA.
Ceilings measure_ceilings(const at::Device& device, at::ScalarType gemm_dtype,
                          const CeilingSizes& sizes);

// PyTorch's name of a dtype: "bfloat16", "float16", "float32", else c10's name.
std::string dtype_name(at::ScalarType dtype);

// Ceilings from the caller's numbers (GB/s, TFLOP/s), method "given". Throws uniattn::Error
// unless both are positive and finite.
Ceilings given_ceilings(double copy_gb_per_s, double gemm_tflop_per_s);

}  // namespace uniattn
