// Row-wise prefill attention for paged prefill steps: see prefill_rows.h.
#include "prefill_rows.h"

#include "uniattn/error.h"

namespace uniattn {
namespace {

void check_rows(const PrefillRows& r, const at::Tensor& q, const at::Tensor& k) {
  const int64_t b = q.size(0), t = q.size(2), s = k.size(2);
  UNIATTN_CHECK(int64_t(r.query_lens.size()) == b && int64_t(r.key_lens.size()) == b,
                "prefill rows: ", r.query_lens.size(), " query and ", r.key_lens.size(),
                " key lengths for a batch of ", b);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t tq = r.query_lens[size_t(i)], sk = r.key_lens[size_t(i)];
    UNIATTN_CHECK(tq >= 1 && tq <= t && sk >= tq && sk <= s, "prefill rows: row ", i, " has ", tq,
                  " queries and ", sk, " keys; the batch holds ", t, " queries and ", s,
                  " keys per row, and a row needs at least as many keys as queries");
  }
}

// Whether the batch is one row that fills its tensors (then no slicing is needed).
bool full_batch(const PrefillRows& r, const at::Tensor& q, const at::Tensor& k) {
  return q.size(0) == 1 && r.query_lens[0] == q.size(2) && r.key_lens[0] == k.size(2);
}

// Row i's first n entries along the sequence dim: [1, H, n, D] (or [1, H, n] for lse).
at::Tensor row(const at::Tensor& x, int64_t i, int64_t n) {
  return x.narrow(0, i, 1).narrow(2, 0, n);
}

// Calls f(i, queries, keys) for each row i.
template <class F>
void each_row(const PrefillRows& r, F&& f) {
  for (size_t i = 0; i < r.query_lens.size(); ++i) f(int64_t(i), r.query_lens[i], r.key_lens[i]);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> prefill_leader_rows(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v,
                                                       const kernels::AttnParams& p,
                                                       const PrefillRows& rows) {
  check_rows(rows, q, k);
  if (full_batch(rows, q, k)) return kernels::prefill_leader(q, k, v, p);
  auto out = at::zeros_like(q, at::MemoryFormat::Contiguous);
  auto lse = at::zeros({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  each_row(rows, [&](int64_t i, int64_t t, int64_t s) {
    auto [o, l] = kernels::prefill_leader(row(q, i, t), row(k, i, s), row(v, i, s), p);
    row(out, i, t).copy_(o);
    row(lse, i, t).copy_(l);
  });
  return {out, lse};
}

at::Tensor prefill_follower_rows(const at::Tensor& q_leader, const at::Tensor& k_leader,
                                 const at::Tensor& lse_leader, const at::Tensor& v_follower,
                                 const kernels::AttnParams& p, const PrefillRows& rows) {
  check_rows(rows, q_leader, k_leader);
  if (full_batch(rows, q_leader, k_leader))
    return kernels::prefill_follower(q_leader, k_leader, lse_leader, v_follower, p);
  auto out = at::zeros_like(q_leader, at::MemoryFormat::Contiguous);
  each_row(rows, [&](int64_t i, int64_t t, int64_t s) {
    row(out, i, t).copy_(kernels::prefill_follower(
        row(q_leader, i, t), row(k_leader, i, s), row(lse_leader, i, t), row(v_follower, i, s), p));
  });
  return out;
}

}  // namespace uniattn
