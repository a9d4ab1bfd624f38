// Internal: small PTX wrappers (cp.async, ldmatrix, mma.sync m16n8k16) and dtype helpers shared by
// the attention kernels. sm_80+ instructions; the library is built for sm_90a.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace uniattn::kernels::cuda {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; when !pred the destination is zero-filled and the
// source is not read (it must still be a valid address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Byte offset of 16-byte chunk c of row r in a tile with D 16-bit columns, XOR-swizzled so that
// ldmatrix reads of 8 rows at one chunk hit 8 different bank groups.
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(r * D * 2 + ((c ^ (r & 7)) << 4));
}

// Copies rows [0, ROWS) of a [*, D] tile into shared memory with NT threads, row r from
// row(r) (a source pointer; called for r = 0 in place of rows >= valid, which are zero-filled, so
// row(0) must be a valid address). Rows may sit anywhere: a paged KV cache's consecutive
// positions may be in different blocks.
template <typename T, int ROWS, int D, int NT, typename RowPtr>
__device__ __forceinline__ void load_tile_rows(uint32_t dst, const RowPtr& row, int valid,
                                               int tid) {
  constexpr int kChunks = D / 8;
  static_assert((ROWS * kChunks) % NT == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / NT; ++it) {
    const int i = tid + it * NT;
    const int r = i / kChunks, c = i % kChunks;
    const bool ok = r < valid;
    cp_async16(dst + swz<D>(r, c), row(ok ? r : 0) + c * 8, ok);
  }
}

// load_tile_rows of a contiguous [*, D] tile at src.
template <typename T, int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* src, int valid, int tid) {
  load_tile_rows<T, ROWS, D, NT>(
      dst, [src](int r) { return src + static_cast<int64_t>(r) * D; }, valid, tid);
}

template <typename T>
struct MmaOp;
template <>
struct MmaOp<__half> {
  // c += a (16x16 row-major) * b (16x8 col-major), fp32 accumulators.
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <>
struct MmaOp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// 8 packed 16-bit values (one 16-byte load) <-> floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(h[i]);
}

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Logit transform shared by every kernel so leader and follower agree bit for bit:
// softcap * tanh(x / softcap) with inv_cap = 1 / softcap precomputed (a division per logit and
// tanhf's long sequence halved the prefill speed). tanh.approx.f32 (one MUFU op, relative error
// ~2^-11) is used, as FlashAttention-3 and FlashInfer do; its logit error is below the bf16
// rounding of the logits themselves.
__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float cap_logit(float x, float softcap, float inv_cap) {
  return softcap > 0.f ? softcap * fast_tanh(x * inv_cap) : x;
}

constexpr float kLog2e = 1.4426950408889634f;

// One online-softmax step (leader kernels, prefill and decode) over a tile of BN keys held as
// m16n8 accumulator fragments: s[BN / 8][4] holds this lane's logits of rows row0 (elements 0, 1)
// and row0 + 8 (elements 2, 3). Updates the running row max m_run and per-thread partial sum l_run
// (quad-reduced by the caller at the end), turns s into exp(s - max) and rescales the output
// accumulator o[D / 8][4] by the change of max. A row fully masked so far keeps max -inf without
// producing NaN.
template <int BN, int D>
__device__ __forceinline__ void online_softmax_step(float (&s)[BN / 8][4], float (&m_run)[2],
                                                    float (&l_run)[2], float (&o)[D / 8][4]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * i], s[nt][2 * i + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run[i], mx);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f((m_run[i] - m_use) * kLog2e);
    m_run[i] = m_new;
    const float mb2 = m_use * kLog2e;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      s[nt][2 * i] = exp2f(fmaf(s[nt][2 * i], kLog2e, -mb2));
      s[nt][2 * i + 1] = exp2f(fmaf(s[nt][2 * i + 1], kLog2e, -mb2));
      sum += s[nt][2 * i] + s[nt][2 * i + 1];
    }
    l_run[i] = l_run[i] * alpha + sum;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][2 * i] *= alpha;
      o[dt][2 * i + 1] *= alpha;
    }
  }
}

}  // namespace uniattn::kernels::cuda
