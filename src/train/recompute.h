// Activation checkpointing for training: the decoder's layers are split into checkpoint units
// (one SuperBlock from its leader to its last follower, or one layer outside every SuperBlock);
// a unit keeps only its input hidden state in forward and recomputes its layers in backward.
// A whole SuperBlock is one unit because its followers read the leader's q/k (or k/v for CLA)
// from ForwardState::shared, which per-layer recomputation could not rebuild.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "uniattn/config/model_config.h"

namespace uniattn {

class CausalLMImpl;
struct ForwardState;

// Inclusive layer ranges [first, last] covering 0..num_layers-1 in order. A range spans every
// SuperBlock it touches: a non-contiguous group ("20,22,24") takes the layers in between, and
// interleaved groups merge into one unit.
std::vector<std::pair<int64_t, int64_t>> checkpoint_units(const ModelConfig& config);

// Runs layers [first, last] of `model` on `hidden` so that backward recomputes them: forward
// runs without a graph and saves only `hidden`; backward re-runs the unit with grad enabled
// (under the autocast state of this call) on a fresh copy of `state` (its per-pass leader
// entries are rebuilt inside the unit) and back-propagates through it, which accumulates the
// unit's parameter gradients into .grad (as PyTorch's reentrant checkpoint does). Without grad
// mode, or when neither `hidden` nor the unit's parameters require grad, the layers just run
// without a graph. Throws uniattn::Error for a bad range or a state with a KV cache, a decode
// step or capture hooks.
at::Tensor run_unit_recomputed(CausalLMImpl& model, int64_t first, int64_t last,
                               const at::Tensor& hidden,
                               const std::shared_ptr<const ForwardState>& state);

// A copy of `state` for one recomputed unit: masks, rotary tables and options are shared,
// leader entries are empty. Used by run_unit_recomputed; exposed for callers that build states.
std::shared_ptr<const ForwardState> recompute_base_state(const ForwardState& state);

}  // namespace uniattn
