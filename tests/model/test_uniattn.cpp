// UniAttn semantics on tiny random models of every architecture: the fused and reference paths
// agree for every variant, `none` is the base model, W_c = 0 is plain Softmax sharing, gradients
// reach the leader's projections through its followers, and cached decoding equals a full pass.
#include <cstdio>

#include "model/decoder_layer.h"
#include "model_test_util.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/model/paged_kv_cache.h"

using namespace uniattn;

namespace {

// Groups of one attention type for each tiny 6-layer model (see make_model_fixtures.py).
std::string groups_for(const std::string& arch) {
  if (arch == "gemma2") return "2,4;3,5";  // alternating sliding/global layers
  if (arch == "gemma3") return "0,1;3,4";  // S S F S S F
  return "2-3;4-5";
}

CausalLM load(const std::string& arch, Variant v, at::ScalarType dtype = at::kFloat) {
  auto dir = test::data_dir() / "models" / arch;
  LoadOptions o;
  o.dtype = dtype;
  auto base = load_config(dir);
  o.uniattn =
      v == Variant::None ? UniAttnSpec{} : UniAttnSpec::parse(v, groups_for(arch), base.num_layers);
  auto m = load_model(dir, o);
  if (v == Variant::UniAttn) {
    // Random compensation so W_c is exercised.
    at::NoGradGuard ng;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
    for (auto& p : m->named_parameters())
      if (p.key().find("w_c") != std::string::npos) p.value().normal_(0, 0.02, gen);
  }
  m->eval();
  return m;
}

at::Tensor ids_for(const std::string& arch) {
  return test::read_tensors(test::data_dir() / "models" / arch / "oracle.safetensors")["input_ids"];
}

struct Case {
  std::string arch;
  Variant variant;
};
std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  return i.param.arch + "_" + variant_name(i.param.variant);
}
std::vector<Case> all_cases() {
  std::vector<Case> out;
  for (std::string a : {"llama", "mistral", "gemma2", "gemma3"})
    for (Variant v : {Variant::None, Variant::Softmax, Variant::UniAttn, Variant::Cla})
      out.push_back({a, v});
  return out;
}

class Variants : public ::testing::TestWithParam<Case> {};

TEST_P(Variants, FusedEqualsReference) {
  auto m = load(GetParam().arch, GetParam().variant);
  at::NoGradGuard ng;
  auto ids = ids_for(GetParam().arch);
  ForwardOptions fused, ref;
  ref.path = AttentionPath::Reference;
  double d = test::max_abs_diff(m->forward(ids, nullptr, fused), m->forward(ids, nullptr, ref));
  std::printf("fused vs reference: %.3g\n", d);
  EXPECT_LT(d, 1e-5);
}

TEST_P(Variants, CachedDecodeEqualsFullForward) {
  const auto& [arch, variant] = GetParam();
  auto m = load(arch, variant);
  at::NoGradGuard ng;
  auto ids = ids_for(arch);
  for (auto path : {AttentionPath::Fused, AttentionPath::Reference}) {
    ForwardOptions o;
    o.path = path;
    auto full = m->forward(ids, nullptr, o);
    KVCache cache(m->config(), ids.size(0), 32, at::kFloat, at::kCPU);
    std::vector<at::Tensor> parts{m->forward(ids.narrow(1, 0, 9), &cache, o)};
    for (int64_t t = 9; t < ids.size(1); ++t)
      parts.push_back(m->forward(ids.narrow(1, t, 1), &cache, o));
    EXPECT_EQ(cache.length(), ids.size(1));
    double d = test::max_abs_diff(at::cat(parts, 1), full);
    EXPECT_LT(d, 1e-5) << (path == AttentionPath::Fused ? "fused" : "reference");
  }
}

// The graph-safe decode step (device-side position, kernels or their ATen fallbacks on the CPU)
// gives the same logits as a full forward pass.
TEST_P(Variants, DeviceSideDecodeEqualsFullForward) {
  const auto& [arch, variant] = GetParam();
  auto m = load(arch, variant);
  at::NoGradGuard ng;
  auto ids = ids_for(arch);
  auto full = m->forward(ids);
  KVCache cache(m->config(), ids.size(0), 32, at::kFloat, at::kCPU);
  std::vector<at::Tensor> parts{m->forward(ids.narrow(1, 0, 9), &cache)};
  for (int64_t t = 9; t < ids.size(1); ++t) {
    ForwardOptions o;
    o.decode_position = at::full({1}, cache.length(), at::TensorOptions().dtype(at::kLong));
    parts.push_back(m->forward(ids.narrow(1, t, 1), &cache, o));
    EXPECT_EQ(cache.length(), t);  // the caller advances in this mode
    cache.advance(1);
  }
  double d = test::max_abs_diff(at::cat(parts, 1), full);
  EXPECT_LT(d, 1e-5);
}

// The paged decode step (decode kernels, or their fallbacks on the CPU, reading the pools
// through block tables) gives the logits of a full pass: prompts prefilled through paged_forward
// into blocks of 4 in shuffled order (block 0 included), then one token per step through
// paged_decode_forward with two padding rows, whose writes must land in the scratch slot only;
// Gemma-2/3 with the sliding layers in a block group of their own.
TEST_P(Variants, PagedDecodeEqualsFullForward) {
  const auto& [arch, variant] = GetParam();
  auto m = load(arch, variant);
  at::NoGradGuard ng;
  auto ids = ids_for(arch);
  const int64_t b = ids.size(0), n = ids.size(1), bs = 4, per_row = (n + bs - 1) / bs;
  // Gemma-2/3 mix sliding and global layers: their sliding layers get blocks of their own,
  // numbered in another order.
  const bool mixed = PagedKVCache::mixes_windows(m->config());
  PagedKVCache cache(m->config(), b * per_row + 3, bs, at::kFloat, at::kCPU,
                     mixed ? b * per_row + 1 : 0);
  ASSERT_EQ(cache.num_groups(), mixed ? 2 : 1);
  PagedBatch pb;
  for (int64_t i = 0; i < b; ++i) {
    std::vector<int32_t> table, sliding;
    for (int64_t j = per_row - 1; j >= 0; --j) table.push_back(int32_t(j * b + i));
    for (int64_t j = 0; j < per_row; ++j) sliding.push_back(int32_t((i + 1) * per_row - 1 - j));
    pb.block_tables.push_back(table);
    if (mixed) pb.sliding_block_tables.push_back(sliding);
    pb.context_lens.push_back(0);
    pb.query_lens.push_back(9);
  }
  std::vector<at::Tensor> parts{paged_forward(m, ids.narrow(1, 0, 9), cache, pb, false)};
  for (int64_t t = 9; t < n; ++t) {
    for (int64_t i = 0; i < b; ++i) pb.context_lens[i] = t, pb.query_lens[i] = 1;
    const auto in = paged_decode_inputs(cache, pb, b + 2, per_row + 1);
    auto tokens = at::cat({ids.narrow(1, t, 1), at::zeros({2, 1}, ids.options())});
    parts.push_back(paged_decode_forward(m, tokens, cache, in).narrow(0, 0, b));
  }
  EXPECT_LT(test::max_abs_diff(at::cat(parts, 1), m->forward(ids)), 1e-5);
}

TEST_P(Variants, FollowersOwnOnlyWhatTheyUse) {
  const auto& [arch, variant] = GetParam();
  auto m = load(arch, variant);
  const auto& spec = m->config().uniattn;
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) names.insert(p.key());
  for (int64_t l = 0; l < m->config().num_layers; ++l) {
    auto has = [&](const std::string& what) {
      return names.count("model.layers." + std::to_string(l) + ".self_attn." + what + ".weight") >
             0;
    };
    const bool f = spec.is_follower(l);
    EXPECT_EQ(has("q_proj"), !f || variant == Variant::Cla) << l;
    EXPECT_EQ(has("k_proj"), !f) << l;
    EXPECT_EQ(has("v_proj"), !f || variant != Variant::Cla) << l;
    EXPECT_EQ(has("w_c"), f && variant == Variant::UniAttn) << l;
    EXPECT_TRUE(has("o_proj"));
  }
  // The cache keeps K in leaders only, and nothing at all for CLA followers.
  KVCache cache(m->config(), 1, 8, at::kFloat, at::kCPU);
  const auto& c = m->config();
  int64_t f = spec.num_followers();
  int64_t per_layer = c.num_kv_heads * c.head_dim * 4;
  int64_t expected = per_layer * (2 * c.num_layers - (variant == Variant::Cla ? 2 * f : f));
  EXPECT_EQ(cache.bytes_per_token(), expected);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    EXPECT_EQ(cache.has_k(l), !spec.is_follower(l));
    EXPECT_EQ(cache.has_v(l), !spec.is_follower(l) || variant != Variant::Cla);
  }
}

INSTANTIATE_TEST_SUITE_P(All, Variants, ::testing::ValuesIn(all_cases()), case_name);

TEST(UniAttn, NoneEqualsBaseModel) {
  auto dir = test::data_dir() / "models" / "llama";
  auto oracle = test::read_tensors(dir / "oracle.safetensors");
  auto base = load_model(dir);
  auto none = load("llama", Variant::None);
  at::NoGradGuard ng;
  auto a = base->forward(oracle["input_ids"]);
  auto b = none->forward(oracle["input_ids"]);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_LT(test::max_abs_diff(b, oracle["logits"]), 1e-5);
}

TEST(UniAttn, ZeroCompensationIsSoftmaxSharing) {
  for (std::string arch : {"llama", "gemma2"}) {
    auto dir = test::data_dir() / "models" / arch;
    auto n = load_config(dir).num_layers;
    LoadOptions a, b;
    a.uniattn = UniAttnSpec::parse(Variant::Softmax, groups_for(arch), n);
    b.uniattn = UniAttnSpec::parse(Variant::UniAttn, groups_for(arch), n);
    LoadReport report;
    auto soft = load_model(dir, a);
    auto uni = load_model(dir, b, &report);
    EXPECT_EQ(report.zero_filled.size(), 2u);                      // one W_c per follower
    EXPECT_EQ(report.dropped.size(), arch == "gemma2" ? 4u : 4u);  // q_proj + k_proj each
    at::NoGradGuard ng;
    auto ids = ids_for(arch);
    EXPECT_TRUE(at::allclose(soft->forward(ids), uni->forward(ids), 0, 0)) << arch;
    // ... and sharing really changes the model.
    auto base = load_model(dir);
    EXPECT_GT(test::max_abs_diff(base->forward(ids), soft->forward(ids)), 1e-4) << arch;
  }
}

// The leader's q_proj gradient includes what flows back through its followers: with the
// leader's own V zeroed, its output does not depend on its q at all, so every bit of the
// gradient comes from followers. Checked against central finite differences in fp64.
TEST(UniAttn, LeaderGradientIncludesFollowers) {
  for (Variant v : {Variant::None, Variant::Softmax, Variant::UniAttn}) {
    for (auto path : {AttentionPath::Fused, AttentionPath::Reference}) {
      auto m = load("llama", v, at::kDouble);
      auto lead = m->layer(2)->self_attn;
      if (v != Variant::None) {
        at::NoGradGuard ng;
        lead->v_proj->weight.zero_();
      }
      auto ids = ids_for("llama").narrow(0, 0, 1).narrow(1, 0, 10);
      auto r =
          at::randn({1, 10, m->config().vocab_size}, at::TensorOptions().dtype(at::kDouble)) / 10.0;
      ForwardOptions o;
      o.path = path;
      auto loss_fn = [&] { return (m->forward(ids, nullptr, o) * r).sum(); };
      auto& w = lead->q_proj->weight;
      m->zero_grad();
      loss_fn().backward();
      auto g = w.grad().clone();
      EXPECT_GT(g.abs().max().item<double>(), 1e-6) << "no gradient reached the leader's q_proj";
      at::NoGradGuard ng;
      const double eps = 1e-6;
      double worst = 0;
      for (int64_t idx : {0L, 17L, 200L, 1000L, 4000L}) {
        auto flat = w.view(-1);
        const double orig = flat[idx].item<double>();
        flat[idx] = orig + eps;
        double up = loss_fn().item<double>();
        flat[idx] = orig - eps;
        double down = loss_fn().item<double>();
        flat[idx] = orig;
        double fd = (up - down) / (2 * eps);
        double ad = g.view(-1)[idx].item<double>();
        worst = std::max(worst, std::abs(fd - ad) / std::max(1e-8, std::abs(fd)));
        EXPECT_NEAR(ad, fd, 1e-6 + 1e-4 * std::abs(fd)) << "element " << idx;
      }
      std::printf("%s %d: worst relative FD error %.3g\n", variant_name(v), (int)path, worst);
    }
  }
}

}  // namespace
