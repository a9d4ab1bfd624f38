// What each decoder layer owns, computes and caches under a UniAttn spec, derived in one place
// from the ModelConfig so that the model, its KV cache, weight loading, calibration and training
// cannot disagree about it (method: docs/method.md sections 2-3).
//
//                          q  k  v  W_c | K cache  V cache | reuses from its leader
//   ordinary layer/leader  x  x  x      |    x        x    | -
//   Softmax follower             x      |             x    | the probability map (leader's q, k)
//   UniAttn follower             x  x   |             x    | the probability map (leader's q, k)
//   CLA follower           x            |                  | K and V
#pragma once
#include <cstdint>
#include <vector>

#include "uniattn/config/model_config.h"

namespace uniattn {

// What a follower takes from its leader; for a leader, what its followers take.
enum class Reuse {
  Nothing,   // an ordinary layer: in no SuperBlock (or the variant is `none`)
  Softmax,   // Softmax/UniAttn: the leader's probability map, applied to the follower's own V
  KeyValue,  // CLA: the leader's K and V, attended to with the follower's own q
};

struct LayerRole {
  int64_t layer = 0;
  // The layer whose attention this one reuses; `layer` itself when it leads or is ordinary.
  int64_t leader = 0;
  // The last layer that reuses this layer's attention; `layer` itself when none does. A leader's
  // shared q/k (or K/V) must live from `layer` through `last_follower`.
  int64_t last_follower = 0;
  Reuse reuse = Reuse::Nothing;
  // Projections the layer has (o_proj: every layer). q/k norms (Gemma-3) follow owns_q/owns_k.
  bool owns_q = true, owns_k = true, owns_v = true;
  bool owns_wc = false;  // the compensation W_c: UniAttn followers only
  // What the layer writes to the KV cache.
  bool keeps_k = true, keeps_v = true;

  bool is_follower() const { return leader != layer; }
  bool has_followers() const { return last_follower != layer; }
};

// One role per layer, index = layer, from `config.uniattn` over `config.num_layers` layers.
// Throws uniattn::Error when the spec is structurally invalid for that many layers (see
// UniAttnSpec::validate) or num_layers is negative.
std::vector<LayerRole> layer_roles(const ModelConfig& config);

// The role of one layer (the same as layer_roles(config)[layer]). Throws uniattn::Error as
// layer_roles does, and when `layer` is outside [0, num_layers).
LayerRole layer_role(const ModelConfig& config, int64_t layer);

}  // namespace uniattn
