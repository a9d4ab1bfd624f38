#include "uniattn/model/layer_role.h"

#include "uniattn/error.h"

namespace uniattn {

namespace {

// A follower's projections and cache under `variant` (docs/method.md section 3): it needs no
// q/k, RoPE or K cache when it reuses the probability map; a CLA follower computes its own
// scores against the leader's K and V, so it keeps q and nothing in the cache.
void make_follower(LayerRole& r, Variant variant) {
  const bool cla = variant == Variant::Cla;
  r.reuse = cla ? Reuse::KeyValue : Reuse::Softmax;
  r.owns_q = cla;
  r.owns_k = false;
  r.owns_v = !cla;
  r.owns_wc = variant == Variant::UniAttn;
  r.keeps_k = false;
  r.keeps_v = !cla;
}

}  // namespace

std::vector<LayerRole> layer_roles(const ModelConfig& config) {
  const int64_t n = config.num_layers;
  UNIATTN_CHECK(n >= 0, "layer roles: negative number of layers ", n);
  const UniAttnSpec& spec = config.uniattn;
  // Every index below is then in range and every layer is in at most one group.
  spec.validate(n);

  std::vector<LayerRole> roles(static_cast<size_t>(n));
  for (int64_t l = 0; l < n; ++l) {
    auto& r = roles[static_cast<size_t>(l)];
    r.layer = r.leader = r.last_follower = l;
  }
  if (!spec.enabled()) return roles;  // `none`: every layer is an ordinary one

  for (const auto& group : spec.groups) {
    const int64_t lead = group.front();
    auto& leader = roles[static_cast<size_t>(lead)];
    // Groups are increasing, so the back is the last layer that reads the leader's state.
    leader.last_follower = group.back();
    leader.reuse = spec.variant == Variant::Cla ? Reuse::KeyValue : Reuse::Softmax;
    for (size_t i = 1; i < group.size(); ++i) {
      auto& f = roles[static_cast<size_t>(group[i])];
      f.leader = lead;
      make_follower(f, spec.variant);
    }
  }
  return roles;
}

LayerRole layer_role(const ModelConfig& config, int64_t layer) {
  UNIATTN_CHECK(layer >= 0 && layer < config.num_layers, "layer roles: layer ", layer,
                " is outside the model's ", config.num_layers, " layers");
  return layer_roles(config)[static_cast<size_t>(layer)];
}

}  // namespace uniattn
