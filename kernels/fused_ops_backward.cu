// Backward kernels of two small fused ops (fused_ops.cu) for training: RMSNorm and the gated MLP
// activation. Under autograd each of them is otherwise a chain of 6-10 ATen kernels (casts, pow,
// mean, rsqrt, products, their backward), each a pass over an [tokens, hidden] or
// [tokens, intermediate] tensor (bench/results/ncu-train-llama8b-slice-h200.json).
//
// Numerics: fp32 arithmetic, rounded to the storage dtype where the ATen expression's backward
// produces a tensor (src/model/layers.cpp), so the two differ only by reduction order.
#include <cstdint>

#include "dtype_cvt.cuh"
#include "launch.h"

namespace uniattn::kernels::cuda {
namespace {

// Sums of (a, b) over the block; every thread gets them. blockDim.x a multiple of 32, <= 1024.
__device__ float2 block_sum2(float a, float b) {
  __shared__ float pa[32], pb[32];
  __syncthreads();  // the previous call's readers are done with pa/pb
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) pa[warp] = a, pb[warp] = b;
  __syncthreads();
  const int warps = blockDim.x / 32;
  a = lane < warps ? pa[lane] : 0.f;
  b = lane < warps ? pb[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  return {a, b};
}

// d out / d normed for one element: LLaMA out = w * T(normed): T(g * w); Gemma out =
// T(normed * (1 + w)) in fp32: g * (1 + w).
template <typename T>
__device__ __forceinline__ float grad_normed(float g, float w, bool plus_one) {
  return plus_one ? g * (1.f + w) : round_to<T>(g * w);
}

// Blocks of rows_per_block consecutive rows. With r = rsqrt(mean(x^2) + eps) and dn the gradient
// of the normalised row: dx = r dn - x r^3 mean(dn x). Each thread owns columns j, j + blockDim,
// ... and sums their weight gradients over the block's rows in shared memory; the caller sums the
// per-block rows of grad_w_partial.
template <typename T>
__global__ void rms_norm_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                         const T* __restrict__ w, T* __restrict__ grad_x,
                                         float* __restrict__ grad_w_partial, int64_t rows, int n,
                                         int rows_per_block, float eps, bool plus_one) {
  extern __shared__ float dw[];
  for (int j = threadIdx.x; j < n; j += blockDim.x) dw[j] = 0.f;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t last = first + rows_per_block < rows ? first + rows_per_block : rows;
  for (int64_t row = first; row < last; ++row) {
    const T* xr = x + row * n;
    const T* gr = grad + row * n;
    float ss = 0.f, dot = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const float xf = ld(xr + j);
      ss += xf * xf;
      dot += grad_normed<T>(ld(gr + j), ld(w + j), plus_one) * xf;
    }
    const float2 sums = block_sum2(ss, dot);
    const float r = rsqrtf(sums.x / static_cast<float>(n) + eps);
    const float c = r * r * r * sums.y / static_cast<float>(n);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const float xf = ld(xr + j), g = ld(gr + j);
      grad_x[row * n + j] = Cvt<T>::from(grad_normed<T>(g, ld(w + j), plus_one) * r - xf * c);
      // LLaMA: ATen's product g * T(normed) is rounded to T before the sum over rows.
      dw[j] += plus_one ? g * (xf * r) : round_to<T>(g * round_to<T>(xf * r));
    }
  }
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    grad_w_partial[static_cast<int64_t>(blockIdx.x) * n + j] = dw[j];
}

// SiLU: s = T(silu(g)); du = T(dy s); dg = T(T(dy u) sig(g) (1 + g (1 - sig(g)))), ATen's
// silu_backward. GELU (tanh): ATen's gelu_backward with approximate="tanh".
template <typename T, bool kGelu>
__device__ __forceinline__ void gated_backward_one(T dy_in, T g_in, T u_in, T& dg, T& du) {
  const float dy = Cvt<T>::to(dy_in), g = Cvt<T>::to(g_in), u = Cvt<T>::to(u_in);
  const float ds = round_to<T>(dy * u);
  float act, dact;
  if constexpr (kGelu) {
    constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;
    const float inner = kBeta * (g + kKappa * g * g * g), t = tanhf(inner);
    act = 0.5f * g * (1.f + t);
    dact = 0.5f * (1.f + t) + 0.5f * g * (1.f - t * t) * kBeta * (1.f + 3.f * kKappa * g * g);
  } else {
    const float sig = 1.f / (1.f + expf(-g));
    act = g * sig;
    dact = sig * (1.f + g * (1.f - sig));
  }
  du = Cvt<T>::from(dy * round_to<T>(act));
  dg = Cvt<T>::from(ds * dact);
}

template <typename T, bool kGelu>
__global__ void gated_backward_kernel(const T* __restrict__ dy, const T* __restrict__ g,
                                      const T* __restrict__ u, T* __restrict__ dg,
                                      T* __restrict__ du, int64_t n, bool vectorised) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (vectorised) {
    for (int64_t v = tid; v < n / kVec; v += stride) {
      alignas(16) T yv[kVec], gv[kVec], uv[kVec], dgv[kVec], duv[kVec];
      *reinterpret_cast<uint4*>(yv) = reinterpret_cast<const uint4*>(dy)[v];
      *reinterpret_cast<uint4*>(gv) = reinterpret_cast<const uint4*>(g)[v];
      *reinterpret_cast<uint4*>(uv) = reinterpret_cast<const uint4*>(u)[v];
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        gated_backward_one<T, kGelu>(yv[e], gv[e], uv[e], dgv[e], duv[e]);
      reinterpret_cast<uint4*>(dg)[v] = *reinterpret_cast<const uint4*>(dgv);
      reinterpret_cast<uint4*>(du)[v] = *reinterpret_cast<const uint4*>(duv);
    }
    return;
  }
  for (int64_t i = tid; i < n; i += stride)
    gated_backward_one<T, kGelu>(dy[i], g[i], u[i], dg[i], du[i]);
}

template <typename T>
cudaError_t rms_norm_backward_dt(const NormBackwardArgs& a, cudaStream_t st) {
  const auto blocks = static_cast<unsigned>((a.rows + a.rows_per_block - 1) / a.rows_per_block);
  const int threads = a.n >= 2048 ? 512 : a.n >= 512 ? 128 : 64;
  const size_t smem = static_cast<size_t>(a.n) * sizeof(float);
  rms_norm_backward_kernel<T><<<blocks, threads, smem, st>>>(
      static_cast<const T*>(a.grad), static_cast<const T*>(a.x), static_cast<const T*>(a.w),
      static_cast<T*>(a.grad_x), a.grad_w_partial, a.rows, a.n, a.rows_per_block, a.eps,
      a.plus_one);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gated_backward_dt(const GatedBackwardArgs& a, cudaStream_t st) {
  constexpr int kThreads = 256;
  constexpr int64_t kVec = 16 / sizeof(T);
  const bool vec = aligned16(a.grad_out, a.gate, a.up, a.grad_gate, a.grad_up) && a.n % kVec == 0;
  const unsigned blocks = grid_stride_blocks(a.n / (vec ? kVec : 1), kThreads);
  const auto dy = static_cast<const T*>(a.grad_out);
  const auto g = static_cast<const T*>(a.gate);
  const auto u = static_cast<const T*>(a.up);
  const auto dg = static_cast<T*>(a.grad_gate);
  const auto du = static_cast<T*>(a.grad_up);
  const auto kernel = a.gelu ? gated_backward_kernel<T, true> : gated_backward_kernel<T, false>;
  kernel<<<blocks, kThreads, 0, st>>>(dy, g, u, dg, du, a.n, vec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rms_norm_backward(const NormBackwardArgs& a, DType dt, cudaStream_t st) {
  if (a.rows == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto t) { return rms_norm_backward_dt<decltype(t)>(a, st); });
}

cudaError_t launch_gated_backward(const GatedBackwardArgs& a, DType dt, cudaStream_t st) {
  if (a.n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto t) { return gated_backward_dt<decltype(t)>(a, st); });
}

}  // namespace uniattn::kernels::cuda
