// Chunked LM head + cross-entropy (linear_cross_entropy.h). Per row chunk: logits z = h_c W^T in
// the compute dtype, then in fp32 l = softcap(z), loss = -w log_softmax(l)[target] and
// dl = w (softmax(l) - onehot(target)), dz = dl * softcap'(z); dz is rounded to the compute
// dtype, as autograd's cast back from fp32 logits would, and gives dh_c = dz W and dW += dz^T h_c.
#include "linear_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include <algorithm>

#include "uniattn/error.h"

namespace uniattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What one call computes, fixed before the autograd function runs.
struct Plan {
  double softcap = 0.0;
  int64_t chunk = 1;
  at::ScalarType dtype = at::kFloat;  // of the matmuls
  // Of the log-softmax, the loss and the logit gradient: fp32, or fp64 for fp64 matmuls.
  at::ScalarType acc() const { return dtype == at::kDouble ? at::kDouble : at::kFloat; }
  bool grad_h = false, grad_w = false;
};

struct ChunkResult {
  at::Tensor loss;    // fp32 (fp64) scalar: the chunk's weighted CE sum
  at::Tensor grad_z;  // [C, V], compute dtype: d loss / d (h_c W^T)
};

// Loss and logit gradient of one chunk from its logits z [C, V]; t [C] int64, w [C] fp32.
ChunkResult chunk_loss(const at::Tensor& z, const at::Tensor& t, const at::Tensor& w,
                       const Plan& p) {
  // A copy in fp32 (or z itself when already so: z is not used again, so it may be overwritten).
  auto l = z.to(p.acc());
  at::Tensor th;  // tanh(z / softcap), for the soft-cap's derivative
  if (p.softcap > 0) {
    th = l.div_(p.softcap).tanh_();
    l = th * p.softcap;
  }
  const auto idx = t.unsqueeze(1);
  // log_softmax is one fused kernel; logsumexp and a subtraction from the logits would be a
  // composite of six passes over [C, V] (amax, sub, exp, sum, log, sub) with full-size temporaries.
  auto logp = at::log_softmax(l, 1);
  l = at::Tensor();  // the fp32 logits are not needed again: free them before the next pass
  ChunkResult r;
  r.loss = -(logp.gather(1, idx).squeeze(1) * w).sum();
  auto g = logp.exp_();  // softmax, in place of the log-probabilities
  g.scatter_add_(1, idx, at::full({g.size(0), 1}, -1.0, g.options()));
  g.mul_(w.unsqueeze(1));
  if (p.softcap > 0) g.mul_(th.mul_(th).neg_().add_(1.0));  // d softcap(z) / dz = 1 - tanh^2
  r.grad_z = g.to(p.dtype);
  return r;
}

// dW += dz^T h_c into `acc` (W's dtype). With the compute dtype the GEMM adds into the
// accumulator itself; with fp32 master weights each chunk's product is added in fp32.
void accumulate_grad_w(at::Tensor& acc, const at::Tensor& dz, const at::Tensor& hc,
                       at::ScalarType w_dtype) {
  if (!acc.defined()) {
    acc = at::mm(dz.t(), hc).to(w_dtype);
  } else if (acc.scalar_type() == dz.scalar_type()) {
    acc.addmm_(dz.t(), hc);
  } else {
    acc.add_(at::mm(dz.t(), hc));
  }
}

struct Sums {
  at::Tensor loss, grad_h, grad_w;
};

// The chunk loop over n scored rows: hs [n, H] and wc [V, H] in the compute dtype.
Sums run_chunks(const at::Tensor& hs, const at::Tensor& wc, const at::Tensor& ts,
                const at::Tensor& ws, const Plan& p, at::ScalarType w_dtype) {
  const int64_t n = hs.size(0);
  Sums s;
  s.loss = at::zeros({}, ws.options());
  if (p.grad_h) s.grad_h = at::empty_like(hs);
  for (int64_t start = 0; start < n; start += p.chunk) {
    const int64_t c = std::min(p.chunk, n - start);
    const auto hc = hs.narrow(0, start, c);
    const auto r =
        chunk_loss(at::mm(hc, wc.t()), ts.narrow(0, start, c), ws.narrow(0, start, c), p);
    s.loss.add_(r.loss);
    if (p.grad_h) {
      auto out = s.grad_h.narrow(0, start, c);
      at::mm_out(out, r.grad_z, wc);
    }
    if (p.grad_w) accumulate_grad_w(s.grad_w, r.grad_z, hc, w_dtype);
  }
  if (p.grad_w && !s.grad_w.defined())
    s.grad_w = at::zeros(wc.sizes(), wc.options().dtype(w_dtype));
  return s;
}

class FusedLinearCrossEntropy : public torch::autograd::Function<FusedLinearCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w,
                            const at::Tensor& targets, const at::Tensor& weights, Plan p) {
    // The plan fixes the dtypes; autocast must not re-cast the matmuls.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto wf = weights.to(p.acc());
    // Rows of weight 0 add nothing to the loss or the gradients: leave them out (prompt tokens
    // and each row's last position). nonzero() waits for the device once per call.
    const auto rows = wf.nonzero().reshape({-1});
    const bool all = rows.numel() == h.size(0);
    const auto pick = [&](const at::Tensor& t) { return all ? t : t.index_select(0, rows); };
    auto s =
        run_chunks(pick(h).to(p.dtype), w.to(p.dtype), pick(targets), pick(wf), p, w.scalar_type());
    at::Tensor grad_h;
    if (p.grad_h)
      grad_h = all ? s.grad_h.to(h.scalar_type())
                   : at::zeros_like(h).index_copy_(0, rows, s.grad_h.to(h.scalar_type()));
    ctx->saved_data["grad_h"] = grad_h;
    ctx->saved_data["grad_w"] = s.grad_w;
    return s.loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    UNIATTN_CHECK(ctx->saved_data.count("grad_h"),
                  "fused_linear_cross_entropy: backward ran twice (retain_graph is not supported)");
    auto gh = ctx->saved_data["grad_h"].toTensor();
    auto gw = ctx->saved_data["grad_w"].toTensor();
    ctx->saved_data.clear();  // scaled in place below: a second backward must not reuse them
    const auto& go = grad_out[0];
    if (gh.defined()) gh.mul_(go);
    if (gw.defined()) gw.mul_(go);
    return {gh, gw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::ScalarType compute_dtype(const LinearCrossEntropyOptions& o, const at::Tensor& h) {
  if (o.compute_dtype) return *o.compute_dtype;
  const auto type = h.device().type();
  // Autocast casts fp32 / fp16 / bf16 matmul inputs, never fp64 ones.
  if (h.scalar_type() != at::kDouble && at::autocast::is_autocast_enabled(type))
    return at::autocast::get_autocast_dtype(type);
  return h.scalar_type();
}

void check_inputs(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets,
                  const at::Tensor& weights) {
  UNIATTN_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1),
                "fused_linear_cross_entropy: hidden must be [N, H] and weight [V, H], got ",
                h.sizes(), " and ", w.sizes());
  UNIATTN_CHECK(h.is_floating_point() && w.is_floating_point(),
                "fused_linear_cross_entropy: hidden and weight must be floating point");
  UNIATTN_CHECK(
      targets.dim() == 1 && targets.size(0) == h.size(0) && targets.scalar_type() == at::kLong,
      "fused_linear_cross_entropy: targets must be int64 [", h.size(0), "], got ",
      targets.scalar_type(), " ", targets.sizes());
  UNIATTN_CHECK(weights.dim() == 1 && weights.size(0) == h.size(0),
                "fused_linear_cross_entropy: weights must be [", h.size(0), "], got ",
                weights.sizes());
  for (const auto* t : {&w, &targets, &weights})
    UNIATTN_CHECK(t->device() == h.device(), "fused_linear_cross_entropy: inputs on ", h.device(),
                  " and ", t->device());
}

}  // namespace

int64_t linear_cross_entropy_chunk_rows(const LinearCrossEntropyOptions& o, int64_t n, int64_t v) {
  int64_t rows = o.chunk_rows;
  if (rows <= 0) {
    rows = kDefaultChunkBytes / (4 * std::max<int64_t>(v, 1));
    if (rows >= 128) rows -= rows % 128;  // GEMM-friendly row counts
  }
  return std::clamp<int64_t>(rows, 1, std::max<int64_t>(n, 1));
}

at::Tensor fused_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& targets, const at::Tensor& weights,
                                      const LinearCrossEntropyOptions& options) {
  check_inputs(hidden, weight, targets, weights);
  Plan p;
  p.softcap = options.softcap;
  p.chunk = linear_cross_entropy_chunk_rows(options, hidden.size(0), weight.size(0));
  p.dtype = compute_dtype(options, hidden);
  const bool grad = at::GradMode::is_enabled();
  p.grad_h = grad && hidden.requires_grad();
  p.grad_w = grad && weight.requires_grad();
  return FusedLinearCrossEntropy::apply(hidden, weight, targets, weights, p);
}

}  // namespace uniattn
