// The small per-token ops of a decoder layer, one kernel each: RMSNorm (optionally fused with the
// residual add before it), rotary embedding (optionally written straight into a KV-cache slot),
// and the gated MLP activation. Unfused, each is a chain of 4-9 ATen kernels with fp32
// intermediates; at decode batch 1 those chains were ~80% of all launches (see
// bench/results/ncu-decode-llama8b-b1-h100.json).
//
// Numerics: every kernel computes in fp32 and rounds to the storage dtype exactly where the ATen
// expression it replaces (src/model/layers.cpp, Hugging Face's formulas) produces a tensor, so the
// fused and unfused models differ only by the reduction order of the RMSNorm sum of squares.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "dtype_cvt.cuh"
#include "launch.h"
#include "pdl.cuh"

namespace uniattn::kernels::cuda {
namespace {

// Sum over the block; every thread gets the result. blockDim.x is a multiple of 32, <= 1024.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? partial[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row. HF: h = x + delta (rounded); xf = float(h); r = rsqrt(mean(xf^2) + eps);
// LLaMA: w * T(xf * r); Gemma: T(xf * r * (1 + w)).
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ delta,
                                const T* __restrict__ w, T* __restrict__ h_out, T* __restrict__ out,
                                int n, float eps, bool plus_one) {
  pdl_begin();  // pdl.cuh
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  x += base;
  out += base;
  if (delta) {
    delta += base;
    h_out += base;
  }
  float ss = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v = ld(x + i);
    if (delta) {
      const T h = Cvt<T>::from(v + ld(delta + i));
      h_out[i] = h;
      v = Cvt<T>::to(h);
    }
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss) / static_cast<float>(n) + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    // Recomputed rather than read back from h_out (cheaper than a barrier, no aliasing).
    const float v = delta ? round_to<T>(ld(x + i) + ld(delta + i)) : ld(x + i);
    const float normed = v * r;
    out[i] = plus_one ? Cvt<T>::from(normed * (1.f + ld(w + i)))
                      : Cvt<T>::from(ld(w + i) * round_to<T>(normed));
  }
}

// The same for 16-bit types with rows of at most kThreads * V * 8 elements: each thread loads its
// V 16-byte vectors of x, delta and w at once and keeps them in registers, so a row costs one
// memory round trip (the scalar kernel above needs three: x, then x again, then w). Decode runs
// one row per call, where that latency is the whole cost.
template <typename T, int V>
__global__ void __launch_bounds__(128)
    rms_norm_vec_kernel(const T* __restrict__ x, const T* __restrict__ delta,
                        const T* __restrict__ w, T* __restrict__ h_out, T* __restrict__ out, int n,
                        float eps, bool plus_one) {
  pdl_begin();  // pdl.cuh
  constexpr int kVec = 8;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  const int nv = n / kVec;
  alignas(16) T xv[V][kVec], dv[V][kVec], wv[V][kVec];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int v = threadIdx.x + j * blockDim.x;
    if (v < nv) {
      *reinterpret_cast<uint4*>(xv[j]) = reinterpret_cast<const uint4*>(x + base)[v];
      if (delta) *reinterpret_cast<uint4*>(dv[j]) = reinterpret_cast<const uint4*>(delta + base)[v];
      *reinterpret_cast<uint4*>(wv[j]) = reinterpret_cast<const uint4*>(w)[v];
    }
  }
  float ss = 0.f;
  float hv[V][kVec];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int v = threadIdx.x + j * blockDim.x;
    if (v >= nv) continue;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      float h = Cvt<T>::to(xv[j][e]);
      if (delta) {
        const T r = Cvt<T>::from(h + Cvt<T>::to(dv[j][e]));
        xv[j][e] = r;  // now holds h, stored below
        h = Cvt<T>::to(r);
      }
      hv[j][e] = h;
      ss += h * h;
    }
    if (delta) reinterpret_cast<uint4*>(h_out + base)[v] = *reinterpret_cast<const uint4*>(xv[j]);
  }
  const float r = rsqrtf(block_sum(ss) / static_cast<float>(n) + eps);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int v = threadIdx.x + j * blockDim.x;
    if (v >= nv) continue;
    alignas(16) T ov[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float normed = hv[j][e] * r;
      const float wf = Cvt<T>::to(wv[j][e]);
      ov[e] = plus_one ? Cvt<T>::from(normed * (1.f + wf)) : Cvt<T>::from(wf * round_to<T>(normed));
    }
    reinterpret_cast<uint4*>(out + base)[v] = *reinterpret_cast<const uint4*>(ov);
  }
}

int total_heads(const RotaryArgs& a) {
  int h = 0;
  for (int j = 0; j < a.blocks; ++j) h += a.heads[j].H;
  return h;
}

// One thread per pair (i, i + D/2) of one (b, h, t) row, h counted across the launch's blocks of
// heads. HF: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1); each product and
// the sum are rounded to T, as ATen does.
template <typename T>
__global__ void rotary_kernel(const RotaryArgs a, int H) {
  pdl_begin();  // pdl.cuh
  const int half = a.D / 2;
  const int i = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (i >= half || row >= static_cast<int64_t>(a.B) * H * a.T) return;
  const int t = static_cast<int>(row % a.T);
  int h = static_cast<int>((row / a.T) % H);
  const int b = static_cast<int>(row / (static_cast<int64_t>(a.T) * H));
  int j = 0;  // the block of heads h falls in (branches, not an indexed parameter array)
  if (a.blocks > 1 && h >= a.heads[0].H) {
    h -= a.heads[0].H, j = 1;
    if (a.blocks > 2 && h >= a.heads[1].H) h -= a.heads[1].H, j = 2;
  }
  const RotaryHeads s = j == 0 ? a.heads[0] : j == 1 ? a.heads[1] : a.heads[2];
  const T* xr = static_cast<const T*>(s.x) + b * s.x_b + h * s.x_h + t * s.x_t;
  const int64_t slot = (s.at_pos ? *a.pos : 0) + t;
  T* o = static_cast<T*>(s.out) + b * s.o_b + h * s.o_h + slot * s.o_t;
  if (!s.rotate) {
    o[i] = xr[i];
    o[i + half] = xr[i + half];
    return;
  }
  const T* cos_t = static_cast<const T*>(a.cos);
  const T* sin_t = static_cast<const T*>(a.sin);
  const int64_t c_off = b * a.c_b + t * a.c_t;
  const float x1 = ld(xr + i), x2 = ld(xr + i + half);
  const float c1 = ld(cos_t + c_off + i), c2 = ld(cos_t + c_off + i + half);
  const float s1 = ld(sin_t + c_off + i), s2 = ld(sin_t + c_off + i + half);
  // _rn intrinsics: no FMA contraction, so fp32 rounds twice like ATen's separate mul and add.
  o[i] = Cvt<T>::from(__fadd_rn(round_to<T>(__fmul_rn(x1, c1)), round_to<T>(__fmul_rn(-x2, s1))));
  o[i + half] =
      Cvt<T>::from(__fadd_rn(round_to<T>(__fmul_rn(x2, c2)), round_to<T>(__fmul_rn(x1, s2))));
}

// Rows of `cols` elements; gate and up rows start `in_stride` elements apart (both halves of a
// fused gate/up projection output), out is contiguous. 16-byte vectors when every pointer, cols
// and the stride allow it.
template <typename T, bool kGelu>
__global__ void gated_kernel(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ out,
                             int64_t n, int64_t cols, int64_t in_stride, bool vectorised) {
  pdl_begin();  // pdl.cuh
  constexpr int kVec = 16 / sizeof(T);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto src = [&](int64_t i) { return (i / cols) * in_stride + i % cols; };
  if (vectorised) {
    for (int64_t v = tid; v < n / kVec; v += stride) {
      const int64_t s = src(v * kVec);
      alignas(16) T gv[kVec], uv[kVec], ov[kVec];
      *reinterpret_cast<uint4*>(gv) = *reinterpret_cast<const uint4*>(g + s);
      *reinterpret_cast<uint4*>(uv) = *reinterpret_cast<const uint4*>(u + s);
#pragma unroll
      for (int j = 0; j < kVec; ++j) ov[j] = gated_one<T, kGelu>(gv[j], uv[j]);
      reinterpret_cast<uint4*>(out)[v] = *reinterpret_cast<const uint4*>(ov);
    }
    return;
  }
  for (int64_t i = tid; i < n; i += stride) out[i] = gated_one<T, kGelu>(g[src(i)], u[src(i)]);
}

template <typename T, int V>
cudaError_t rms_norm_vec(const NormArgs& a, cudaStream_t st) {
  return launch_pdl(rms_norm_vec_kernel<T, V>, dim3(static_cast<unsigned>(a.rows)), dim3(128), 0,
                    st, static_cast<const T*>(a.x), static_cast<const T*>(a.delta),
                    static_cast<const T*>(a.w), static_cast<T*>(a.h_out), static_cast<T*>(a.out),
                    a.n, a.eps, a.plus_one);
}

template <typename T>
cudaError_t rms_norm_dt(const NormArgs& a, cudaStream_t st) {
  if constexpr (sizeof(T) == 2) {
    if (a.n % 8 == 0 && aligned16(a.x, a.delta, a.w, a.h_out, a.out)) {
      const int vecs_per_thread = (a.n / 8 + 127) / 128;
      if (vecs_per_thread <= 1) return rms_norm_vec<T, 1>(a, st);
      if (vecs_per_thread <= 2) return rms_norm_vec<T, 2>(a, st);
      if (vecs_per_thread <= 4) return rms_norm_vec<T, 4>(a, st);
      if (vecs_per_thread <= 8) return rms_norm_vec<T, 8>(a, st);
    }
  }
  const int threads = a.n >= 2048 ? 512 : a.n >= 512 ? 128 : 64;
  return launch_pdl(rms_norm_kernel<T>, dim3(static_cast<unsigned>(a.rows)), dim3(threads), 0, st,
                    static_cast<const T*>(a.x), static_cast<const T*>(a.delta),
                    static_cast<const T*>(a.w), static_cast<T*>(a.h_out), static_cast<T*>(a.out),
                    a.n, a.eps, a.plus_one);
}

template <typename T>
cudaError_t rotary_dt(const RotaryArgs& a, cudaStream_t st) {
  const int half = a.D / 2;
  const int rows_per_block = half >= 128 ? 2 : 256 / half;
  const int H = total_heads(a);
  const int64_t rows = static_cast<int64_t>(a.B) * H * a.T;
  const dim3 block(static_cast<unsigned>(half), static_cast<unsigned>(rows_per_block));
  const auto grid = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
  return launch_pdl(rotary_kernel<T>, dim3(grid), block, 0, st, a, H);
}

template <typename T>
cudaError_t gated_dt(const GatedArgs& a, cudaStream_t st) {
  constexpr int kThreads = 256;
  constexpr int64_t kVec = 16 / sizeof(T);
  const bool vec = aligned16(a.gate, a.up, a.out) && a.cols % kVec == 0 && a.in_stride % kVec == 0;
  const unsigned blocks = grid_stride_blocks(a.n / (vec ? kVec : 1), kThreads);
  const auto g = static_cast<const T*>(a.gate);
  const auto u = static_cast<const T*>(a.up);
  const auto o = static_cast<T*>(a.out);
  return launch_pdl(a.gelu ? gated_kernel<T, true> : gated_kernel<T, false>, dim3(blocks),
                    dim3(kThreads), 0, st, g, u, o, a.n, a.cols, a.in_stride, vec);
}

}  // namespace

cudaError_t probe_fused_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, rms_norm_kernel<__nv_bfloat16>);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

cudaError_t launch_rms_norm(const NormArgs& a, DType dt, cudaStream_t st) {
  if (a.rows == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto t) { return rms_norm_dt<decltype(t)>(a, st); });
}

cudaError_t launch_rotary(const RotaryArgs& a, DType dt, cudaStream_t st) {
  if (a.blocks < 1 || a.blocks > 3) return cudaErrorInvalidValue;
  if (static_cast<int64_t>(a.B) * total_heads(a) * a.T == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto t) { return rotary_dt<decltype(t)>(a, st); });
}

cudaError_t launch_gated(const GatedArgs& a, DType dt, cudaStream_t st) {
  if (a.n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto t) { return gated_dt<decltype(t)>(a, st); });
}

}  // namespace uniattn::kernels::cuda
