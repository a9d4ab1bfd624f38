// One AdamW step over one parameter tensor, with 16-byte loads of the parameter, its gradient and
// both moments (8 bf16/fp16 or 4 fp32 values per load). ATen's fused multi-tensor kernel
// (at::_fused_adamw_) moved the 1.9 G bf16 values of a 4-layer LLaMA-8B slice at about half the
// copy bandwidth of an H200 (13.4 ms per step, bench/results/ncu-train-llama8b-slice-h200.json);
// the update is memory-bound, so the loads are the whole cost.
//
// The arithmetic is ATen's ADAMW mode (aten/src/ATen/native/cuda/fused_adam_utils.cuh), in fp32
// with one rounding of each stored value: g = grad / grad_scale; p *= 1 - lr * wd;
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), bc_i = 1 - b_i^step.
#include <cstdint>

#include "dtype_cvt.cuh"
#include "launch.h"

namespace uniattn::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct AdamWMath {
  float lr, beta1, beta2, lr_wd, eps, step_size, bc2_sqrt;
  const float* grad_scale;

  // g: the gradient in fp32, already divided by the scale.
  __device__ __forceinline__ void update(T& p, float g, T& m, T& v) const {
    float pf = Cvt<T>::to(p);
    float mf = Cvt<T>::to(m), vf = Cvt<T>::to(v);
    pf -= lr_wd * pf;  // as ATen: 1 - lr * wd rounded to fp32 would bias a small decay
    mf = beta1 * mf + (1.f - beta1) * g;
    vf = beta2 * vf + (1.f - beta2) * g * g;
    pf -= step_size * mf / (sqrtf(vf) / bc2_sqrt + eps);
    p = Cvt<T>::from(pf);
    m = Cvt<T>::from(mf);
    v = Cvt<T>::from(vf);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ exp_avg,
                 T* __restrict__ exp_avg_sq, int64_t n, AdamWMath<T> math) {
  constexpr int kVec = 16 / sizeof(T);
  // ATen divides by the scale (1 / scale is exact only for powers of two), so divide likewise.
  const float scale = math.grad_scale ? *math.grad_scale : 1.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t nv = n / kVec;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < nv; i += stride) {
    alignas(16) T p[kVec], g[kVec], m[kVec], v[kVec];
    *reinterpret_cast<uint4*>(p) = reinterpret_cast<const uint4*>(param)[i];
    *reinterpret_cast<uint4*>(g) = reinterpret_cast<const uint4*>(grad)[i];
    *reinterpret_cast<uint4*>(m) = reinterpret_cast<const uint4*>(exp_avg)[i];
    *reinterpret_cast<uint4*>(v) = reinterpret_cast<const uint4*>(exp_avg_sq)[i];
#pragma unroll
    for (int e = 0; e < kVec; ++e) math.update(p[e], Cvt<T>::to(g[e]) / scale, m[e], v[e]);
    reinterpret_cast<uint4*>(param)[i] = *reinterpret_cast<const uint4*>(p);
    reinterpret_cast<uint4*>(exp_avg)[i] = *reinterpret_cast<const uint4*>(m);
    reinterpret_cast<uint4*>(exp_avg_sq)[i] = *reinterpret_cast<const uint4*>(v);
  }
  // The tail (fewer than kVec values) in the first block.
  for (int64_t j = nv * kVec + threadIdx.x; blockIdx.x == 0 && j < n; j += kThreads)
    math.update(param[j], Cvt<T>::to(grad[j]) / scale, exp_avg[j], exp_avg_sq[j]);
}

template <typename T>
cudaError_t adamw_dt(const AdamWArgs& a, int num_sms, cudaStream_t st) {
  const AdamWMath<T> math{a.lr,
                          a.beta1,
                          a.beta2,
                          a.lr * a.weight_decay,
                          a.eps,
                          a.lr / a.bias_correction1,
                          a.bias_correction2_sqrt,
                          a.grad_scale};
  constexpr int kVec = 16 / sizeof(T);
  const unsigned grid = grid_stride_blocks(a.n / kVec, kThreads, int64_t{num_sms} * 8);
  adamw_kernel<T><<<grid, kThreads, 0, st>>>(
      static_cast<T*>(a.param), static_cast<const T*>(a.grad), static_cast<T*>(a.exp_avg),
      static_cast<T*>(a.exp_avg_sq), a.n, math);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_adamw(const AdamWArgs& a, DType dt, int num_sms, cudaStream_t st) {
  if (a.n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto t) { return adamw_dt<decltype(t)>(a, num_sms, st); });
}

}  // namespace uniattn::kernels::cuda
