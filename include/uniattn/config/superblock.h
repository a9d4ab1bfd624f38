// UniAttn SuperBlocks: which layers share a Softmax map. A group's first layer (the leader)
// computes the attention probabilities; its other layers (followers) reuse them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace uniattn {

// How followers use their leader.
enum class Variant {
  None,     // standard model, no sharing
  Softmax,  // followers reuse the leader's Softmax map with their own V, no compensation
  UniAttn,  // Softmax plus the per-follower linear compensation W_c
  Cla,      // cross-layer attention baseline: followers use the leader's K and V with their own Q
};
const char* variant_name(Variant);
Variant parse_variant(const std::string& name);  // "none" | "softmax" | "uniattn" | "cla"

struct UniAttnSpec {
  Variant variant = Variant::None;
  // Each group lists layer indices in increasing order; the first is the leader. Layers in no
  // group are ordinary layers (they also "lead" themselves).
  std::vector<std::vector<int64_t>> groups;

  // The reference implementation's (size, begin, end) form: layer i is a leader if i < begin,
  // i >= end or (i - begin) % size == 0, else it follows the nearest leader before it.
  // `end` may exceed num_layers. Throws on size < 2, begin < 0, begin >= num_layers, end <= begin.
  static UniAttnSpec from_range(Variant v, int64_t size, int64_t begin, int64_t end,
                                int64_t num_layers);
  // Parses "SIZE,BEGIN,END" or explicit groups "16-19;20,22,24" (ranges or comma lists, groups
  // separated by ';').
  static UniAttnSpec parse(Variant v, const std::string& text, int64_t num_layers);

  // Structural checks (bounds, ordering, disjointness, group size >= 2); throws uniattn::Error.
  void validate(int64_t num_layers) const;
  bool enabled() const { return variant != Variant::None && !groups.empty(); }
  // The leader a layer reads from (the layer itself when it leads or is in no group).
  int64_t leader_of(int64_t layer) const;
  bool is_follower(int64_t layer) const { return enabled() && leader_of(layer) != layer; }
  int64_t num_followers() const;
  std::string describe() const;  // e.g. "uniattn: [16 17 18 19] [20 21 22 23]"
};

}  // namespace uniattn
