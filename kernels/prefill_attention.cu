// Causal prefill attention for UniAttn leaders and followers (tensor cores via mma.sync).
//
// One CTA of 4 warps per (q-tile of 64 rows, query head, batch); each warp owns 16 query rows.
// K/V tiles stream through shared memory with cp.async (K of the next tile loads during the
// softmax and P.V of this one, V of the next during the next Q.K^T). Shared tiles use an XOR
// swizzle of the 16-byte chunks so ldmatrix reads are free of bank conflicts.
// Leader: online softmax (running max and sum), writes O and the row log-sum-exp.
// Follower: p = exp(logit - lse_leader) directly; O = sum p v needs no rescaling or division.
#include <cfloat>

#include "launch.h"
#include "mma_utils.cuh"

namespace uniattn::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kBM = 64;

template <typename T, int D, int BN, bool kFollower>
__global__ void __launch_bounds__(kThreads) prefill_kernel(const PrefillArgs a) {
  using Mma = MmaOp<T>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + kBM * D * 2;
  const uint32_t sV = sK + BN * D * 2;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int mb = gridDim.x - 1 - blockIdx.x;  // longest (last) q-tiles first: better tail
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (a.Hq / a.Hkv);
  const int m0 = mb * kBM;
  const int Tq = a.T, Sk = a.S;
  const int64_t off = static_cast<int64_t>(Sk) - Tq;  // query t sits at key position off + t

  const T* q = static_cast<const T*>(a.q) + ((static_cast<int64_t>(b) * a.Hq + h) * Tq + m0) * D;
  const int64_t kv_off = (static_cast<int64_t>(b) * a.Hkv + hk) * Sk * D;
  const T* k = static_cast<const T*>(a.k) + kv_off;
  const T* v = static_cast<const T*>(a.v) + kv_off;

  const float inv_cap = a.softcap > 0.f ? 1.f / a.softcap : 0.f;
  // Key blocks this tile needs: causal upper bound, window lower bound.
  const int64_t q_lo = off + m0;
  const int64_t q_hi = off + min(m0 + kBM, Tq) - 1;
  const int64_t k_lo = a.window > 0 ? max(static_cast<int64_t>(0), q_lo - a.window + 1) : 0;
  const int nb_begin = static_cast<int>(k_lo / BN);
  const int nb_end = static_cast<int>(q_hi / BN) + 1;

  load_tile<T, kBM, D, kThreads>(sQ, q, Tq - m0, tid);
  load_tile<T, BN, D, kThreads>(sK, k + static_cast<int64_t>(nb_begin) * BN * D, Sk - nb_begin * BN,
                                tid);
  cp_async_commit();
  load_tile<T, BN, D, kThreads>(sV, v + static_cast<int64_t>(nb_begin) * BN * D, Sk - nb_begin * BN,
                                tid);
  cp_async_commit();

  const int row0 = m0 + warp * 16 + lane / 4;  // this thread's rows: row0 and row0 + 8
  const int64_t qpos[2] = {off + row0, off + row0 + 8};
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float lse2[2] = {0.f, 0.f};  // follower: leader's lse in log2 units
  if constexpr (kFollower) {
    const float* lse = a.lse_in + (static_cast<int64_t>(b) * a.Hq + h) * Tq;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = row0 + 8 * i;
      lse2[i] = r < Tq ? lse[r] * kLog2e : INFINITY;  // padding rows: p = 0
    }
  }

  for (int nb = nb_begin; nb < nb_end; ++nb) {
    const int n0 = nb * BN;
    cp_async_wait<1>();
    __syncthreads();
    // S = Q K^T for this warp's 16 rows x BN keys.
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4];
      ldmatrix_x4(qa, sQ + swz<D>(warp * 16 + lane % 16, kk * 2 + lane / 16));
#pragma unroll
      for (int nt = 0; nt < BN / 16; ++nt) {
        uint32_t kb[4];
        ldmatrix_x4(kb, sK + swz<D>(nt * 16 + lane % 8 + (lane / 16) * 8, kk * 2 + (lane / 8) % 2));
        Mma::run(s[2 * nt], qa, kb[0], kb[1]);
        Mma::run(s[2 * nt + 1], qa, kb[2], kb[3]);
      }
    }
    __syncthreads();  // every warp is done with sK
    if (nb + 1 < nb_end) {
      load_tile<T, BN, D, kThreads>(sK, k + static_cast<int64_t>(n0 + BN) * D, Sk - n0 - BN, tid);
    }
    cp_async_commit();

    // Scale, soft-cap, mask.
    const bool need_mask = (n0 + BN - 1 > q_lo) || (a.window > 0 && n0 <= q_hi - a.window);
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = cap_logit(s[nt][e] * a.scale, a.softcap, inv_cap);
        if (need_mask) {
          const int64_t col = n0 + nt * 8 + (lane % 4) * 2 + (e & 1);
          const int64_t qp = qpos[e >> 1];
          if (col > qp || (a.window > 0 && col <= qp - a.window)) x = -INFINITY;
        }
        s[nt][e] = x;
      }
    }

    if constexpr (!kFollower) {
      online_softmax_step<BN, D>(s, m_run, l_run, o);
    } else {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = exp2f(fmaf(s[nt][e], kLog2e, -lse2[e >> 1]));
      }
    }

    // P as A fragments (16 rows x 16 keys per k-step).
    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pa[kk][0] = Mma::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = Mma::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = Mma::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = Mma::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
    cp_async_wait<1>();  // V of this block (the next K may still be in flight)
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
#pragma unroll
      for (int dt = 0; dt < D / 16; ++dt) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, sV + swz<D>(kk * 16 + lane % 16, dt * 2 + lane / 16));
        Mma::run(o[2 * dt], pa[kk], vb[0], vb[1]);
        Mma::run(o[2 * dt + 1], pa[kk], vb[2], vb[3]);
      }
    }
    __syncthreads();  // every warp is done with sV
    if (nb + 1 < nb_end) {
      load_tile<T, BN, D, kThreads>(sV, v + static_cast<int64_t>(n0 + BN) * D, Sk - n0 - BN, tid);
    }
    cp_async_commit();
  }
  cp_async_wait<0>();

  float inv[2] = {1.f, 1.f};
  if constexpr (!kFollower) {
    float* lse = a.lse_out + (static_cast<int64_t>(b) * a.Hq + h) * Tq;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float l = l_run[i];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[i] = l > 0.f ? 1.f / l : 0.f;
      const int r = row0 + 8 * i;
      if (lane % 4 == 0 && r < Tq) lse[r] = l > 0.f ? m_run[i] + logf(l) : -INFINITY;
    }
  }
  T* out = static_cast<T*>(a.out) + ((static_cast<int64_t>(b) * a.Hq + h) * Tq) * D;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = row0 + 8 * i;
    if (r >= Tq) continue;
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(r) * D);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      dst[dt * 4 + lane % 4] = Mma::pack(o[dt][2 * i] * inv[i], o[dt][2 * i + 1] * inv[i]);
    }
  }
}

template <typename T, int D, bool kFollower>
cudaError_t launch_typed(const PrefillArgs& a, cudaStream_t stream) {
  constexpr int BN = D >= 256 ? 32 : 64;
  constexpr int kSmem = (kBM + 2 * BN) * D * 2;
  auto kernel = prefill_kernel<T, D, BN, kFollower>;
  // Set on every launch: the attribute is per device, and the call is cheap and graph-safe.
  const cudaError_t attr_err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (attr_err != cudaSuccess) return attr_err;
  const dim3 grid((a.T + kBM - 1) / kBM, a.Hq, a.B);
  kernel<<<grid, kThreads, kSmem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, bool kFollower>
cudaError_t launch_d(const PrefillArgs& a, cudaStream_t stream) {
  switch (a.D) {
    case 64:
      return launch_typed<T, 64, kFollower>(a, stream);
    case 128:
      return launch_typed<T, 128, kFollower>(a, stream);
    case 256:
      return launch_typed<T, 256, kFollower>(a, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t probe_prefill_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, prefill_kernel<__nv_bfloat16, 128, 64, false>);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

cudaError_t launch_prefill(const PrefillArgs& a, DType dt, cudaStream_t stream) {
  if (a.T == 0 || a.B == 0 || a.Hq == 0) return cudaSuccess;
  const bool follower = a.lse_in != nullptr;
  if (dt == DType::kHalf) {
    return follower ? launch_d<__half, true>(a, stream) : launch_d<__half, false>(a, stream);
  }
  return follower ? launch_d<__nv_bfloat16, true>(a, stream)
                  : launch_d<__nv_bfloat16, false>(a, stream);
}

}  // namespace uniattn::kernels::cuda
