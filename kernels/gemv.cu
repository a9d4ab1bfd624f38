// GEMV for decode batch 1: y [N] = W [N, K] . x [K] (+ bias) (+ add).
//
// At decode batch 1 a projection reads its whole weight to produce one output row, so its time is
// the weight's bytes over HBM bandwidth plus the kernel's start and drain. cuBLAS runs this shape
// as narrow tensor-core tiles, most with a split-K reduction kernel behind them (the q/k/v and o
// projections of LLaMA-8B at 3.3 and 2.5 TB/s on the H200, bench/results/gemv-llama8b-h200.json).
// Here one warp owns one output element n: its lanes stream W[n, :] with 16-byte loads, kUnroll
// of them in flight per lane, multiply with x (read through L1, where every warp finds it), reduce
// by shuffles and round the fp32 sum once, as cuBLAS's fp32-accumulating GEMM does (bias and add
// enter the fp32 sum, as in its epilogue). With PDL (pdl.cuh) each warp first starts its row's
// transfer into L2, then waits for the kernel ahead, whose output x is.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype_cvt.cuh"
#include "launch.h"
#include "pdl.cuh"

namespace uniattn::kernels::cuda {
namespace {

constexpr int kWarps = 4;   // outputs per CTA
constexpr int kUnroll = 8;  // 16-byte weight loads in flight per lane

// Eight 16-bit values of a 16-byte vector as fp32 (bf16: the bits shifted up, exact).
template <typename T>
__device__ __forceinline__ void to_f32x8(const uint4& u, float (&f)[8]);
template <>
__device__ __forceinline__ void to_f32x8<__nv_bfloat16>(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
template <>
__device__ __forceinline__ void to_f32x8<__half>(const uint4& u, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __half22float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// acc += W chunk . x chunk (8 elements each).
template <typename T>
__device__ __forceinline__ float fma_chunk(const uint4& wv, const uint4& xv, float acc) {
  float wf[8], xf[8];
  to_f32x8<T>(wv, wf);
  to_f32x8<T>(xv, xf);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc = fmaf(wf[e], xf[e], acc);
  return acc;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs a) {
  pdl_launch_dependents();
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const bool active = n < a.N;  // the whole warp: n is the warp's
  const int64_t chunks = a.K / 8;
  const uint4* w = reinterpret_cast<const uint4*>(static_cast<const T*>(a.w) + n * a.K);
  if (active && lane == 0 && chunks > 0) prefetch_l2(w, static_cast<uint32_t>(chunks * 16));
  pdl_wait();
  if (!active) return;
  const uint4* x = static_cast<const uint4*>(a.x);
  float acc = 0.f;
  int64_t c = lane;
  for (; c + (kUnroll - 1) * 32 < chunks; c += kUnroll * 32) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(w + c + u * 32);  // streamed: read once
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc = fma_chunk<T>(wv[u], __ldg(x + c + u * 32), acc);
  }
  for (; c < chunks; c += 32) acc = fma_chunk<T>(__ldcs(w + c), __ldg(x + c), acc);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane != 0) return;
  if (a.bias) acc += ld(static_cast<const T*>(a.bias) + n);
  if (a.add) acc += ld(static_cast<const T*>(a.add) + n);
  static_cast<T*>(a.y)[n] = Cvt<T>::from(acc);
}

template <typename T>
cudaError_t launch_typed(const GemvArgs& a, cudaStream_t st) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>((a.N + kWarps - 1) / kWarps));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = a.pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, gemv_kernel<T>, a);
}

}  // namespace

cudaError_t probe_gemv_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, gemv_kernel<__nv_bfloat16>);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

cudaError_t launch_gemv(const GemvArgs& a, DType dt, cudaStream_t st) {
  if (a.K % 8 != 0 || a.K * 2 > 0xffffffffLL || dt == DType::kFloat ||
      (a.N + kWarps - 1) / kWarps > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (a.N == 0) return cudaSuccess;
  return dt == DType::kHalf ? launch_typed<__half>(a, st) : launch_typed<__nv_bfloat16>(a, st);
}

}  // namespace uniattn::kernels::cuda
