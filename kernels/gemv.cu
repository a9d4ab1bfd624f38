// GEMV for decode batch 1: y [N] = W [N, K] . x [K] (+ bias) (+ add).
//
// At decode batch 1 a projection reads its whole weight to produce one output row, so its time is
// the weight's bytes over HBM bandwidth plus the kernel's start and drain. cuBLAS runs this shape
// as narrow tensor-core tiles, most with a split-K reduction kernel behind them (LLaMA-8B's q/k/v
// and o projections at 3.3 and 2.5 TB/s on the H200, bench/results/kernels-gemv-llama8b-h200.json).
// Here one warp owns one output element (two for wide weights): its lanes stream W[n, :] with
// 16-byte loads, kUnroll of them in flight per lane, multiply with x, reduce by shuffles and round
// the fp32 sum once, as cuBLAS's fp32-accumulating GEMM does (bias and add enter the fp32 sum, as
// in its epilogue). Launched with PDL (pdl.cuh), its CTAs may start beside the kernel ahead, whose
// output x is; they wait for it before reading anything, and read x with plain loads rather than
// the read-only path. (A bulk L2 prefetch of each row before that wait made every shape slower:
// 2.1-3.9 against 2.9-4.4 TB/s, 4e31425.)
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

// acc + W chunk . x chunk (8 elements each; x already in fp32).
template <typename T>
__device__ __forceinline__ float fma_chunk(const uint4& wv, const float (&xf)[8], float acc) {
  float wf[8];
  to_f32x8<T>(wv, wf);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc = fmaf(wf[e], xf[e], acc);
  return acc;
}

// R rows per warp: R = 2 halves the per-row start and reduction for wide weights (gate/up, lm_head)
// and reads each x chunk once for both rows; kUnroll / R loads per row stay in flight.
template <typename T, int R>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs a) {
  constexpr int U = kUnroll / R;
  pdl_begin();  // pdl.cuh: x is the output of the kernel ahead
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * R;
  if (n0 >= a.N) return;  // the whole warp: n0 is the warp's
  const int64_t chunks = a.K / 8;
  const uint4* w[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {  // a row past N reads row n0 again and is not written
    const int64_t n = n0 + r < a.N ? n0 + r : n0;
    w[r] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.w) + n * a.K);
  }
  const uint4* x = static_cast<const uint4*>(a.x);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  int64_t c = lane;
  for (; c + (U - 1) * 32 < chunks; c += U * 32) {
    uint4 wv[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) wv[r][u] = __ldcs(w[r] + c + u * 32);  // streamed: read once
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float xf[8];
      to_f32x8<T>(x[c + u * 32], xf);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = fma_chunk<T>(wv[r][u], xf, acc[r]);
    }
  }
  for (; c < chunks; c += 32) {
    float xf[8];
    to_f32x8<T>(x[c], xf);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = fma_chunk<T>(__ldcs(w[r] + c), xf, acc[r]);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  }
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    if (n >= a.N) break;
    float y = acc[r];
    if (a.bias) y += ld(static_cast<const T*>(a.bias) + n);
    if (a.add) y += ld(static_cast<const T*>(a.add) + n);
    static_cast<T*>(a.y)[n] = Cvt<T>::from(y);
  }
}

// Rows per warp: UNIATTN_GEMV_ROWS_PER_WARP (1 or 2; tuning runs only), else 2 for weights of at
// least 16,384 rows (more warps than one wave holds) and 1 below.
int rows_per_warp(int64_t n) {
  static const int forced = env_int("UNIATTN_GEMV_ROWS_PER_WARP", 1, 2, 0);
  return forced ? forced : (n >= 16384 ? 2 : 1);
}

template <typename T, int R>
cudaError_t launch_rows(const GemvArgs& a, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>((a.N + kWarps * R - 1) / (kWarps * R)));
  return launch_pdl(gemv_kernel<T, R>, grid, dim3(kWarps * 32), 0, st, a);
}

template <typename T>
cudaError_t launch_typed(const GemvArgs& a, cudaStream_t st) {
  return rows_per_warp(a.N) == 2 ? launch_rows<T, 2>(a, st) : launch_rows<T, 1>(a, st);
}

}  // namespace

cudaError_t probe_gemv_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, gemv_kernel<__nv_bfloat16, 1>);
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
