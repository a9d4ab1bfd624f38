// Split-K decode attention for UniAttn (one query per sequence, KV cache of capacity S).
//
// Grid: (split, KV head x sub-group, batch). A CTA takes one chunk of key positions for one KV head
// and a group of its query heads, so every K/V element is read once per KV head group.
// Leader (tensor cores, one warp per CTA, up to 16 heads as MMA rows): Q.K^T -> logits (written
//   raw to p_row), online softmax within the chunk, partial O; leader_combine_kernel merges the
//   splits, writes O and turns p_row into probabilities.
// Follower (SIMT, 4 warps, up to 8 heads; TPK = D/8 threads per key, each owning a 16-byte slice of
//   the head dimension): partial O = p . V per chunk, then follower_combine_kernel sums the splits.
// Lengths are read on the device and clamped to [0, S]; nothing past len_b is read, and p_row is
// written over [0, len_b) only (its entries past len_b are left as they were).
// K and V are read through KvRows: the static cache [B,Hkv,S,D], or a paged pool [slots,Hkv,D]
// through the row's block table (vLLM's PagedAttention layout), one address per key position.
#include <cfloat>
#include <cstdlib>

#include "launch.h"
#include "mma_utils.cuh"
#include "pdl.cuh"

namespace uniattn::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kBK = 64;      // the follower's chunks are multiples of this
constexpr int kLeadBN = 32;  // keys per tile of the leader (and its chunks' multiple)
constexpr int kMaxGroup = 8;

struct Range {
  int lo, hi;  // key positions [lo, hi) this CTA handles
  int len;     // clamped length of the sequence
  int win_lo;  // first position inside the window
};

// Split `split` of a.splits takes an even share of keys [begin, end), rounded up to `align`: the
// split-K partition follows the row's filled length on the device, not the capacity S, so a
// cache holding fewer keys than its capacity (a paged step's table width is the next power of
// two) still keeps every split busy, and the grid still depends on shapes only.
__device__ __forceinline__ void split_share(int begin, int end, int split, int splits, int align,
                                            int& lo, int& hi) {
  int per = (max(end - begin, 0) + splits - 1) / splits;
  per = max((per + align - 1) / align * align, align);
  lo = begin + split * per;
  hi = min(lo + per, end);
}

__device__ __forceinline__ Range chunk_range(const DecodeArgs& a, int split, int b) {
  Range r;
  r.len = min(max(a.seqlens[b], 0), a.S);
  r.win_lo = a.window > 0 ? static_cast<int>(max(static_cast<int64_t>(0), r.len - a.window)) : 0;
  split_share(r.win_lo, r.len, split, a.splits, kLeadBN, r.lo, r.hi);
  return r;
}

// Key position j of one (batch row, KV head) in the K or V cache.
template <typename T>
struct KvRows {
  const T* base;
  const int* table;  // the row's block table; nullptr: static layout
  int64_t stride;    // elements between consecutive positions (within a block)
  int block_size;
  int shift;  // log2(block_size) when it is a power of two (no division per key), else -1
  __device__ KvRows(const DecodeArgs& a, const void* cache, int b, int hk)
      : base(static_cast<const T*>(cache)),
        table(nullptr),
        stride(a.D),
        block_size(a.block_size),
        shift(a.block_shift) {
    if (a.block_table) {  // pool [slots, Hkv, D]
      base += static_cast<int64_t>(hk) * a.D;
      table = a.block_table + static_cast<int64_t>(b) * a.max_blocks;
      stride = static_cast<int64_t>(a.Hkv) * a.D;
    } else {  // [B, Hkv, S, D]
      base += (static_cast<int64_t>(b) * a.Hkv + hk) * a.S * a.D;
    }
  }
  __device__ __forceinline__ const T* operator()(int j) const {
    if (!table) return base + j * stride;
    const int blk = shift >= 0 ? table[j >> shift] : table[j / block_size];
    if (blk < 0) return nullptr;  // given back: only keys outside the window lived there
    const int off = shift >= 0 ? j & (block_size - 1) : j % block_size;
    return base + (static_cast<int64_t>(blk) * block_size + off) * stride;
  }
  // The tile of keys [j0, j0 + n): its row r at rows(j0 + r). A copy, not `this`, so the rows
  // stay in registers.
  __device__ __forceinline__ auto from(int j0) const {
    return [rows = *this, j0](int r) { return rows(j0 + r); };
  }
};

// Copies keys [j0, j0 + min(valid, BN)) of one (row, KV head) into a shared-memory tile, from a
// one-warp CTA (BN == 32: one key per lane). Static layout: addresses by arithmetic. Paged: lane l
// reads the block table once, for key j0 + l, and row r's address is lane r's (a shuffle), so a
// tile costs one table read per lane rather than one per row and 16-byte chunk (which made the
// paged step 1.5x slower than the static one at B=8, S=16K).
template <typename T, int BN, int D>
__device__ __forceinline__ void load_kv_tile(uint32_t dst, const KvRows<T>& kv, int j0, int valid,
                                             int lane) {
  static_assert(BN == 32, "one key per lane");
  if (!kv.table) {
    load_tile_rows<T, BN, D, 32>(dst, kv.from(j0), valid, lane);
    return;
  }
  const auto mine = reinterpret_cast<unsigned long long>(kv(j0 + min(lane, valid - 1)));
  load_tile_rows<T, BN, D, 32>(
      dst, [mine](int r) { return reinterpret_cast<const T*>(__shfl_sync(0xffffffffu, mine, r)); },
      valid, lane);
}

// Sums acc[g][0..8) over the KP key lanes of the CTA through shared memory `red`
// (KP * GT * D floats) and calls store(g, slice, res) once per (g < ng, slice).
template <int D, int GT, typename Store>
__device__ __forceinline__ void reduce_keys(const float (&acc)[GT][8], float* red, int ng,
                                            Store store) {
  constexpr int TPK = D / 8, KP = kThreads / TPK;
  const int tid = threadIdx.x, kq = tid / TPK, sl = tid % TPK;
  __syncthreads();
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    if (g < ng) {
#pragma unroll
      for (int e = 0; e < 8; ++e) red[(kq * GT + g) * D + sl * 8 + e] = acc[g][e];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < ng * TPK; idx += kThreads) {  // GT * TPK may exceed the CTA
    const int g = idx / TPK, s2 = idx % TPK;
    float res[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < KP; ++j) {
#pragma unroll
      for (int e = 0; e < 8; ++e) res[e] += red[(j * GT + g) * D + s2 * 8 + e];
    }
    store(g, s2, res);
  }
}

// Leader on tensor cores: one warp per CTA owns up to 16 query heads of one KV head (the rows of
// an m16n8k16 MMA; rows past the group are zero) and one chunk of keys, streamed in tiles of
// kLeadBN keys through shared memory with cp.async (next K during softmax and P.V, next V during
// the next Q.K^T), the same pipeline as the prefill kernel. Online softmax per row; the raw logits
// go to p_row, the split's (O, max, sum) to the workspace for leader_combine_kernel.
constexpr int kLeadRows = 16;

template <typename T, int D>
__global__ void __launch_bounds__(32) decode_leader_kernel(const DecodeArgs a) {
  using Mma = MmaOp<T>;
  constexpr int BN = kLeadBN;
  pdl_begin();  // pdl.cuh
  __shared__ __align__(128) unsigned char smem[(kLeadRows + 2 * BN) * D * 2];
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + kLeadRows * D * 2;
  const uint32_t sV = sK + BN * D * 2;
  const int lane = threadIdx.x;
  const int split = blockIdx.x, b = blockIdx.z;
  const int G = a.Hq / a.Hkv, nsub = (G + kLeadRows - 1) / kLeadRows;
  const int hk = blockIdx.y / nsub, g0 = (blockIdx.y % nsub) * kLeadRows;
  const int ng = min(kLeadRows, G - g0);
  const int h0 = hk * G + g0;  // first query head of this CTA
  const Range r = chunk_range(a, split, b);
  const float inv_cap = a.softcap > 0.f ? 1.f / a.softcap : 0.f;
  const T* q = static_cast<const T*>(a.q) + (static_cast<int64_t>(b) * a.Hq + h0) * D;
  const KvRows<T> kc(a, a.k, b, hk), vc(a, a.v, b, hk);
  float* prow = a.p_row ? a.p_row + (static_cast<int64_t>(b) * a.Hq + h0) * a.S : nullptr;
  const int row0 = lane / 4;  // this lane's rows: row0 and row0 + 8

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  if (r.lo < r.hi) {
    load_tile<T, kLeadRows, D, 32>(sQ, q, ng, lane);
    load_kv_tile<T, BN, D>(sK, kc, r.lo, r.hi - r.lo, lane);
    cp_async_commit();
    load_kv_tile<T, BN, D>(sV, vc, r.lo, r.hi - r.lo, lane);
    cp_async_commit();
  }
  for (int j0 = r.lo; j0 < r.hi; j0 += BN) {
    cp_async_wait<1>();
    __syncwarp();
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4];
      ldmatrix_x4(qa, sQ + swz<D>(lane % 16, kk * 2 + lane / 16));
#pragma unroll
      for (int nt = 0; nt < BN / 16; ++nt) {
        uint32_t kb[4];
        ldmatrix_x4(kb, sK + swz<D>(nt * 16 + lane % 8 + (lane / 16) * 8, kk * 2 + (lane / 8) % 2));
        Mma::run(s[2 * nt], qa, kb[0], kb[1]);
        Mma::run(s[2 * nt + 1], qa, kb[2], kb[3]);
      }
    }
    __syncwarp();
    if (j0 + BN < r.hi) {
      load_kv_tile<T, BN, D>(sK, kc, j0 + BN, r.hi - j0 - BN, lane);
    }
    cp_async_commit();

#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        const int row = row0 + 8 * (e >> 1);
        float x = cap_logit(s[nt][e] * a.scale, a.softcap, inv_cap);
        if (col >= r.hi) {
          x = -INFINITY;
        } else if (row < ng && prow) {
          prow[static_cast<int64_t>(row) * a.S + col] = x;
        }
        s[nt][e] = x;
      }
    }
    online_softmax_step<BN, D>(s, m_run, l_run, o);
    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      pa[kk][0] = Mma::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = Mma::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = Mma::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = Mma::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
    cp_async_wait<1>();
    __syncwarp();
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
    __syncwarp();
    if (j0 + BN < r.hi) {
      load_kv_tile<T, BN, D>(sV, vc, j0 + BN, r.hi - j0 - BN, lane);
    }
    cp_async_commit();
  }
  cp_async_wait<0>();

  // Partial results of this split: O relative to this split's max, the max and the sum.
  float* ws_o = a.ws;
  float* ws_ml = a.ws + static_cast<int64_t>(a.B) * a.Hq * a.splits * D;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float l = l_run[i];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = row0 + 8 * i;
    if (row >= ng) continue;
    const int64_t slot = (static_cast<int64_t>(b) * a.Hq + h0 + row) * a.splits + split;
    float* dst = ws_o + slot * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      dst[dt * 8 + (lane % 4) * 2] = o[dt][2 * i];
      dst[dt * 8 + (lane % 4) * 2 + 1] = o[dt][2 * i + 1];
    }
    if (lane % 4 == 0) {
      ws_ml[slot * 2] = m_run[i];
      ws_ml[slot * 2 + 1] = l;
    }
  }
}

// Grid (query head, batch, position chunk of kCombineChunk): merges the splits (every CTA
// recomputes the row's lse from the few split statistics; chunk 0 also writes O) and normalises
// its chunk of p_row with 16-byte accesses. Many CTAs: the p_row pass is bandwidth-bound, and one
// CTA per row left it latency-bound (about 1 ms at B=8, S=32K). The grid spans the capacity S (a
// captured graph must not depend on the lengths), but only positions [0, len) are read and
// written: a chunk at or past len returns at once, and p_row past len stays as it was (the
// followers read [0, len) only).
constexpr int kCombineChunk = 1024;
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) leader_combine_kernel(const DecodeArgs a) {
  pdl_begin();  // pdl.cuh
  const int h = blockIdx.x, b = blockIdx.y;
  const int len = min(max(a.seqlens[b], 0), a.S);
  const int j_begin = blockIdx.z * kCombineChunk;
  if (blockIdx.z > 0 && j_begin >= len) return;  // an unfilled chunk: nothing to normalise
  const int64_t bh = static_cast<int64_t>(b) * a.Hq + h;
  const float* ws_o = a.ws + bh * a.splits * D;
  const float* ml = a.ws + static_cast<int64_t>(a.B) * a.Hq * a.splits * D + bh * a.splits * 2;
  float M = -INFINITY;
  for (int s = 0; s < a.splits; ++s) M = fmaxf(M, ml[2 * s]);
  const float Mu = M == -INFINITY ? 0.f : M;
  float L = 0.f;
  for (int s = 0; s < a.splits; ++s) {
    if (ml[2 * s + 1] > 0.f) L += ml[2 * s + 1] * __expf(ml[2 * s] - Mu);
  }
  if (blockIdx.z == 0) {
    const float inv = L > 0.f ? 1.f / L : 0.f;
    for (int d = threadIdx.x; d < D; d += kThreads) {
      float o = 0.f;
      for (int s = 0; s < a.splits; ++s) {
        if (ml[2 * s + 1] > 0.f) {
          o += ws_o[static_cast<int64_t>(s) * D + d] * __expf(ml[2 * s] - Mu);
        }
      }
      static_cast<T*>(a.out)[bh * D + d] = from_float<T>(o * inv);
    }
  }
  if (!a.p_row) return;  // plain attention: no probability row to normalise
  const int win_lo =
      a.window > 0 ? static_cast<int>(max(static_cast<int64_t>(0), len - a.window)) : 0;
  const float lse = L > 0.f ? Mu + __logf(L) : INFINITY;
  float* prow = a.p_row + bh * a.S;
  // Filled positions only; [0, win_lo) was never written by the leader kernel and becomes 0.
  const int j_end = min(j_begin + kCombineChunk, len);
  auto prob = [&](int j, float raw) { return j >= win_lo ? __expf(raw - lse) : 0.f; };
  if ((a.S & 3) == 0 && (reinterpret_cast<uintptr_t>(a.p_row) & 15) == 0) {  // 16-byte rows
#pragma unroll
    for (int it = 0; it < kCombineChunk / (4 * kThreads); ++it) {
      const int j = j_begin + (it * kThreads + threadIdx.x) * 4;
      if (j + 3 < j_end) {
        float4 x = *reinterpret_cast<const float4*>(prow + j);
        x.x = prob(j, x.x);
        x.y = prob(j + 1, x.y);
        x.z = prob(j + 2, x.z);
        x.w = prob(j + 3, x.w);
        *reinterpret_cast<float4*>(prow + j) = x;
      } else {
        for (int t = j; t < j_end; ++t) prow[t] = prob(t, prow[t]);  // the last 1-3 positions
      }
    }
  } else {
    for (int j = j_begin + threadIdx.x; j < j_end; j += kThreads) prow[j] = prob(j, prow[j]);
  }
}

// A step's loads are all issued before its FMAs, and the next step's after them. Issuing the next
// step's loads first (register double buffering, 8 or 4 keys per step) was slower on the H200:
// 8.45 and 8.36 against 8.16 ms per uniattn step at B=8, S=16K, and 8.96 and 8.87 against 8.67 at
// B=32, S=4K; at 8 keys it took 218 registers against 128 (47c4840,
// bench/results/bench-llama8b-h200-47c4840-follower-pipeline.json).
template <typename T, int D, int GT>
__global__ void __launch_bounds__(kThreads) decode_follower_kernel(const DecodeArgs a) {
  pdl_begin();  // pdl.cuh
  constexpr int TPK = D / 8, KP = kThreads / TPK, kUnroll = 8;
  __shared__ __align__(16) float red[KP * GT * D];
  const int split = blockIdx.x, b = blockIdx.z;
  const int G = a.Hq / a.Hkv, nsub = (G + GT - 1) / GT;
  const int hk = blockIdx.y / nsub, g0 = (blockIdx.y % nsub) * GT;
  const int ng = min(GT, G - g0);
  const int h0 = hk * G + g0;
  const int tid = threadIdx.x, kq = tid / TPK, sl = tid % TPK;
  const int len = min(max(a.seqlens[b], 0), a.S);
  int lo, hi;
  split_share(0, len, split, a.splits, kBK, lo, hi);
  const KvRows<T> vc(a, a.v, b, hk);
  const float* prow = a.p_row + (static_cast<int64_t>(b) * a.Hq + h0) * a.S;

  float acc[GT][8];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  }
  // A thread's kUnroll keys are consecutive, so its probabilities of one head arrive as float4s
  // (S % 4 == 0 and an aligned row) rather than one scalar load per key and head.
  const bool p_vec = (a.S & 3) == 0 && (reinterpret_cast<uintptr_t>(a.p_row) & 15) == 0;
  for (int j0 = lo; j0 < hi; j0 += KP * kUnroll) {
    uint4 vu[kUnroll];
    float p[kUnroll][GT];
    const int jt = j0 + kq * kUnroll;  // this thread's first key
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // issue every load first: more bytes in flight
      const int j = jt + u;
      // The follower reads [0, len): a block given back (below the window, where p is 0) is
      // skipped, not read through its -1 entry.
      const T* src = j < hi ? vc(j) : nullptr;
      vu[u] = src ? *reinterpret_cast<const uint4*>(src + sl * 8) : make_uint4(0, 0, 0, 0);
    }
    if (p_vec && jt + kUnroll <= hi) {
#pragma unroll
      for (int g = 0; g < GT; ++g) {
#pragma unroll
        for (int q = 0; q < kUnroll / 4; ++q) {
          const float4 f = g < ng ? *reinterpret_cast<const float4*>(
                                        prow + static_cast<int64_t>(g) * a.S + jt + 4 * q)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
          p[4 * q][g] = f.x;
          p[4 * q + 1][g] = f.y;
          p[4 * q + 2][g] = f.z;
          p[4 * q + 3][g] = f.w;
        }
      }
    } else {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int g = 0; g < GT; ++g)
          p[u][g] = (jt + u < hi && g < ng) ? prow[static_cast<int64_t>(g) * a.S + jt + u] : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[8];
      unpack8<T>(vu[u], vf);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p[u][g], vf[e], acc[g][e]);
      }
    }
  }
  reduce_keys<D, GT>(acc, red, ng, [&](int g, int s2, const float(&res)[8]) {
    const int64_t bh = static_cast<int64_t>(b) * a.Hq + h0 + g;
    if (a.splits == 1) {
      T* dst = static_cast<T*>(a.out) + bh * D + s2 * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = from_float<T>(res[e]);
    } else {
      float* dst = a.ws + (bh * a.splits + split) * D + s2 * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = res[e];
    }
  });
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) follower_combine_kernel(const DecodeArgs a) {
  pdl_begin();  // pdl.cuh
  const int64_t bh = static_cast<int64_t>(blockIdx.y) * a.Hq + blockIdx.x;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float o = 0.f;
    for (int s = 0; s < a.splits; ++s) o += a.ws[(bh * a.splits + s) * D + d];
    static_cast<T*>(a.out)[bh * D + d] = from_float<T>(o);
  }
}

int group_tile(int G) { return G <= 1 ? 1 : (G <= 4 ? 4 : kMaxGroup); }

template <typename T, int D>
cudaError_t launch_leader(const DecodeArgs& a, cudaStream_t st) {
  const int nsub = (a.Hq / a.Hkv + kLeadRows - 1) / kLeadRows;
  const cudaError_t e =
      launch_pdl(decode_leader_kernel<T, D>, dim3(a.splits, a.Hkv * nsub, a.B), dim3(32), 0, st, a);
  if (e != cudaSuccess) return e;
  const int chunks = a.p_row ? (a.S + kCombineChunk - 1) / kCombineChunk : 1;
  return launch_pdl(leader_combine_kernel<T, D>, dim3(a.Hq, a.B, chunks), dim3(kThreads), 0, st, a);
}

template <typename T, int D, int GT>
cudaError_t launch_follower(const DecodeArgs& a, cudaStream_t st) {
  const int nsub = (a.Hq / a.Hkv + GT - 1) / GT;
  const cudaError_t e = launch_pdl(decode_follower_kernel<T, D, GT>,
                                   dim3(a.splits, a.Hkv * nsub, a.B), dim3(kThreads), 0, st, a);
  if (e != cudaSuccess || a.splits == 1) return e;
  return launch_pdl(follower_combine_kernel<T, D>, dim3(a.Hq, a.B), dim3(kThreads), 0, st, a);
}

template <bool kLeader, typename T, int D>
cudaError_t launch_g(const DecodeArgs& a, cudaStream_t st) {
  if constexpr (kLeader) {
    return launch_leader<T, D>(a, st);
  } else {
    switch (group_tile(a.Hq / a.Hkv)) {
      case 1:
        return launch_follower<T, D, 1>(a, st);
      case 4:
        return launch_follower<T, D, 4>(a, st);
      default:
        return launch_follower<T, D, 8>(a, st);
    }
  }
}

template <bool kLeader, typename T>
cudaError_t launch_dt(const DecodeArgs& a, cudaStream_t st) {
  switch (a.D) {
    case 64:
      return launch_g<kLeader, T, 64>(a, st);
    case 128:
      return launch_g<kLeader, T, 128>(a, st);
    case 256:
      return launch_g<kLeader, T, 256>(a, st);
    default:
      return cudaErrorInvalidValue;
  }
}

// CTAs of the bf16 image that fit on one SM (registers, shared memory, threads); fp16's use the
// same resources. Asked once per kernel: every GPU of a process is taken to be of one kind.
template <typename Kernel>
int resident_per_sm(Kernel kernel, int threads) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, 0) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return n > 0 ? n : 1;
}

template <int D>
int resident_ctas(bool leader, int gt) {
  static const int lead = resident_per_sm(decode_leader_kernel<__nv_bfloat16, D>, 32);
  static const int f1 = resident_per_sm(decode_follower_kernel<__nv_bfloat16, D, 1>, kThreads);
  static const int f4 = resident_per_sm(decode_follower_kernel<__nv_bfloat16, D, 4>, kThreads);
  static const int f8 = resident_per_sm(decode_follower_kernel<__nv_bfloat16, D, 8>, kThreads);
  return leader ? lead : (gt == 1 ? f1 : (gt == 4 ? f4 : f8));
}

int resident_ctas(bool leader, int D, int gt) {
  switch (D) {
    case 64:
      return resident_ctas<64>(leader, gt);
    case 128:
      return resident_ctas<128>(leader, gt);
    default:
      return resident_ctas<256>(leader, gt);
  }
}

// Waves of resident CTAs a decode kernel's grid fills: UNIATTN_DECODE_LEADER_WAVES /
// UNIATTN_DECODE_FOLLOWER_WAVES (tuning runs only), else 1: a CTA's chunk then takes as long as
// the whole kernel, and no second wave starts behind the first's slowest CTA. H200, LLaMA-8B:
// the follower at 1, 2, 4, 8 waves gave 8.50, 8.51, 8.71, 8.61 ms per uniattn step at B=8,
// S=16K and 9.05, 9.09, 9.16, 9.17 ms at B=32, S=4K (2271bfb); the leader at 1, 2, 3, 4 waves
// 8.82, 9.31, 9.55, 9.88 ms per none step at B=8, S=16K and 9.47, 9.62, 9.72, 9.89 at B=32
// (ba562e3).
int decode_waves(bool leader) {
  static const int lead = env_int("UNIATTN_DECODE_LEADER_WAVES", 1, 64, 1);
  static const int follow = env_int("UNIATTN_DECODE_FOLLOWER_WAVES", 1, 64, 1);
  return leader ? lead : follow;
}

// Fewest keys per split: UNIATTN_DECODE_{LEADER,FOLLOWER}_MIN_CHUNK (tuning runs only), else 64
// (leader: two tiles) and 256 (follower), which keep the split overhead (workspace, combine)
// small. It binds only short contexts: at B=1, S=512 on the H200 the leader at 64, 128, 256 and
// 1,024 keys gave 4.09, 4.17, 4.29 and 4.91 ms per none step (14039c8).
int64_t min_chunk(bool leader) {
  static const int lead = env_int("UNIATTN_DECODE_LEADER_MIN_CHUNK", 16, 1 << 20, 64);
  static const int follow = env_int("UNIATTN_DECODE_FOLLOWER_MIN_CHUNK", 16, 1 << 20, 256);
  return leader ? lead : follow;
}

}  // namespace

void plan_decode(DecodeArgs& a, int num_sms, bool leader) {
  // Splits are rounded down so that the grid does not spill past the waves of resident CTAs it
  // targets: with splits rounded up, 2,048 follower CTAs at 5 per SM ran 3.1 waves on the H200
  // (B=8, S=16K), the last one a tenth full, and the kernel read V at 3.1 TB/s against the
  // leader's 4.2. (A batch with more CTAs than one wave holds runs unsplit, in several waves.)
  const int G = a.Hq / a.Hkv;
  const int rows = leader ? kLeadRows : group_tile(G);
  const int64_t ctas = static_cast<int64_t>(a.B) * a.Hkv * ((G + rows - 1) / rows);
  const int64_t slots = static_cast<int64_t>(resident_ctas(leader, a.D, group_tile(G))) *
                        decode_waves(leader) * num_sms;
  const int64_t align = leader ? kLeadBN : kBK;
  int64_t splits = slots / ctas;
  const int64_t max_splits =
      (static_cast<int64_t>(a.S) + min_chunk(leader) - 1) / min_chunk(leader);
  splits = splits > max_splits ? max_splits : splits;
  if (splits < 1) splits = 1;
  int64_t chunk = (a.S + splits - 1) / splits;
  chunk = (chunk + align - 1) / align * align;
  if (chunk < align) chunk = align;
  a.chunk = static_cast<int>(chunk);
  a.splits = static_cast<int>((a.S + chunk - 1) / chunk);
  if (a.splits < 1) a.splits = 1;
}

cudaError_t probe_decode_image() {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, decode_leader_kernel<__nv_bfloat16, 128>);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

int64_t decode_workspace_floats(const DecodeArgs& a) {
  return static_cast<int64_t>(a.B) * a.Hq * a.splits * (a.D + 2);
}

cudaError_t launch_decode_leader(const DecodeArgs& a, DType dt, cudaStream_t st) {
  if (a.B == 0 || a.Hq == 0) return cudaSuccess;
  return dt == DType::kHalf ? launch_dt<true, __half>(a, st)
                            : launch_dt<true, __nv_bfloat16>(a, st);
}

cudaError_t launch_decode_follower(const DecodeArgs& a, DType dt, cudaStream_t st) {
  if (a.B == 0 || a.Hq == 0) return cudaSuccess;
  return dt == DType::kHalf ? launch_dt<false, __half>(a, st)
                            : launch_dt<false, __nv_bfloat16>(a, st);
}

}  // namespace uniattn::kernels::cuda
