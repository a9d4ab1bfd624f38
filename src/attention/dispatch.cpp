// Dispatching entry points of shared_softmax.h and their ATen fallbacks.
//
// This file is compiled in every build (CPU-only too), so it holds no CUDA code and no build
// macro: the CUDA kernels register themselves in cuda_hooks() when they are linked in.
// The fallbacks materialise the logits and compute in fp32 (fp64 for fp64 inputs); they are the
// readable statement of the math the kernels implement.
#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "cuda_hooks.h"
#include "shared_softmax.h"
#include "uniattn/error.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn::kernels {
namespace detail {
CudaHooks& cuda_hooks() {
  static CudaHooks hooks;
  return hooks;
}
std::string shape_str(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "," : "") + std::to_string(t.size(i));
  return s + "]";
}
}  // namespace detail

namespace {

using detail::shape_str;

void check_float_4d(const char* fn, const char* name, const at::Tensor& t) {
  UNIATTN_CHECK(t.defined(), fn, ": tensor '", name, "' is undefined");
  UNIATTN_CHECK(t.dim() == 4, fn, ": tensor '", name,
                "' must be 4-D [batch, heads, seq, head_dim], got ", shape_str(t));
  UNIATTN_CHECK(at::isFloatingType(t.scalar_type()), fn, ": tensor '", name,
                "' must have a floating dtype, got ", t.scalar_type());
}

void check_same(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& ref,
                const char* ref_name) {
  UNIATTN_CHECK(t.device() == ref.device(), fn, ": tensor '", name, "' is on ", t.device(),
                " but '", ref_name, "' is on ", ref.device());
  UNIATTN_CHECK(t.scalar_type() == ref.scalar_type(), fn, ": tensor '", name, "' has dtype ",
                t.scalar_type(), " but '", ref_name, "' has ", ref.scalar_type());
}

// Checks q [B,Hq,T,D] against k/v [B,Hkv,S,D] (S >= T, Hq % Hkv == 0).
void check_prefill(const char* fn, const at::Tensor& q, const char* qn, const at::Tensor& k,
                   const char* kn, const at::Tensor& v, const char* vn, const AttnParams& p) {
  check_float_4d(fn, qn, q);
  check_float_4d(fn, kn, k);
  check_float_4d(fn, vn, v);
  check_same(fn, kn, k, q, qn);
  check_same(fn, vn, v, q, qn);
  UNIATTN_CHECK(k.sizes() == v.sizes(), fn, ": '", kn, "' ", shape_str(k), " and '", vn, "' ",
                shape_str(v), " must have the same shape");
  UNIATTN_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3), fn, ": '", kn, "' ", shape_str(k),
                " does not match '", qn, "' ", shape_str(q), " in batch or head_dim");
  UNIATTN_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, fn, ": ", q.size(1),
                " query heads are not a multiple of ", k.size(1), " KV heads");
  UNIATTN_CHECK(k.size(2) >= q.size(2), fn, ": key length ", k.size(2),
                " is shorter than query length ", q.size(2), " (queries are the last positions)");
  detail::check_params(fn, p);
}

void check_lse(const char* fn, const at::Tensor& lse, const at::Tensor& q) {
  UNIATTN_CHECK(lse.defined() && lse.dim() == 3 && lse.size(0) == q.size(0) &&
                    lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
                fn, ": tensor 'lse_leader' must be [B,Hq,T] = [", q.size(0), ",", q.size(1), ",",
                q.size(2), "], got ", shape_str(lse));
  UNIATTN_CHECK(lse.scalar_type() == at::kFloat, fn, ": 'lse_leader' must be fp32, got ",
                lse.scalar_type());
  UNIATTN_CHECK(lse.device() == q.device(), fn, ": 'lse_leader' is on ", lse.device(),
                " but 'q_leader' is on ", q.device());
}

void check_seqlens(const char* fn, const at::Tensor& lens, int64_t batch, const at::Device& dev,
                   bool need_int32) {
  UNIATTN_CHECK(lens.defined() && lens.dim() == 1 && lens.size(0) == batch, fn,
                ": tensor 'cache_seqlens' must be 1-D [", batch, "], got ", shape_str(lens));
  UNIATTN_CHECK(at::isIntegralType(lens.scalar_type(), /*includeBool=*/false), fn,
                ": 'cache_seqlens' must be an integer tensor, got ", lens.scalar_type());
  if (need_int32) {
    UNIATTN_CHECK(lens.scalar_type() == at::kInt, fn,
                  ": 'cache_seqlens' must be int32 for the CUDA "
                  "kernel, got ",
                  lens.scalar_type());
    UNIATTN_CHECK(lens.device() == dev, fn, ": 'cache_seqlens' must be on ", dev, ", got ",
                  lens.device());
  }
}

void check_decode_leader(const char* fn, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const AttnParams& p) {
  check_prefill(fn, q, "q", k, "k_cache", v, "v_cache", p);
  UNIATTN_CHECK(q.size(2) == 1, fn, ": 'q' must hold one query per sequence [B,Hq,1,D], got ",
                shape_str(q));
}

void check_decode_follower(const char* fn, const at::Tensor& p_row, const at::Tensor& v,
                           int64_t num_q_heads) {
  check_float_4d(fn, "v_cache", v);
  UNIATTN_CHECK(num_q_heads > 0 && v.size(1) > 0 && num_q_heads % v.size(1) == 0, fn, ": ",
                num_q_heads, " query heads are not a multiple of ", v.size(1), " KV heads");
  UNIATTN_CHECK(p_row.defined() && p_row.dim() == 3 && p_row.size(0) == v.size(0) &&
                    p_row.size(1) == num_q_heads && p_row.size(2) == v.size(2),
                fn, ": tensor 'p_row' must be [B,Hq,S_max] = [", v.size(0), ",", num_q_heads, ",",
                v.size(2), "], got ", shape_str(p_row));
  UNIATTN_CHECK(at::isFloatingType(p_row.scalar_type()), fn, ": 'p_row' must be floating, got ",
                p_row.scalar_type());
  UNIATTN_CHECK(p_row.device() == v.device(), fn, ": 'p_row' is on ", p_row.device(),
                " but 'v_cache' is on ", v.device());
}

void check_out(const char* fn, const char* name, const at::Tensor& t, at::IntArrayRef sizes,
               at::ScalarType dtype, const at::Device& dev) {
  UNIATTN_CHECK(t.defined() && t.sizes() == sizes && t.scalar_type() == dtype &&
                    t.device() == dev && t.is_contiguous(),
                fn, ": output '", name, "' must be a contiguous ", dtype, " tensor of shape ",
                sizes, " on ", dev);
}

// Math precision of the fallbacks: fp64 when an input is fp64, fp32 otherwise.
at::ScalarType math_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Scaled, soft-capped logits [B,Hkv,G,Tq,S] of q [B,Hq,Tq,D] against k [B,Hkv,S,D].
at::Tensor grouped_logits(const at::Tensor& q, const at::Tensor& k, const AttnParams& p) {
  const auto ct = math_type(q);
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  auto q5 = q.to(ct).reshape({B, Hkv, Hq / Hkv, T, D});
  auto k5 = k.to(ct).reshape({B, Hkv, 1, S, D});
  auto logits = at::matmul(q5, k5.transpose(-1, -2)) * static_cast<double>(p.scale);
  if (p.softcap > 0.f) {
    logits = at::tanh(logits / static_cast<double>(p.softcap)) * static_cast<double>(p.softcap);
  }
  return logits;
}

// Causal (+ window) mask [T,S] for queries at positions S-T .. S-1.
at::Tensor prefill_allowed(int64_t T, int64_t S, int64_t window, const at::Device& dev) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(dev);
  auto qpos = (at::arange(T, opts) + (S - T)).unsqueeze(1);
  auto kpos = at::arange(S, opts).unsqueeze(0);
  auto allowed = kpos <= qpos;
  if (window > 0) allowed = allowed.logical_and(kpos > qpos - window);
  return allowed;
}

// Valid keys [B,1,1,1,S] of a decode step: j < len_b, and inside the window when there is one.
at::Tensor decode_allowed(const at::Tensor& lens, int64_t S, int64_t window, const at::Device& dev,
                          bool with_window) {
  const int64_t B = lens.size(0);
  auto len = lens.to(dev, at::kLong).clamp(0, S).reshape({B, 1, 1, 1, 1});
  auto kpos =
      at::arange(S, at::TensorOptions().dtype(at::kLong).device(dev)).reshape({1, 1, 1, 1, S});
  auto allowed = kpos < len;
  if (with_window && window > 0) allowed = allowed.logical_and(kpos > len - 1 - window);
  return allowed;
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

}  // namespace

namespace detail {
void check_params(const char* fn, const AttnParams& p) {
  UNIATTN_CHECK(std::isfinite(p.scale), fn, ": scale must be finite, got ", p.scale);
  UNIATTN_CHECK(std::isfinite(p.softcap) && p.softcap >= 0.f, fn,
                ": softcap must be >= 0 (0 = off), got ", p.softcap);
  UNIATTN_CHECK(p.window >= 0, fn, ": window must be >= 0 (0 = unlimited), got ", p.window);
}

bool hook_ready(KernelOp op, const at::Tensor& t) {
  return cuda_kernel_supports(t) && kernel_enabled(op, t.device());
}

at::Tensor prep(const at::Tensor& t) {
  auto c = t.contiguous();
  if (reinterpret_cast<std::uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}
}  // namespace detail

using detail::hook_ready;
using detail::prep;

std::string prefill_library_status() {
  auto f = detail::cuda_hooks().library_status;
  return f ? f() : std::string();
}

bool cuda_kernels_available() { return detail::cuda_hooks().prefill != nullptr; }

bool cuda_kernel_supports(const at::Tensor& t) {
  if (!cuda_kernels_available() || !t.defined() || !t.is_cuda() || t.dim() != 4) return false;
  const auto dt = t.scalar_type();
  const int64_t d = t.size(3);
  return (dt == at::kHalf || dt == at::kBFloat16) && (d == 64 || d == 128 || d == 256);
}

// ---- fallbacks ---------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> prefill_leader_fallback(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const AttnParams& p) {
  check_prefill("prefill_leader", q, "q", k, "k", v, "v", p);
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  auto logits = grouped_logits(q, k, p);
  logits = logits.masked_fill(prefill_allowed(T, S, p.window, q.device()).logical_not(), kNegInf);
  auto lse = at::logsumexp(logits, {-1}, /*keepdim=*/true);
  auto probs = at::exp(logits - lse);
  auto out = at::matmul(probs, v.to(math_type(q)).reshape({B, Hkv, 1, S, D}));
  return {out.reshape({B, Hq, T, D}).to(q.scalar_type()), lse.reshape({B, Hq, T}).to(at::kFloat)};
}

at::Tensor prefill_follower_fallback(const at::Tensor& q_leader, const at::Tensor& k_leader,
                                     const at::Tensor& lse_leader, const at::Tensor& v_follower,
                                     const AttnParams& p) {
  check_prefill("prefill_follower", q_leader, "q_leader", k_leader, "k_leader", v_follower,
                "v_follower", p);
  check_lse("prefill_follower", lse_leader, q_leader);
  const auto& q = q_leader;
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k_leader.size(1), S = k_leader.size(2);
  auto logits = grouped_logits(q, k_leader, p);
  logits = logits.masked_fill(prefill_allowed(T, S, p.window, q.device()).logical_not(), kNegInf);
  auto lse = lse_leader.to(math_type(q)).reshape({B, Hkv, Hq / Hkv, T, 1});
  auto probs = at::exp(logits - lse);
  auto out = at::matmul(probs, v_follower.to(math_type(q)).reshape({B, Hkv, 1, S, D}));
  return out.reshape({B, Hq, T, D}).to(q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> decode_leader_fallback(const at::Tensor& q,
                                                          const at::Tensor& k_cache,
                                                          const at::Tensor& v_cache,
                                                          const at::Tensor& cache_seqlens,
                                                          const AttnParams& p) {
  check_decode_leader("decode_leader", q, k_cache, v_cache, p);
  check_seqlens("decode_leader", cache_seqlens, q.size(0), q.device(), false);
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  const int64_t Hkv = k_cache.size(1), S = k_cache.size(2);
  const auto ct = math_type(q);
  auto allowed = decode_allowed(cache_seqlens, S, p.window, q.device(), true);  // [B,1,1,1,S]
  auto logits = grouped_logits(q, k_cache, p).masked_fill(allowed.logical_not(), kNegInf);
  auto lse = at::logsumexp(logits, {-1}, /*keepdim=*/true);
  // Rows with no valid key (length 0) have lse = -inf; they get p = 0 instead of NaN.
  auto probs = at::where(allowed, at::exp(logits - lse), at::zeros({}, logits.options()));
  // Cache slots past len_b may hold anything (NaN included): they must not reach the product.
  auto in_len = decode_allowed(cache_seqlens, S, 0, q.device(), false).reshape({B, 1, 1, S, 1});
  auto v5 =
      at::where(in_len, v_cache.to(ct).reshape({B, Hkv, 1, S, D}), at::zeros({}, logits.options()));
  auto out = at::matmul(probs, v5);
  return {out.reshape({B, Hq, 1, D}).to(q.scalar_type()), probs.reshape({B, Hq, S}).to(at::kFloat)};
}

at::Tensor decode_follower_fallback(const at::Tensor& p_row, const at::Tensor& v_cache,
                                    const at::Tensor& cache_seqlens, int64_t num_q_heads) {
  check_decode_follower("decode_follower", p_row, v_cache, num_q_heads);
  check_seqlens("decode_follower", cache_seqlens, v_cache.size(0), v_cache.device(), false);
  const int64_t B = v_cache.size(0), Hkv = v_cache.size(1), S = v_cache.size(2);
  const int64_t D = v_cache.size(3), Hq = num_q_heads;
  const auto ct = math_type(v_cache);
  auto in_len = decode_allowed(cache_seqlens, S, 0, v_cache.device(), false);  // [B,1,1,1,S]
  auto zero = at::zeros({}, at::TensorOptions().dtype(ct).device(v_cache.device()));
  auto p5 = at::where(in_len, p_row.to(ct).reshape({B, Hkv, Hq / Hkv, 1, S}), zero);
  auto v5 =
      at::where(in_len.reshape({B, 1, 1, S, 1}), v_cache.to(ct).reshape({B, Hkv, 1, S, D}), zero);
  return at::matmul(p5, v5).reshape({B, Hq, 1, D}).to(v_cache.scalar_type());
}

// ---- dispatch ----------------------------------------------------------------------------------

namespace {

std::tuple<at::Tensor, at::Tensor> leader_dispatch(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const AttnParams& p,
                                                   bool allow_library) {
  check_prefill("prefill_leader", q, "q", k, "k", v, "v", p);
  if (!hook_ready(KernelOp::PrefillAttention, q)) return prefill_leader_fallback(q, k, v, p);
  auto qc = prep(q), kc = prep(k), vc = prep(v);
  auto out = at::empty_like(qc);
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  detail::cuda_hooks().prefill(qc, kc, vc, nullptr, p, allow_library, out, &lse);
  return {out, lse};
}

at::Tensor follower_dispatch(const at::Tensor& q_leader, const at::Tensor& k_leader,
                             const at::Tensor& lse_leader, const at::Tensor& v_follower,
                             const AttnParams& p, bool allow_library) {
  check_prefill("prefill_follower", q_leader, "q_leader", k_leader, "k_leader", v_follower,
                "v_follower", p);
  check_lse("prefill_follower", lse_leader, q_leader);
  if (!hook_ready(KernelOp::PrefillAttention, q_leader)) {
    return prefill_follower_fallback(q_leader, k_leader, lse_leader, v_follower, p);
  }
  auto qc = prep(q_leader), kc = prep(k_leader), vc = prep(v_follower);
  auto lc = lse_leader.contiguous();
  auto out = at::empty_like(qc);
  detail::cuda_hooks().prefill(qc, kc, vc, &lc, p, allow_library, out, nullptr);
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> prefill_leader(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const AttnParams& p) {
  return leader_dispatch(q, k, v, p, true);
}
std::tuple<at::Tensor, at::Tensor> prefill_leader_custom(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const AttnParams& p) {
  return leader_dispatch(q, k, v, p, false);
}
at::Tensor prefill_follower(const at::Tensor& q_leader, const at::Tensor& k_leader,
                            const at::Tensor& lse_leader, const at::Tensor& v_follower,
                            const AttnParams& p) {
  return follower_dispatch(q_leader, k_leader, lse_leader, v_follower, p, true);
}
at::Tensor prefill_follower_custom(const at::Tensor& q_leader, const at::Tensor& k_leader,
                                   const at::Tensor& lse_leader, const at::Tensor& v_follower,
                                   const AttnParams& p) {
  return follower_dispatch(q_leader, k_leader, lse_leader, v_follower, p, false);
}

void decode_leader_out(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& cache_seqlens, const AttnParams& p, at::Tensor& out,
                       at::Tensor& p_row) {
  check_decode_leader("decode_leader", q, k_cache, v_cache, p);
  const bool cuda = hook_ready(KernelOp::DecodeLeader, q);
  check_seqlens("decode_leader", cache_seqlens, q.size(0), q.device(), cuda);
  check_out("decode_leader", "out", out, q.sizes(), q.scalar_type(), q.device());
  check_out("decode_leader", "p_row", p_row, {q.size(0), q.size(1), k_cache.size(2)}, at::kFloat,
            q.device());
  if (!cuda) {
    auto [o, pr] = decode_leader_fallback(q, k_cache, v_cache, cache_seqlens, p);
    out.copy_(o);
    p_row.copy_(pr);
    return;
  }
  detail::cuda_hooks().decode_leader(prep(q), prep(k_cache), prep(v_cache),
                                     cache_seqlens.contiguous(), p, out, p_row, nullptr, 0);
}

std::tuple<at::Tensor, at::Tensor> decode_leader(const at::Tensor& q, const at::Tensor& k_cache,
                                                 const at::Tensor& v_cache,
                                                 const at::Tensor& cache_seqlens,
                                                 const AttnParams& p) {
  check_decode_leader("decode_leader", q, k_cache, v_cache, p);
  if (!hook_ready(KernelOp::DecodeLeader, q)) {
    return decode_leader_fallback(q, k_cache, v_cache, cache_seqlens, p);
  }
  auto out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  auto p_row = at::empty({q.size(0), q.size(1), k_cache.size(2)}, q.options().dtype(at::kFloat));
  decode_leader_out(q, k_cache, v_cache, cache_seqlens, p, out, p_row);
  return {out, p_row};
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                            const AttnParams& p) {
  check_decode_leader("decode_attention", q, k_cache, v_cache, p);
  if (!hook_ready(KernelOp::DecodeLeader, q))
    return std::get<0>(decode_leader_fallback(q, k_cache, v_cache, cache_seqlens, p));
  check_seqlens("decode_attention", cache_seqlens, q.size(0), q.device(), true);
  auto out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor no_p_row;  // the kernel skips the probability row entirely
  detail::cuda_hooks().decode_leader(prep(q), prep(k_cache), prep(v_cache),
                                     cache_seqlens.contiguous(), p, out, no_p_row, nullptr, 0);
  return out;
}

void decode_follower_out(const at::Tensor& p_row, const at::Tensor& v_cache,
                         const at::Tensor& cache_seqlens, int64_t num_q_heads, at::Tensor& out) {
  check_decode_follower("decode_follower", p_row, v_cache, num_q_heads);
  const bool cuda =
      hook_ready(KernelOp::DecodeFollower, v_cache) && p_row.scalar_type() == at::kFloat;
  check_seqlens("decode_follower", cache_seqlens, v_cache.size(0), v_cache.device(), cuda);
  const std::array<int64_t, 4> osz{v_cache.size(0), num_q_heads, 1, v_cache.size(3)};
  check_out("decode_follower", "out", out, osz, v_cache.scalar_type(), v_cache.device());
  if (!cuda) {
    out.copy_(decode_follower_fallback(p_row, v_cache, cache_seqlens, num_q_heads));
    return;
  }
  detail::cuda_hooks().decode_follower(p_row.contiguous(), prep(v_cache),
                                       cache_seqlens.contiguous(), out, nullptr, 0);
}

at::Tensor decode_follower(const at::Tensor& p_row, const at::Tensor& v_cache,
                           const at::Tensor& cache_seqlens, int64_t num_q_heads) {
  check_decode_follower("decode_follower", p_row, v_cache, num_q_heads);
  if (!(hook_ready(KernelOp::DecodeFollower, v_cache) && p_row.scalar_type() == at::kFloat)) {
    return decode_follower_fallback(p_row, v_cache, cache_seqlens, num_q_heads);
  }
  auto out = at::empty({v_cache.size(0), num_q_heads, 1, v_cache.size(3)}, v_cache.options());
  decode_follower_out(p_row, v_cache, cache_seqlens, num_q_heads, out);
  return out;
}

}  // namespace uniattn::kernels
