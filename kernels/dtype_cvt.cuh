// Internal: fp32 conversions of the kernels' storage dtypes (fp32, bf16, fp16), the dispatch on
// them, and the launch arithmetic shared by the .cu files of the small fused ops.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "launch.h"

namespace uniattn::kernels::cuda {

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  static __device__ __forceinline__ float to(float x) { return x; }
  static __device__ __forceinline__ float from(float x) { return x; }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from(float x) { return __float2bfloat16(x); }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from(float x) { return __float2half(x); }
};

template <typename T>
__device__ __forceinline__ float ld(const T* p) {
  return Cvt<T>::to(*p);
}
// What storing x in a T tensor and reading it back gives (an ATen op's output rounding).
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return Cvt<T>::to(Cvt<T>::from(x));
}

// act(gate) rounded to T (ATen's silu/gelu output), times up, rounded. Shared by the gated
// activation kernel (fused_ops.cu) and the gated GEMV (gemv.cu), so the two paths round alike.
template <typename T, bool kGelu>
__device__ __forceinline__ T gated_one(T g, T u) {
  const float x = Cvt<T>::to(g);
  float act;
  if constexpr (kGelu) {
    // ATen's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    constexpr float kBeta = 0.7978845608028654f, kKappa = 0.044715f;
    act = 0.5f * x * (1.f + tanhf(kBeta * (x + kKappa * x * x * x)));
  } else {
    act = x / (1.f + expf(-x));
  }
  return Cvt<T>::from(round_to<T>(act) * Cvt<T>::to(u));
}

// Whether every pointer allows 16-byte vector accesses.
template <typename... P>
bool aligned16(const P*... p) {
  return ((reinterpret_cast<std::uintptr_t>(p) | ...) % 16) == 0;
}

// Blocks of `threads` for a grid-stride loop over `items`: at least 1, at most `cap`.
inline unsigned grid_stride_blocks(int64_t items, int threads, int64_t cap = int64_t{65535} * 8) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > cap ? cap : blocks);
}

// Calls f(T{}) with the storage type T of dt (fp16, bf16, else fp32): the launchers' dtype switch.
template <typename F>
cudaError_t with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kHalf:
      return f(__half{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
    default:
      return f(float{});
  }
}

}  // namespace uniattn::kernels::cuda
