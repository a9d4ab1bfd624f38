// Prefill attention over a padded batch whose rows differ in length (a paged prefill step:
// prompt chunks of several sequences, each after its own context), through the shared-Softmax
// kernels one row at a time instead of SDPA with a [B, 1, T, S] mask. SDPA takes no per-row
// causal offset, and with a mask and GQA it falls back to slower backends; the kernels run each
// row at its exact shape (T_i queries after S_i - T_i keys), through PyTorch's cuDNN attention
// where it computes the same function (kernels/cuda_backend.cpp).
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "shared_softmax.h"

namespace uniattn {

// Row i's real queries are the first query_lens[i] of T and its keys the first key_lens[i] of S;
// query t sits at key position key_lens[i] - query_lens[i] + t (1 <= query_lens[i] <= key_lens[i]).
struct PrefillRows {
  std::vector<int64_t> query_lens, key_lens;
};

// q [B,Hq,T,D], k/v [B,Hkv,S,D]. Returns O [B,Hq,T,D] (q's dtype) and lse [B,Hq,T] fp32, as
// kernels::prefill_leader per row; both are 0 at padding queries. Throws uniattn::Error when the
// lengths do not fit the tensors (and as kernels::prefill_leader does).
std::tuple<at::Tensor, at::Tensor> prefill_leader_rows(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v,
                                                       const kernels::AttnParams& p,
                                                       const PrefillRows& rows);

// kernels::prefill_follower per row with the leader's q, k and lse from prefill_leader_rows;
// v_follower [B,Hkv,S,D]. O is 0 at padding queries.
at::Tensor prefill_follower_rows(const at::Tensor& q_leader, const at::Tensor& k_leader,
                                 const at::Tensor& lse_leader, const at::Tensor& v_follower,
                                 const kernels::AttnParams& p, const PrefillRows& rows);

}  // namespace uniattn
