// The LayerRole table against docs/method.md sections 2-3, written out here by hand for small
// configs, and the consumers that must agree with it: the KV cache and the model's parameters.
#include <map>
#include <set>

#include "model/decoder_layer.h"
#include "model_test_util.h"
#include "uniattn/model/causal_lm.h"
#include "uniattn/model/kv_cache.h"
#include "uniattn/model/layer_role.h"

using namespace uniattn;

namespace {

constexpr int64_t kLayers = 8;
const char* kGroups = "2,3,4;5,6";  // SuperBlocks [2 3 4] and [5 6]; layers 0, 1, 7 in none

// Follower -> leader for kGroups (method section 2: the first layer of a group leads it).
const std::map<int64_t, int64_t> kFollowers = {{3, 2}, {4, 2}, {6, 5}};
// Leader -> its last follower.
const std::map<int64_t, int64_t> kLastFollower = {{2, 4}, {5, 6}};

ModelConfig config(Variant v, const std::string& groups = kGroups, int64_t layers = kLayers) {
  auto c = test::tiny_llama_config(layers);
  if (v != Variant::None) c.uniattn = UniAttnSpec::parse(v, groups, layers);
  return c;
}

// What method.md section 3 says a layer has, spelled out per variant: a Softmax/UniAttn follower
// needs no q/k projection and no K cache (it reuses the leader's P with its own V; UniAttn adds
// W_c); a CLA follower uses the leader's K and V with its own q, so it keeps no cache at all.
struct Expected {
  bool q, k, v, wc, cache_k, cache_v;
};
Expected expected(Variant v, int64_t layer) {
  const bool follower = v != Variant::None && kFollowers.count(layer);
  if (!follower) return {true, true, true, false, true, true};
  switch (v) {
    case Variant::Softmax:
      return {false, false, true, false, false, true};
    case Variant::UniAttn:
      return {false, false, true, true, false, true};
    case Variant::Cla:
      return {true, false, false, false, false, false};
    case Variant::None:
      break;
  }
  return {};
}

class Roles : public ::testing::TestWithParam<Variant> {};

TEST_P(Roles, MatchTheMethod) {
  const Variant v = GetParam();
  const auto roles = layer_roles(config(v));
  ASSERT_EQ(roles.size(), static_cast<size_t>(kLayers));
  for (int64_t l = 0; l < kLayers; ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    const LayerRole& r = roles[static_cast<size_t>(l)];
    const bool none = v == Variant::None;
    const bool follower = !none && kFollowers.count(l);
    const bool leads = !none && kLastFollower.count(l);
    EXPECT_EQ(r.layer, l);
    EXPECT_EQ(r.is_follower(), follower);
    EXPECT_EQ(r.has_followers(), leads);
    EXPECT_EQ(r.leader, follower ? kFollowers.at(l) : l);
    EXPECT_EQ(r.last_follower, leads ? kLastFollower.at(l) : l);
    const Reuse shared = none || (!follower && !leads) ? Reuse::Nothing
                         : v == Variant::Cla           ? Reuse::KeyValue
                                                       : Reuse::Softmax;
    EXPECT_EQ(r.reuse, shared);
    const Expected e = expected(v, l);
    EXPECT_EQ(r.owns_q, e.q);
    EXPECT_EQ(r.owns_k, e.k);
    EXPECT_EQ(r.owns_v, e.v);
    EXPECT_EQ(r.owns_wc, e.wc);
    EXPECT_EQ(r.keeps_k, e.cache_k);
    EXPECT_EQ(r.keeps_v, e.cache_v);
    // layer_role is the same row.
    const LayerRole one = layer_role(config(v), l);
    EXPECT_EQ(one.leader, r.leader);
    EXPECT_EQ(one.owns_q, r.owns_q);
    EXPECT_EQ(one.keeps_v, r.keeps_v);
  }
}

// The cache allocates exactly what the table keeps; in bytes, K is saved in every follower and
// V too in CLA followers (method section 3: followers / (2 * layers) of the cache for UniAttn).
TEST_P(Roles, KVCacheAgrees) {
  const Variant v = GetParam();
  const auto c = config(v);
  const auto roles = layer_roles(c);
  KVCache cache(c, 2, 16, at::kFloat, at::kCPU);
  const int64_t per_buffer = c.num_kv_heads * c.head_dim * 4;  // one token of K or V, fp32
  int64_t kept = 0;
  for (const auto& r : roles) {
    EXPECT_EQ(cache.has_k(r.layer), r.keeps_k) << r.layer;
    EXPECT_EQ(cache.has_v(r.layer), r.keeps_v) << r.layer;
    kept += r.keeps_k + r.keeps_v;
  }
  EXPECT_EQ(cache.bytes_per_token(), kept * per_buffer);
  const int64_t f = v == Variant::None ? 0 : static_cast<int64_t>(kFollowers.size());
  const int64_t buffers = 2 * kLayers - (v == Variant::Cla ? 2 * f : f);
  EXPECT_EQ(cache.bytes_per_token(), buffers * per_buffer);
  EXPECT_EQ(cache.total_bytes(), buffers * per_buffer * 2 * 16);
}

// The model registers exactly the projections the table says each layer owns.
TEST_P(Roles, ModelParametersAgree) {
  for (bool bias : {false, true}) {  // fused q/k/v weight without bias, separate ones with
    auto c = config(GetParam());
    c.attention_bias = bias;
    CausalLM m(c);
    std::set<std::string> names;
    for (const auto& p : m->named_parameters()) names.insert(p.key());
    for (const auto& r : layer_roles(c)) {
      auto has = [&](const std::string& what) {
        return names.count("model.layers." + std::to_string(r.layer) + ".self_attn." + what +
                           ".weight") > 0;
      };
      SCOPED_TRACE("layer " + std::to_string(r.layer) + (bias ? " with bias" : ""));
      EXPECT_EQ(has("q_proj"), r.owns_q);
      EXPECT_EQ(has("k_proj"), r.owns_k);
      EXPECT_EQ(has("v_proj"), r.owns_v);
      EXPECT_EQ(has("w_c"), r.owns_wc);
      EXPECT_TRUE(has("o_proj"));
      EXPECT_EQ(m->layer(r.layer)->self_attn->leader(), r.leader);
      EXPECT_EQ(m->layer(r.layer)->self_attn->is_follower(), r.is_follower());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, Roles,
                         ::testing::Values(Variant::None, Variant::Softmax, Variant::UniAttn,
                                           Variant::Cla),
                         [](const auto& i) { return std::string(variant_name(i.param)); });

// The reference (size, begin, end) form on 32 layers (method section 2): layer i leads if
// i < b, i >= e or (i - b) % g == 0, else it follows the nearest leader before it.
TEST(LayerRoles, ReferenceRangeForm) {
  const int64_t g = 4, b = 16, e = 32;
  auto c = test::tiny_llama_config(32);
  c.uniattn = UniAttnSpec::from_range(Variant::UniAttn, g, b, e, 32);
  const auto roles = layer_roles(c);
  int64_t followers = 0, last_leader = -1;
  for (int64_t i = 0; i < 32; ++i) {
    const bool leads = i < b || i >= e || (i - b) % g == 0;
    if (leads) last_leader = i;
    followers += !leads;
    EXPECT_EQ(roles[i].is_follower(), !leads) << i;
    EXPECT_EQ(roles[i].leader, leads ? i : last_leader) << i;
    EXPECT_EQ(roles[i].owns_wc, !leads) << i;
    EXPECT_EQ(roles[i].last_follower, i >= b && leads ? i + g - 1 : i) << i;
  }
  EXPECT_EQ(followers, 12);
}

// Non-contiguous and interleaved groups: a leader's followers need not be adjacent.
TEST(LayerRoles, InterleavedGroups) {
  const auto roles = layer_roles(config(Variant::Cla, "0,2;1,4", 6));
  EXPECT_EQ(roles[2].leader, 0);
  EXPECT_EQ(roles[4].leader, 1);
  EXPECT_EQ(roles[0].last_follower, 2);
  EXPECT_EQ(roles[1].last_follower, 4);
  EXPECT_FALSE(roles[3].is_follower());
  EXPECT_FALSE(roles[3].has_followers());
  EXPECT_EQ(roles[3].reuse, Reuse::Nothing);
  EXPECT_TRUE(roles[4].owns_q);
  EXPECT_FALSE(roles[4].keeps_v);
}

TEST(LayerRoles, Errors) {
  const auto c = config(Variant::UniAttn);
  EXPECT_THROW(layer_role(c, -1), Error);
  EXPECT_THROW(layer_role(c, kLayers), Error);
  auto bad = c;
  bad.uniattn.groups.push_back({7, 8});  // layer 8 does not exist
  EXPECT_THROW(layer_roles(bad), Error);
  bad = c;
  bad.uniattn.groups.push_back({4, 7});  // layer 4 is already in [2 3 4]
  EXPECT_THROW(layer_roles(bad), Error);
  bad = test::tiny_llama_config(kLayers);
  bad.uniattn.groups = {{2, 3}};  // variant none takes no groups
  EXPECT_THROW(layer_roles(bad), Error);
}

}  // namespace
