// Decode-time projections: y[M, N] = x[M, K] . W[N, K]^T (+ bias) (+ add) for M <= 8 rows.
//
// At decode batch 1-8 every projection is a matrix-vector product bound by reading W once. The
// cuBLAS kernels chosen for these shapes reached ~2.5 TB/s on the H100 and added split-K
// reduction kernels (bench/results/ncu-decode-*.json); this kernel streams each row of W through
// one warp with 16-byte loads, several rows and several K-vectors in flight per lane, and
// accumulates in fp32, rounding once (as cuBLAS does). `add` lets a residual or a second
// projection (W_c) be summed in the same pass instead of a separate elementwise kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "launch.h"

namespace uniattn::kernels::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_f(__half x) {
  return __half2float(x);
}
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_f(float x) {
  return __float2half(x);
}

// Eight products of a 16-byte W vector and a 16-byte x vector, added to acc.
template <typename T>
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const T* wp = reinterpret_cast<const T*>(&w);
  const T* xp = reinterpret_cast<const T*>(&x);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc = fmaf(to_f(wp[e]), to_f(xp[e]), acc);
  return acc;
}

// One warp owns R consecutive output columns (rows of W) for all M inputs. Each lane reads 16-byte
// vectors v = lane, lane + 32, ... of those rows, U vectors per iteration, so R * U * 16 bytes of
// W are in flight per lane.
template <typename T, int R, int MT, int U>
__global__ void __launch_bounds__(128) gemv_kernel(const GemvArgs a) {
  const int warp =
      static_cast<int>((static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32);
  const int lane = threadIdx.x % 32;
  const int n0 = warp * R;
  if (n0 >= a.N) return;
  const T* w = static_cast<const T*>(a.w);
  const T* x = static_cast<const T*>(a.x);
  const int kv = a.K / 8;  // 16-byte vectors per row
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    wrow[r] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(min(n0 + r, a.N - 1)) * a.K);
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

  int v = lane;
  for (; v + 32 * (U - 1) < kv; v += 32 * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = __ldcs(wrow[r] + v + 32 * u);  // read once: stream
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const uint4 xv =
            m < a.M ? __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * a.K) + v +
                            32 * u)
                    : zero;
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][m] = dot8<T>(wv[u][r], xv, acc[r][m]);
      }
    }
  }
  for (; v < kv; v += 32) {  // tail
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = __ldcs(wrow[r] + v);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const uint4 xv =
          m < a.M ? __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * a.K) + v)
                  : zero;
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][m] = dot8<T>(wv[r], xv, acc[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if (lane != 0) return;
  const T* bias = static_cast<const T*>(a.bias);
  const T* add = static_cast<const T*>(a.add);
  T* y = static_cast<T*>(a.y);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = n0 + r;
    if (n >= a.N) break;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= a.M) break;
      const int64_t idx = static_cast<int64_t>(m) * a.N + n;
      // One rounding of product + bias + add, as a cuBLAS addmm with beta = 1.
      float s = acc[r][m];
      if (bias) s += to_f(bias[n]);
      if (add) s += to_f(add[idx]);
      y[idx] = from_f<T>(s);
    }
  }
}

// UNIATTN_GEMV_UNROLL=8 doubles the single-row kernel's loads in flight (tuning runs only).
int single_row_unroll() {
  static const int u = [] {
    const char* e = std::getenv("UNIATTN_GEMV_UNROLL");
    return e && std::string(e) == "8" ? 8 : 4;
  }();
  return u;
}

template <typename T, int R, int MT>
cudaError_t launch_rm(const GemvArgs& a, cudaStream_t st) {
  constexpr int U = MT <= 2 ? 4 : (MT == 4 ? 2 : 1);
  const int64_t warps = (a.N + R - 1) / R;
  const auto blocks = static_cast<unsigned>((warps + 3) / 4);
  if (MT == 1 && single_row_unroll() == 8)
    gemv_kernel<T, R, MT, 8><<<blocks, 128, 0, st>>>(a);
  else
    gemv_kernel<T, R, MT, U><<<blocks, 128, 0, st>>>(a);
  return cudaGetLastError();
}

template <typename T, int MT>
cudaError_t launch_m(const GemvArgs& a, cudaStream_t st) {
  // Enough warps to cover the SMs several times over; more rows per warp on wide outputs.
  if constexpr (MT <= 2) {
    if (a.N >= 16384) return launch_rm<T, 4, MT>(a, st);
  }
  if (a.N >= 4096) return launch_rm<T, 2, MT>(a, st);
  return launch_rm<T, 1, MT>(a, st);
}

template <typename T>
cudaError_t launch_t(const GemvArgs& a, cudaStream_t st) {
  if (a.M <= 1) return launch_m<T, 1>(a, st);
  if (a.M <= 2) return launch_m<T, 2>(a, st);
  if (a.M <= 4) return launch_m<T, 4>(a, st);
  return launch_m<T, 8>(a, st);
}

}  // namespace

cudaError_t launch_gemv(const GemvArgs& a, DType dt, cudaStream_t st) {
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.M > kGemvMaxRows || a.K % 8 != 0) return cudaErrorInvalidValue;
  return dt == DType::kHalf ? launch_t<__half>(a, st) : launch_t<__nv_bfloat16>(a, st);
}

}  // namespace uniattn::kernels::cuda
