// GEMV for decode: y [M, N] = x [M, K] . W [N, K]^T (+ bias) (+ add), M <= kGemvMaxRows.
//
// At decode batch 1-4 a projection reads its whole weight to produce a few outputs, so its time is
// the weight's bytes over HBM bandwidth. cuBLAS runs these shapes as narrow tensor-core tiles, most
// with a split-K reduction kernel behind them; on the H200 the LLaMA-8B q/k/v and o projections
// read their weights at 2.6-2.8 TB/s (ncu, bench/results/ncu-decode-llama8b-b1-h200.json). Here one
// warp owns one output row n: its lanes stream W[n, :] with 16-byte loads, kUnroll of them in
// flight per lane, multiply with the M input rows (read through L1, where every warp of the CTA
// finds them), reduce by shuffles and write y[:, n] with one rounding of the fp32 sum, as cuBLAS's
// fp32-accumulating GEMM does (bias and add enter the fp32 sum, as in its epilogue).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype_cvt.cuh"
#include "launch.h"

namespace uniattn::kernels::cuda {
namespace {

constexpr int kWarps = 4;   // output rows per CTA
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

// acc[m] += W chunk . x[m] chunk c (8 elements each).
template <typename T, int M>
__device__ __forceinline__ void fma_chunk(const uint4& wv, const uint4* const (&x)[M], int64_t c,
                                          float (&acc)[M]) {
  float wf[8];
  to_f32x8<T>(wv, wf);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float xf[8];
    to_f32x8<T>(__ldg(x[m] + c), xf);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[m] = fmaf(wf[e], xf[e], acc[m]);
  }
}

template <typename T, int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs a) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= a.N) return;  // the whole warp: n is the warp's
  const int64_t chunks = a.K / 8;
  const uint4* w = reinterpret_cast<const uint4*>(static_cast<const T*>(a.w) + n * a.K);
  const uint4* x[M];
#pragma unroll
  for (int m = 0; m < M; ++m)
    x[m] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.x) + m * a.x_stride);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;

  int64_t c = lane;
  for (; c + (kUnroll - 1) * 32 < chunks; c += kUnroll * 32) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(w + c + u * 32);  // streamed: read once
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) fma_chunk<T, M>(wv[u], x, c + u * 32, acc);
  }
  for (; c < chunks; c += 32) fma_chunk<T, M>(__ldcs(w + c), x, c, acc);

#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  }
  if (lane != 0) return;
  const float b = a.bias ? ld(static_cast<const T*>(a.bias) + n) : 0.f;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float r = acc[m] + b;
    if (a.add) r += ld(static_cast<const T*>(a.add) + m * a.add_stride + n);
    static_cast<T*>(a.y)[m * a.y_stride + n] = Cvt<T>::from(r);
  }
}

template <typename T>
cudaError_t launch_rows(const GemvArgs& a, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>((a.N + kWarps - 1) / kWarps));
  switch (a.M) {
    case 1:
      gemv_kernel<T, 1><<<grid, kWarps * 32, 0, st>>>(a);
      break;
    case 2:
      gemv_kernel<T, 2><<<grid, kWarps * 32, 0, st>>>(a);
      break;
    case 3:
      gemv_kernel<T, 3><<<grid, kWarps * 32, 0, st>>>(a);
      break;
    default:
      gemv_kernel<T, 4><<<grid, kWarps * 32, 0, st>>>(a);
      break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t probe_gemv_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, gemv_kernel<__nv_bfloat16, 1>);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

cudaError_t launch_gemv(const GemvArgs& a, DType dt, cudaStream_t st) {
  if (a.M < 0 || a.M > kGemvMaxRows || a.K % 8 != 0 || dt == DType::kFloat ||
      (a.N + kWarps - 1) / kWarps > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  return dt == DType::kHalf ? launch_rows<__half>(a, st) : launch_rows<__nv_bfloat16>(a, st);
}

}  // namespace uniattn::kernels::cuda
