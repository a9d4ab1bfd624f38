// The attention arithmetic, separated from the modules that call it. Two paths that must agree:
// the reference path materialises the fp32 probability map; the fused path never stores an
// L x L tensor (SDPA, or our CUDA kernels where they apply).
#pragma once
#include <ATen/ATen.h>

namespace uniattn {

struct AttnMath {
  double scale = 1.0;
  double softcap = 0.0;  // Gemma attention-logit soft-capping, 0 = off
};

// Reference: fp32 (fp64 for fp64 inputs) P = softmax(softcap(q k^T * scale) masked). q [B,Hq,T,D],
// k [B,Hkv,S,D], mask bool [B|1,1,T,S]. Returns P [B,Hq,T,S].
at::Tensor reference_probs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& mask,
                           const AttnMath& m);
// P [B,Hq,T,S] (fp32) times v [B,Hkv,S,D] -> [B,Hq,T,D] in v's dtype.
at::Tensor apply_probs(const at::Tensor& probs, const at::Tensor& v);

// Fused: softmax(...) v for the given q, k, v (the follower identity: a follower passes its
// leader's q and k with its own v). `causal`: the caller asserts that `mask` is exactly the causal
// mask over T == S positions, so SDPA may use its flash kernel (is_causal) instead of a masked,
// slower backend; the mask is still used where SDPA cannot run (soft-capping).
at::Tensor fused_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask, bool causal, const AttnMath& m);

}  // namespace uniattn
