// Decode attention over either cache layout (shared_softmax.h's DecodeKv): the static layout goes
// to the tensor entry points of dispatch.cpp; the paged layout (vLLM's PagedAttention: pools of
// fixed-size blocks and per-row block tables) runs the same CUDA kernels with the block table
// (kernels/decode_attention.cu's KvRows), or gathers each row's keys for the ATen fallback.
#include <ATen/ATen.h>

#include <string>

#include "cuda_hooks.h"
#include "shared_softmax.h"
#include "uniattn/error.h"

namespace uniattn::kernels {

int64_t DecodeKv::capacity() const {
  return paged() ? block_tables.size(1) * block_size : v.size(2);
}
int64_t DecodeKv::batch() const { return paged() ? block_tables.size(0) : v.size(0); }

namespace {

using detail::shape_str;

void check_pool(const char* fn, const char* name, const at::Tensor& pool, const DecodeKv& kv) {
  UNIATTN_CHECK(pool.defined() && pool.dim() == 3, fn, ": paged '", name,
                "' must be a pool [slots, kv_heads, head_dim], got ", shape_str(pool));
  UNIATTN_CHECK(pool.size(0) >= kv.block_size, fn, ": paged '", name, "' holds ", pool.size(0),
                " slots, less than one block of ", kv.block_size);
  UNIATTN_CHECK(pool.device() == kv.block_tables.device(), fn, ": '", name, "' is on ",
                pool.device(), " but 'block_tables' on ", kv.block_tables.device());
  UNIATTN_CHECK(pool.is_contiguous(), fn, ": paged '", name, "' must be contiguous");
}

// The paged layout's invariants: block size, block tables, the pools (k when need_k).
void check_paged(const char* fn, const DecodeKv& kv, bool need_k) {
  UNIATTN_CHECK(kv.block_size >= 1, fn, ": block_size must be >= 1, got ", kv.block_size);
  const auto& bt = kv.block_tables;
  UNIATTN_CHECK(bt.dim() == 2 && bt.scalar_type() == at::kInt, fn,
                ": 'block_tables' must be int32 [batch, max_blocks], got ", bt.scalar_type(), " ",
                shape_str(bt));
  check_pool(fn, "v", kv.v, kv);
  if (!need_k) return;
  check_pool(fn, "k", kv.k, kv);
  UNIATTN_CHECK(kv.k.sizes() == kv.v.sizes() && kv.k.scalar_type() == kv.v.scalar_type(), fn,
                ": paged 'k' ", shape_str(kv.k), " and 'v' ", shape_str(kv.v),
                " must match in shape and dtype");
}

// q [B, Hq, 1, D] against the paged pools.
void check_query(const char* fn, const at::Tensor& q, const DecodeKv& kv) {
  UNIATTN_CHECK(q.defined() && q.dim() == 4 && q.size(2) == 1 && q.size(0) == kv.batch() &&
                    q.size(3) == kv.v.size(2),
                fn, ": 'q' must be [", kv.batch(), ", heads, 1, ", kv.v.size(2), "], got ",
                shape_str(q));
  UNIATTN_CHECK(q.size(1) % kv.v.size(1) == 0, fn, ": ", q.size(1),
                " query heads are not a multiple of ", kv.v.size(1), " KV heads");
  UNIATTN_CHECK(q.scalar_type() == kv.v.scalar_type() && q.device() == kv.v.device(), fn, ": 'q' (",
                q.scalar_type(), " on ", q.device(), ") must match the pools (", kv.v.scalar_type(),
                " on ", kv.v.device(), ")");
}

// The CUDA kernels take the paged layout where they take the static one, with int32 lengths and
// block tables on the pools' device.
bool kernel_takes(KernelOp op, const at::Tensor& pool, const at::Tensor& lens) {
  return detail::hook_ready(op, pool.unsqueeze(0)) && lens.scalar_type() == at::kInt &&
         lens.dim() == 1 && lens.device() == pool.device();
}

std::tuple<at::Tensor, at::Tensor> paged_leader(const char* fn, const at::Tensor& q,
                                                const DecodeKv& kv, const at::Tensor& lens,
                                                const AttnParams& p, bool want_p_row) {
  check_paged(fn, kv, true);
  check_query(fn, q, kv);
  detail::check_params(fn, p);
  UNIATTN_CHECK(lens.defined() && lens.dim() == 1 && lens.size(0) == kv.batch(), fn,
                ": 'cache_seqlens' must be [", kv.batch(), "], got ", shape_str(lens));
  if (!kernel_takes(KernelOp::DecodeLeader, kv.v, lens))
    return decode_leader_fallback(q, gather_paged(kv.k, kv), gather_paged(kv.v, kv), lens, p);
  auto out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor p_row;  // undefined: the kernel skips the probability row
  if (want_p_row)
    p_row = at::empty({q.size(0), q.size(1), kv.capacity()}, q.options().dtype(at::kFloat));
  const auto bt = kv.block_tables.contiguous();
  detail::cuda_hooks().decode_leader(detail::prep(q), kv.k, kv.v, lens.contiguous(), p, out, p_row,
                                     &bt, kv.block_size);
  return {out, p_row};
}

}  // namespace

at::Tensor gather_paged(const at::Tensor& pool, const DecodeKv& kv) {
  check_paged("gather_paged", kv, false);
  check_pool("gather_paged", "pool", pool, kv);
  const int64_t b = kv.batch(), m = kv.block_tables.size(1), bs = kv.block_size;
  const int64_t s = m * bs, blocks = pool.size(0) / bs;
  auto table = kv.block_tables.to(at::kLong);
  auto given = ((table >= 0) & (table < blocks)).repeat_interleave(bs, 1);  // [B, S]
  auto slots = table.clamp(0, blocks - 1).unsqueeze(2) * bs + at::arange(bs, table.options());
  auto rows = pool.index_select(0, slots.reshape({b * s})).view({b, s, pool.size(1), pool.size(2)});
  rows = at::where(given.view({b, s, 1, 1}), rows, at::zeros({}, rows.options()));
  return rows.transpose(1, 2).contiguous();
}

std::tuple<at::Tensor, at::Tensor> decode_leader(const at::Tensor& q, const DecodeKv& kv,
                                                 const at::Tensor& cache_seqlens,
                                                 const AttnParams& p) {
  if (!kv.paged()) return decode_leader(q, kv.k, kv.v, cache_seqlens, p);
  return paged_leader("decode_leader", q, kv, cache_seqlens, p, true);
}

at::Tensor decode_attention(const at::Tensor& q, const DecodeKv& kv,
                            const at::Tensor& cache_seqlens, const AttnParams& p) {
  if (!kv.paged()) return decode_attention(q, kv.k, kv.v, cache_seqlens, p);
  return std::get<0>(paged_leader("decode_attention", q, kv, cache_seqlens, p, false));
}

at::Tensor decode_follower(const at::Tensor& p_row, const DecodeKv& kv,
                           const at::Tensor& cache_seqlens, int64_t num_q_heads) {
  if (!kv.paged()) return decode_follower(p_row, kv.v, cache_seqlens, num_q_heads);
  const char* fn = "decode_follower";
  check_paged(fn, kv, false);
  const int64_t b = kv.batch();
  UNIATTN_CHECK(num_q_heads > 0 && num_q_heads % kv.v.size(1) == 0, fn, ": ", num_q_heads,
                " query heads are not a multiple of ", kv.v.size(1), " KV heads");
  UNIATTN_CHECK(p_row.defined() && p_row.dim() == 3 && p_row.size(0) == b &&
                    p_row.size(1) == num_q_heads && p_row.size(2) == kv.capacity(),
                fn, ": 'p_row' must be [", b, ", ", num_q_heads, ", ", kv.capacity(), "], got ",
                shape_str(p_row));
  UNIATTN_CHECK(cache_seqlens.defined() && cache_seqlens.dim() == 1 && cache_seqlens.size(0) == b,
                fn, ": 'cache_seqlens' must be [", b, "], got ", shape_str(cache_seqlens));
  if (!(kernel_takes(KernelOp::DecodeFollower, kv.v, cache_seqlens) &&
        p_row.scalar_type() == at::kFloat && p_row.device() == kv.v.device()))
    return decode_follower_fallback(p_row, gather_paged(kv.v, kv), cache_seqlens, num_q_heads);
  auto out = at::empty({b, num_q_heads, 1, kv.v.size(2)}, kv.v.options());
  const auto bt = kv.block_tables.contiguous();
  detail::cuda_hooks().decode_follower(p_row.contiguous(), kv.v, cache_seqlens.contiguous(), out,
                                       &bt, kv.block_size);
  return out;
}

}  // namespace uniattn::kernels
