#include "layers.h"

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "cuda_hooks.h"
#include "fused_autograd.h"
#include "uniattn/error.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn {

namespace {
thread_local bool t_force_aten = false;

// The fused kernels take one dtype: they apply to CUDA tensors of one supported dtype on a GPU
// that takes op's kernel path (uniattn/model/kernel_paths.h); inputs that take part in autograd
// go through the autograd functions of fused_autograd.h.
enum class OpPath { Aten, Kernel, KernelAutograd };
OpPath op_path(KernelOp op, std::initializer_list<const at::Tensor*> ts) {
  const at::Tensor& first = **ts.begin();
  if (t_force_aten || !first.is_cuda()) return OpPath::Aten;
  if (!kernel_enabled(op, first.device())) return OpPath::Aten;
  const auto dt = first.scalar_type();
  if (dt != at::kFloat && dt != at::kBFloat16 && dt != at::kHalf) return OpPath::Aten;
  const bool grad = at::GradMode::is_enabled();
  bool autograd = false;
  for (const at::Tensor* t : ts) {
    if (t->scalar_type() != dt || t->device() != first.device()) return OpPath::Aten;
    autograd = autograd || (grad && t->requires_grad());
  }
  return autograd ? OpPath::KernelAutograd : OpPath::Kernel;
}
bool use_fused(KernelOp op, std::initializer_list<const at::Tensor*> ts) {
  return op_path(op, ts) == OpPath::Kernel;
}
}  // namespace

AtenOpsScope::AtenOpsScope() : prev_(t_force_aten) { t_force_aten = true; }
AtenOpsScope::~AtenOpsScope() { t_force_aten = prev_; }

at::Tensor rms_norm_aten(const at::Tensor& x, const at::Tensor& weight, double eps, bool plus_one) {
  const auto acc = accumulation_type(x.scalar_type());
  auto xf = x.to(acc);
  auto normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (plus_one) return (normed * (1.0 + weight.to(acc))).to(x.scalar_type());
  return weight * normed.to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool plus_one) {
  const auto path = op_path(KernelOp::RmsNorm, {&x, &weight});
  const bool shape_ok = weight.dim() == 1 && x.dim() >= 1 && weight.numel() == x.size(-1);
  if (path == OpPath::KernelAutograd && shape_ok && x.numel() > 0 &&
      x.size(-1) <= kernels::detail::kMaxNormBackwardCols &&
      kernels::detail::cuda_hooks().rms_norm_backward)
    return rms_norm_autograd(x, weight, eps, plus_one);
  if (path != OpPath::Kernel || !shape_ok) return rms_norm_aten(x, weight, eps, plus_one);
  auto xc = x.contiguous();
  auto out = at::empty_like(xc);
  kernels::detail::cuda_hooks().rms_norm(xc, nullptr, weight.contiguous(), eps, plus_one, nullptr,
                                         out);
  return out;
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                               const at::Tensor& weight, double eps,
                                               bool plus_one) {
  if (!use_fused(KernelOp::RmsNorm, {&x, &delta, &weight}) || x.sizes() != delta.sizes() ||
      weight.numel() != x.size(-1)) {
    auto h = x + delta;
    return {h, rms_norm(h, weight, eps, plus_one)};
  }
  auto xc = x.contiguous(), dc = delta.contiguous();
  auto h = at::empty_like(xc), out = at::empty_like(xc);
  kernels::detail::cuda_hooks().rms_norm(xc, &dc, weight.contiguous(), eps, plus_one, &h, out);
  return {h, out};
}

at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim) {
  auto idx = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat);
  auto inv = 1.0 / at::pow(rope.theta, idx / static_cast<double>(head_dim));
  switch (rope.type) {
    case RopeConfig::Type::Default:
      break;
    case RopeConfig::Type::Linear:
      inv = inv / rope.factor;
      break;
    case RopeConfig::Type::Llama3: {
      // Llama-3.1 frequency-dependent scaling: long wavelengths are divided by `factor`, short
      // ones kept, and the band between interpolated smoothly.
      const double old_len = static_cast<double>(rope.original_max_position);
      const double low_wavelen = old_len / rope.low_freq_factor;
      const double high_wavelen = old_len / rope.high_freq_factor;
      auto wavelen = 2.0 * std::numbers::pi / inv;
      auto scaled = at::where(wavelen > low_wavelen, inv / rope.factor, inv);
      auto smooth = (old_len / wavelen - rope.low_freq_factor) /
                    (rope.high_freq_factor - rope.low_freq_factor);
      auto smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
      auto medium =
          at::logical_not(wavelen < high_wavelen) & at::logical_not(wavelen > low_wavelen);
      inv = at::where(medium, smoothed, scaled);
      break;
    }
  }
  return inv.contiguous();
}

std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& inv_freq,
                                              const at::Tensor& positions, at::ScalarType dtype) {
  auto freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, D/2]
  auto emb = at::cat({freqs, freqs}, -1).unsqueeze(1);             // [B, 1, T, D]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rotary_aten(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  auto rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

namespace {
// Shapes the rotary kernel indexes directly: x [B,H,T,D] and cos/sin [B|1,1,T,D], last dims
// contiguous, D even.
bool rotary_shapes_fit(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x.dim() == 4 && cos.dim() == 4 && cos.sizes() == sin.sizes() &&
         cos.strides() == sin.strides() && (cos.size(0) == x.size(0) || cos.size(0) == 1) &&
         cos.size(1) == 1 && cos.size(2) == x.size(2) && cos.size(3) == x.size(3) &&
         x.size(3) % 2 == 0 && x.size(3) <= 1024 && x.stride(3) == 1 && cos.stride(3) == 1;
}
bool rotary_kernel_applies(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return use_fused(KernelOp::Rotary, {&x, &cos, &sin}) && rotary_shapes_fit(x, cos, sin);
}
}  // namespace

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // The tables are functions of the positions; a gradient for them is not computed.
  if (op_path(KernelOp::Rotary, {&x, &cos, &sin}) == OpPath::KernelAutograd && x.numel() > 0 &&
      !cos.requires_grad() && !sin.requires_grad() && rotary_shapes_fit(x, cos, sin))
    return rotary_autograd(x, cos, sin);
  if (!rotary_kernel_applies(x, cos, sin)) return apply_rotary_aten(x, cos, sin);
  auto out = at::empty(x.sizes(), x.options());
  kernels::detail::cuda_hooks().rotary(x, cos, sin, nullptr, out);
  return out;
}

void apply_rotary_into(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& dst, const at::Tensor& pos) {
  UNIATTN_CHECK(dst.dim() == 4 && x.dim() == 4 && dst.size(0) == x.size(0) &&
                    dst.size(1) == x.size(1) && dst.size(3) == x.size(3),
                "apply_rotary_into: cannot write ", x.sizes(), " into ", dst.sizes());
  if (rotary_kernel_applies(x, cos, sin) && dst.scalar_type() == x.scalar_type() &&
      dst.stride(3) == 1 && pos.scalar_type() == at::kLong && pos.device() == x.device()) {
    kernels::detail::cuda_hooks().rotary(x, cos, sin, &pos, dst);
    return;
  }
  auto idx = pos.numel() == x.size(2) ? pos : pos + at::arange(x.size(2), pos.options());
  dst.index_copy_(2, idx, apply_rotary_aten(x, cos, sin));
}

bool apply_rotary_qkv_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& q_out,
                           const at::Tensor& k_dst, const at::Tensor& v_dst,
                           const at::Tensor& pos) {
  if (!kernels::detail::cuda_hooks().rotary_qkv || !rotary_kernel_applies(q, cos, sin) ||
      !rotary_kernel_applies(k, cos, sin) || !use_fused(KernelOp::Rotary, {&q, &v, &q_out}) ||
      !use_fused(KernelOp::Rotary, {&q, &k_dst, &v_dst}))
    return false;
  auto fits = [&](const at::Tensor& dst, const at::Tensor& x, int64_t min_t) {
    return dst.dim() == 4 && dst.size(0) == x.size(0) && dst.size(1) == x.size(1) &&
           dst.size(2) >= min_t && dst.size(3) == x.size(3) && dst.stride(3) == 1;
  };
  const int64_t t = q.size(2);
  return v.sizes() == k.sizes() && v.stride(3) == 1 && q.size(0) == k.size(0) && k.size(2) == t &&
         fits(q_out, q, t) && fits(k_dst, k, t) && fits(v_dst, v, t) && pos.numel() == 1 &&
         pos.scalar_type() == at::kLong && pos.device() == q.device() &&
         (kernels::detail::cuda_hooks().rotary_qkv(q, k, v, cos, sin, pos, q_out, k_dst, v_dst),
          true);
}

at::Tensor gated_activation_aten(const at::Tensor& gate, const at::Tensor& up, Activation act) {
  auto g = act == Activation::Silu ? at::silu(gate) : at::gelu(gate, "tanh");
  return g * up;
}

namespace {
// [..., cols] whose leading dims flatten to rows a single stride apart, last dim contiguous:
// a contiguous tensor, or one half of a fused gate/up projection output.
bool row_strided(const at::Tensor& t) {
  if (t.dim() == 0 || t.stride(-1) != 1) return false;
  if (t.dim() == 1) return true;
  int64_t expect = t.stride(-2);
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) != 1 && t.stride(d) != expect) return false;
    expect *= t.size(d);
  }
  return true;
}
}  // namespace

at::Tensor gated_activation(const at::Tensor& gate, const at::Tensor& up, Activation act) {
  if (op_path(KernelOp::GatedActivation, {&gate, &up}) == OpPath::KernelAutograd &&
      gate.sizes() == up.sizes() && gate.numel() > 0 &&
      kernels::detail::cuda_hooks().gated_backward)
    return gated_autograd(gate, up, act == Activation::GeluTanh);
  if (!use_fused(KernelOp::GatedActivation, {&gate, &up}) || gate.sizes() != up.sizes() ||
      gate.strides() != up.strides() || !row_strided(gate))
    return gated_activation_aten(gate, up, act);
  const int64_t cols = gate.size(-1);
  auto out = at::empty({gate.numel() / std::max<int64_t>(cols, 1), cols}, gate.options());
  kernels::detail::cuda_hooks().gated(gate.view({-1, cols}), up.view({-1, cols}),
                                      act == Activation::GeluTanh, out);
  return out.view(gate.sizes());
}

namespace {
bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

// x as one aligned row [in] for the GEMV kernel, or an undefined tensor where it does not apply:
// one row only (at 4 rows the kernel read 2.3-3.7 TB/s against cuBLAS's 3.2-4.3 on the H200,
// bench/results/kernels-gemv-4rows-llama8b-h200-ba562e3.json), no gradient, fp16/bf16 on CUDA, in %
// 8 == 0.
at::Tensor gemv_input(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                      const at::Tensor& add) {
  if (x.dim() < 1 || x.numel() != x.size(-1) || w.dim() != 2 || x.size(-1) != w.size(1) ||
      w.size(1) % 8 != 0 || x.numel() == 0 || w.size(0) >= (int64_t{1} << 30))
    return {};
  // Autocast would have at::linear compute in its own dtype: leave those calls to ATen.
  if (!kernels::detail::cuda_hooks().gemv || x.scalar_type() == at::kFloat ||
      at::autocast::is_autocast_enabled(at::kCUDA))
    return {};
  const bool ok = bias.defined() ? use_fused(KernelOp::Gemv, {&x, &w, &bias})
                                 : use_fused(KernelOp::Gemv, {&x, &w});
  if (!ok || (add.defined() && !use_fused(KernelOp::Gemv, {&x, &add}))) return {};
  if (!w.is_contiguous() || !aligned16(w) ||
      (bias.defined() && (bias.dim() != 1 || bias.numel() != w.size(0))))
    return {};
  auto row = x.reshape({x.size(-1)}).contiguous();
  // One row: copying a misaligned input to fresh (aligned) memory costs next to nothing.
  return aligned16(row) ? row : row.clone();
}
}  // namespace

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& add) {
  auto shape = x.sizes().vec();
  if (!shape.empty()) shape.back() = weight.size(0);
  if (auto row = gemv_input(x, weight, bias, add); row.defined()) {
    const int64_t out = weight.size(0);
    at::Tensor a;
    if (add.defined()) {
      UNIATTN_CHECK(add.numel() == out, "linear_forward: add ", add.sizes(), " is not [..., ", out,
                    "] for one row");
      a = add.reshape({out}).contiguous();
    }
    auto y = at::empty({out}, x.options());
    const auto b = bias.defined() ? bias.contiguous() : bias;
    kernels::detail::cuda_hooks().gemv(row, weight, b.defined() ? &b : nullptr,
                                       a.defined() ? &a : nullptr, y);
    return y.view(shape);
  }
  if (!add.defined()) return at::linear(x, weight, bias);
  auto y = at::addmm(add.reshape({-1, weight.size(0)}), x.reshape({-1, x.size(-1)}), weight.t())
               .view(shape);
  return bias.defined() ? y + bias : y;
}

at::Tensor gated_linear_forward(const at::Tensor& x, const at::Tensor& gate_up, Activation act) {
  // The activation runs in the GEMV's epilogue: it needs both operations' kernel paths (a
  // disabled gated_activation keeps its ATen path).
  if (!kernels::detail::cuda_hooks().gemv_gated || gate_up.dim() != 2 || gate_up.size(0) % 2 != 0 ||
      !use_fused(KernelOp::GatedActivation, {&x, &gate_up}))
    return {};
  auto row = gemv_input(x, gate_up, {}, {});
  if (!row.defined()) return {};
  const int64_t out = gate_up.size(0) / 2;
  auto shape = x.sizes().vec();
  shape.back() = out;
  auto y = at::empty({out}, x.options());
  kernels::detail::cuda_hooks().gemv_gated(row, gate_up, act == Activation::GeluTanh, y);
  return y.view(shape);
}

ProjImpl::ProjImpl(int64_t in, int64_t out, bool with_bias, const at::TensorOptions& o) {
  weight = register_parameter("weight", at::empty({out, in}, o).normal_(0.0, 0.02));
  if (with_bias) bias = register_parameter("bias", at::zeros({out}, o));
}

ProjImpl::ProjImpl(at::Tensor w) { weight = register_parameter("weight", std::move(w)); }

std::vector<Proj> FusedProjections::allocate(int64_t in, const std::vector<int64_t>& outs,
                                             const at::TensorOptions& o, bool init) {
  int64_t total = 0;
  for (int64_t n : outs) total += n;
  auto block = at::empty({total, in}, o);
  if (init) block.normal_(0.0, 0.02);
  outs_ = outs;
  std::vector<Proj> projs;
  int64_t off = 0;
  for (int64_t n : outs) {
    // Aliases of the block's storage, not autograd views: a view would keep `block` alive as its
    // base even after the parameter is re-pointed.
    auto w = at::empty({0}, o);
    w.set_(block.storage(), off * in, {n, in}, {in, 1});
    projs.push_back(Proj(w));
    off += n;
  }
  return projs;
}

at::Tensor FusedProjections::block(const at::Tensor& x, const std::vector<Proj>& projs) const {
  if (outs_.empty() || at::GradMode::is_enabled() || projs.size() != outs_.size()) return {};
  const auto& first = projs[0]->weight;
  const int64_t in = first.size(1);
  if (x.size(-1) != in || x.numel() / in > kMaxRows) return {};
  // The blocks must still be consecutive rows of one storage (a re-pointed parameter is not).
  int64_t off = first.storage_offset();
  for (size_t i = 0; i < projs.size(); ++i) {
    const auto& w = projs[i]->weight;
    if (!w.is_alias_of(first) || w.storage_offset() != off || !w.is_contiguous() ||
        w.size(0) != outs_[i] || w.size(1) != in || projs[i]->bias.defined())
      return {};
    off += outs_[i] * in;
  }
  // The whole block, re-derived from the parameters each time: holding it here would keep the
  // old weights alive after the parameters were re-pointed.
  const int64_t rows = (off - first.storage_offset()) / in;
  return first.as_strided({rows, in}, {in, 1});
}

std::vector<at::Tensor> FusedProjections::forward(const at::Tensor& x,
                                                  const std::vector<Proj>& projs) const {
  auto w = block(x, projs);
  if (!w.defined()) return {};
  return split(linear_forward(x, w));
}

std::vector<at::Tensor> FusedProjections::split(const at::Tensor& y) const {
  std::vector<at::Tensor> parts;
  int64_t off = 0;
  for (int64_t n : outs_) {
    parts.push_back(y.narrow(-1, off, n));
    off += n;
  }
  return parts;
}

MlpImpl::MlpImpl(const ModelConfig& c, const at::TensorOptions& o) : act_(c.activation) {
  auto lin = [&](int64_t in, int64_t out) { return Proj(in, out, c.mlp_bias, o); };
  if (c.mlp_bias) {
    gate_proj = register_module("gate_proj", lin(c.hidden_size, c.intermediate_size));
    up_proj = register_module("up_proj", lin(c.hidden_size, c.intermediate_size));
  } else {
    auto gu = gate_up_.allocate(c.hidden_size, {c.intermediate_size, c.intermediate_size}, o);
    gate_proj = register_module("gate_proj", gu[0]);
    up_proj = register_module("up_proj", gu[1]);
  }
  down_proj = register_module("down_proj", lin(c.intermediate_size, c.hidden_size));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  if (auto w = gate_up_.block(x, {gate_proj, up_proj}); w.defined()) {
    // A decode row: the gate/up GEMV applies the activation itself (no kernel between it and down).
    if (auto h = gated_linear_forward(x, w, act_); h.defined()) return down_proj->forward(h);
    auto gu = gate_up_.split(linear_forward(x, w));
    return down_proj->forward(gated_activation(gu[0], gu[1], act_));
  }
  return down_proj->forward(gated_activation(gate_proj->forward(x), up_proj->forward(x), act_));
}

at::Tensor register_weight(torch::nn::Module& owner, const std::string& name, at::Tensor value) {
  struct Holder : torch::nn::Module {};
  auto m = std::make_shared<Holder>();
  auto w = m->register_parameter("weight", std::move(value));
  owner.register_module(name, m);
  return w;
}

at::Tensor register_norm(torch::nn::Module& owner, const std::string& name, int64_t dim,
                         bool plus_one, const at::TensorOptions& o) {
  return register_weight(owner, name, plus_one ? at::zeros({dim}, o) : at::ones({dim}, o));
}

}  // namespace uniattn
