// GEMV for decode batch 1: y [N] = W [N, K] . x [K] (+ bias) (+ add).
//
// At decode batch 1 a projection reads its whole weight to produce one output row, so its time is
// the weight's bytes over HBM bandwidth plus the kernel's start and drain. cuBLAS runs this shape
// as narrow tensor-core tiles, most with a split-K reduction kernel behind them (LLaMA-8B's q/k/v
// and o projections at 3.3 and 2.5 TB/s on the H200, bench/results/kernels-gemv-llama8b-h200.json).
// Here a group of S warps owns one output element (two for wide weights, or a gate/up pair whose
// activation it applies): its lanes stream W[n, :] with 16-byte loads, kUnroll of them in flight
// per lane, multiply with x, reduce by shuffles and through shared memory, and round the fp32 sum
// once, as cuBLAS's fp32-accumulating GEMM does (bias and add enter the fp32 sum, as in its
// epilogue). On the H200 it reads 3.7-4.5 TB/s by LLaMA-8B shape against cuBLAS's 2.5-4.2
// (bench/results/kernels-gemv-llama8b-h200-14039c8.json). Launched with PDL (pdl.cuh), its CTAs may
// start beside the kernel ahead, whose output x is; they wait for it before reading anything, and
// read x with plain loads rather than the read-only path. (A bulk L2 prefetch of each row before
// that wait made every shape slower: 2.1-3.9 against 2.9-4.4 TB/s, 4e31425.)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "dtype_cvt.cuh"
#include "launch.h"
#include "pdl.cuh"

namespace uniattn::kernels::cuda {
namespace {

// Warps per CTA: 4, or S when S warps share one row (a CTA holds whole row groups).
constexpr int cta_warps(int S) { return S > 4 ? S : 4; }
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
// S warps per row group (split-K inside the CTA): warp slice s of a group reads the 512-byte
// segments s, s + S, s + 2S, ... of each row, so a narrow weight (q/k/v, o, down: 4-6K rows, one
// warp each filling half the H200's warp slots) keeps S times the loads in flight; the S partial
// sums meet in shared memory and are added in slice order.
// Gated (E != kNone, R = 2): the warp's two rows are gate row i and up row N + i of a fused gate/up
// weight, and it writes act(gate) * up for output i, so the activation needs no kernel of its own.
template <typename T, int R, int S, GemvEpilogue E = GemvEpilogue::kNone>
__global__ void __launch_bounds__(cta_warps(S) * 32) gemv_kernel(const GemvArgs a) {
  constexpr int kWarps = cta_warps(S);
  static_assert(kWarps % S == 0, "a CTA holds whole row groups");
  constexpr bool kGated = E != GemvEpilogue::kNone;
  static_assert(!kGated || R == 2, "gated: a warp group per gate/up row pair");
  constexpr int U = kUnroll / R;
  constexpr int64_t kStride = S * 32;  // chunks between one lane's consecutive loads
  pdl_begin();                         // pdl.cuh: x is the output of the kernel ahead
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, slice = warp % S;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (kWarps / S) + warp / S;
  const int64_t n0 = kGated ? group : group * R;
  if (S == 1 && n0 >= a.N) return;  // the whole warp; with S > 1 every warp reaches the barrier
  const int64_t chunks = a.K / 8;
  const uint4* w[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {  // a row past N reads row N - 1 and is not written
    const int64_t n =
        kGated ? (n0 < a.N ? n0 : a.N - 1) + r * a.N : (n0 + r < a.N ? n0 + r : a.N - 1);
    w[r] = reinterpret_cast<const uint4*>(static_cast<const T*>(a.w) + n * a.K);
  }
  const uint4* x = static_cast<const uint4*>(a.x);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  // One step: U loads per row issued together (streamed: read once), then summed in order. The
  // last step, possibly short, predicates its loads on the row's end.
  auto step = [&](int64_t c, auto last) {
    constexpr bool kLast = decltype(last)::value;
    uint4 wv[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (!kLast || c + u * kStride < chunks) wv[r][u] = __ldcs(w[r] + c + u * kStride);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (kLast && c + u * kStride >= chunks) break;
      float xf[8];
      to_f32x8<T>(x[c + u * kStride], xf);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = fma_chunk<T>(wv[r][u], xf, acc[r]);
    }
  };
  int64_t c = slice * 32 + lane;
  for (; c + (U - 1) * kStride < chunks; c += U * kStride) step(c, std::false_type{});
  if (c < chunks) step(c, std::true_type{});
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  }
  if constexpr (S > 1) {
    __shared__ float partial[kWarps][R];
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) partial[warp][r] = acc[r];
    }
    __syncthreads();
    if (slice != 0) return;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      acc[r] = partial[warp][r];
#pragma unroll
      for (int s = 1; s < S; ++s) acc[r] += partial[warp + s][r];
    }
  }
  if (lane != 0 || n0 >= a.N) return;
  if constexpr (kGated) {
    static_cast<T*>(a.y)[n0] =
        gated_one<T, E == GemvEpilogue::kGeluGated>(Cvt<T>::from(acc[0]), Cvt<T>::from(acc[1]));
  } else {
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
}

template <typename T, int R, int S, GemvEpilogue E = GemvEpilogue::kNone>
cudaError_t launch_rows(const GemvArgs& a, cudaStream_t st) {
  constexpr int kWarps = cta_warps(S);
  constexpr int64_t kRows = kWarps / S * (E == GemvEpilogue::kNone ? R : 1);  // outputs per CTA
  const dim3 grid(static_cast<unsigned>((a.N + kRows - 1) / kRows));
  return launch_pdl(gemv_kernel<T, R, S, E>, grid, dim3(kWarps * 32), 0, st, a);
}

// Rows per warp: UNIATTN_GEMV_ROWS_PER_WARP (1 or 2; tuning runs only), else 2 for weights of at
// least 16,384 rows (more warps than one wave holds) and 1 below.
int rows_per_warp(int64_t n) {
  static const int forced = env_int("UNIATTN_GEMV_ROWS_PER_WARP", 1, 2, 0);
  return forced ? forced : (n >= 16384 ? 2 : 1);
}

// Warps per row at one row per warp (below 16,384 rows): UNIATTN_GEMV_SPLIT_K (1, 2, 4 or 8;
// tuning runs only), else 2. Warps per row pair at two rows per warp (gate/up, gated, lm_head):
// UNIATTN_GEMV_WIDE_SPLIT_K (1, 2 or 4), else 4. One H200 run at c3915ba, LLaMA-8B shapes, TB/s:
// narrow split 2 / 4 / 8: q/k/v 3.86 / 3.64 / 3.16, o 3.66 / 3.32 / 2.97, down 4.15 / 4.01 / 3.98
// (one warp per row, 36491ba: 3.45, 2.86, 3.41); wide split 1 / 2 / 4: gated gate/up 4.10 / 4.19 /
// 4.31, lm_head 4.46 / 4.35 / 4.50 (bench/results/kernels-gemv-splitk-llama8b-h200.json).
int split_k() {
  static const int forced = env_int("UNIATTN_GEMV_SPLIT_K", 1, 8, 0);
  return forced == 0 ? 2 : forced >= 8 ? 8 : forced >= 4 ? 4 : forced >= 2 ? 2 : 1;
}
int wide_split_k() {
  static const int forced = env_int("UNIATTN_GEMV_WIDE_SPLIT_K", 1, 4, 0);
  return forced == 0 ? 4 : forced >= 4 ? 4 : forced >= 2 ? 2 : 1;
}

// Two rows per warp (plain, or a gated gate/up pair), S warps per pair.
template <typename T, GemvEpilogue E>
cudaError_t launch_pairs(const GemvArgs& a, cudaStream_t st) {
  switch (wide_split_k()) {
    case 4:
      return launch_rows<T, 2, 4, E>(a, st);
    case 2:
      return launch_rows<T, 2, 2, E>(a, st);
    default:
      return launch_rows<T, 2, 1, E>(a, st);
  }
}

template <typename T>
cudaError_t launch_typed(const GemvArgs& a, cudaStream_t st) {
  if (a.epilogue == GemvEpilogue::kSiluGated)
    return launch_pairs<T, GemvEpilogue::kSiluGated>(a, st);
  if (a.epilogue == GemvEpilogue::kGeluGated)
    return launch_pairs<T, GemvEpilogue::kGeluGated>(a, st);
  if (rows_per_warp(a.N) == 2) return launch_pairs<T, GemvEpilogue::kNone>(a, st);
  switch (split_k()) {
    case 8:
      return launch_rows<T, 1, 8>(a, st);
    case 4:
      return launch_rows<T, 1, 4>(a, st);
    case 2:
      return launch_rows<T, 1, 2>(a, st);
    default:
      return launch_rows<T, 1, 1>(a, st);
  }
}

}  // namespace

cudaError_t probe_gemv_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, gemv_kernel<__nv_bfloat16, 1, 1>);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

cudaError_t launch_gemv(const GemvArgs& a, DType dt, cudaStream_t st) {
  const bool gated = a.epilogue != GemvEpilogue::kNone;
  if (a.K % 8 != 0 || a.K * 2 > 0xffffffffLL || dt == DType::kFloat || a.N > 0x3fffffff ||
      (gated && (a.bias || a.add)))
    return cudaErrorInvalidValue;
  if (a.N == 0) return cudaSuccess;
  return dt == DType::kHalf ? launch_typed<__half>(a, st) : launch_typed<__nv_bfloat16>(a, st);
}

}  // namespace uniattn::kernels::cuda
