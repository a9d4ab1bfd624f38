// Activation checkpointing as a custom autograd function over one checkpoint unit (see
// recompute.h). The function is "reentrant" in PyTorch's sense: its backward runs a second,
// nested backward over the recomputed unit, so parameter gradients arrive through the usual
// AccumulateGrad nodes and their hooks (the data-parallel GradReducer) fire as without it.
#include "recompute.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "model/decoder_layer.h"
#include "model/forward_state.h"
#include "uniattn/error.h"
#include "uniattn/model/causal_lm.h"
#include "uniattn/model/layer_role.h"

namespace uniattn {

std::vector<std::pair<int64_t, int64_t>> checkpoint_units(const ModelConfig& c) {
  // A unit must contain, for every layer in it, the last layer that reads its state (its last
  // follower); growing `last` to cover those of the layers taken in merges interleaved groups.
  const auto roles = layer_roles(c);
  const int64_t n = static_cast<int64_t>(roles.size());
  std::vector<std::pair<int64_t, int64_t>> units;
  for (int64_t l = 0; l < n;) {
    int64_t last = roles[static_cast<size_t>(l)].last_follower;
    for (int64_t k = l; k <= last; ++k)
      last = std::max(last, roles[static_cast<size_t>(k)].last_follower);
    units.emplace_back(l, last);
    l = last + 1;
  }
  return units;
}

std::shared_ptr<const ForwardState> recompute_base_state(const ForwardState& state) {
  auto s = std::make_shared<ForwardState>(state);
  s->shared.assign(state.shared.size(), SharedAttention{});
  // The no-grad forward and the grad-mode recomputation must take the same attention path, or
  // backward would differentiate a slightly different function than forward evaluated: the
  // forward-only CUDA kernels are chosen only without grad mode and for unpadded batches, so
  // marking the state padded keeps both passes on the SDPA path (the masks are exact either way).
  s->unpadded = false;
  return s;
}

namespace {

// What backward needs to recompute one unit. Held in the autograd context as a capsule.
struct UnitContext : torch::CustomClassHolder {
  std::shared_ptr<torch::nn::Module> keep_alive;  // the model, when owned by a shared_ptr
  CausalLMImpl* model = nullptr;
  int64_t first = 0, last = 0;
  std::shared_ptr<const ForwardState> base;
  at::DeviceType device_type = at::kCPU;
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
};

at::Tensor run_layers(const UnitContext& u, at::Tensor x) {
  ForwardState s = *u.base;  // per-pass copy: the unit's leaders fill its `shared` afresh
  for (int64_t l = u.first; l <= u.last; ++l) x = u.model->run_layer(l, x, s);
  return x;
}

// Sets the autocast state of one device type for a scope and restores it afterwards.
class AutocastAs {
 public:
  AutocastAs(at::DeviceType t, bool on, at::ScalarType dtype)
      : type_(t),
        prev_on_(at::autocast::is_autocast_enabled(t)),
        prev_dtype_(at::autocast::get_autocast_dtype(t)) {
    at::autocast::set_autocast_enabled(type_, on);
    at::autocast::set_autocast_dtype(type_, dtype);
    clear_ = on && !prev_on_;
  }
  ~AutocastAs() {
    at::autocast::set_autocast_enabled(type_, prev_on_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
    // Drop the weight casts cached by a region this scope opened (an enclosing region owns its
    // own cache).
    if (clear_) at::autocast::clear_cache();
  }
  AutocastAs(const AutocastAs&) = delete;
  AutocastAs& operator=(const AutocastAs&) = delete;

 private:
  at::DeviceType type_;
  bool prev_on_;
  at::ScalarType prev_dtype_;
  bool clear_ = false;
};

class UnitFunction : public torch::autograd::Function<UnitFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                            const c10::intrusive_ptr<UnitContext>& unit) {
    at::NoGradGuard ng;  // apply() already disables grad; keep it explicit
    AtenOpsScope same_rounding_as_recompute;
    ctx->save_for_backward({hidden});
    ctx->saved_data["unit"] = c10::IValue::make_capsule(unit);
    return run_layers(*unit, hidden);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    if (grad_out.empty() || !grad_out[0].defined()) return {at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const auto unit =
        c10::static_intrusive_pointer_cast<UnitContext>(ctx->saved_data.at("unit").toCapsule());
    at::Tensor x = saved.at(0).detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode grad(true);
      AutocastAs ac(unit->device_type, unit->autocast, unit->autocast_dtype);
      // The ATen expressions, as in forward (the fused autograd kernels round alike but sum in
      // another order).
      AtenOpsScope same_rounding_as_forward;
      out = run_layers(*unit, x);
    }
    torch::autograd::backward({out}, {grad_out[0]});
    return {x.grad(), at::Tensor()};
  }
};

}  // namespace

at::Tensor run_unit_recomputed(CausalLMImpl& model, int64_t first, int64_t last,
                               const at::Tensor& hidden,
                               const std::shared_ptr<const ForwardState>& state) {
  UNIATTN_CHECK(state, "run_unit_recomputed: no forward state");
  UNIATTN_CHECK(0 <= first && first <= last && last < model.config().num_layers,
                "run_unit_recomputed: bad layer range [", first, ", ", last, "] for ",
                model.config().num_layers, " layers");
  UNIATTN_CHECK(!state->cache && !state->decode() && !state->capture,
                "activation recomputation is for training passes: no KV cache, decode step or "
                "capture hooks");
  auto u = c10::make_intrusive<UnitContext>();
  u->keep_alive = model.weak_from_this().lock();
  u->model = &model;
  u->first = first;
  u->last = last;
  u->base = state;
  bool trains = hidden.requires_grad();
  for (int64_t l = first; l <= last && !trains; ++l)
    for (const auto& p : model.layer(l)->parameters()) trains |= p.requires_grad();
  if (!at::GradMode::is_enabled() || !trains) {
    // Nothing in or before this unit is trained: no graph, nothing to recompute.
    at::NoGradGuard ng;
    return run_layers(*u, hidden);
  }
  u->device_type = hidden.device().type();
  u->autocast = at::autocast::is_autocast_enabled(u->device_type);
  u->autocast_dtype = at::autocast::get_autocast_dtype(u->device_type);
  // The autograd node exists only when an input requires grad. When only this unit's own
  // parameters are trained (e.g. a W_c stage), the hidden state entering it does not, so it
  // enters as a leaf that does; the gradient computed for it is then simply dropped.
  at::Tensor x = hidden.requires_grad() ? hidden : hidden.detach().requires_grad_(true);
  return UnitFunction::apply(x, u);
}

}  // namespace uniattn
