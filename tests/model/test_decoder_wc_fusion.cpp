// A UniAttn follower's v_proj and W_c read the same normalised input, so without gradients and at
// decode-sized batches they run as one GEMM with the weight [W_v; W_c] (AttentionImpl, rows of one
// FusedProjections allocation). That must leave parameter names, shapes and gradients as they
// were, and give the logits of the separate projections and of the fp64 reference path.
#include <gtest/gtest.h>

#include "model/decoder_layer.h"
#include "model_test_util.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/model/kv_cache.h"

namespace uniattn {
namespace {

// Two followers each (llama: groups 2-3 and 4-5; Gemma: one attention type per group, as in
// test_uniattn).
std::string groups_for(const std::string& arch) {
  if (arch == "gemma2") return "2,4;3,5";
  if (arch == "gemma3") return "0,1;3,4";
  return "2-3;4-5";
}

CausalLM load_uniattn(const std::string& arch) {
  auto dir = test::data_dir() / "models" / arch;
  LoadOptions o;
  o.dtype = at::kDouble;
  o.uniattn = UniAttnSpec::parse(Variant::UniAttn, groups_for(arch), load_config(dir).num_layers);
  auto m = load_model(dir, o);
  at::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (auto& p : m->named_parameters())  // a non-zero compensation, so W_c counts
    if (p.key().find("w_c") != std::string::npos) p.value().normal_(0, 0.05, gen);
  m->eval();
  return m;
}

int64_t first_follower(CausalLM& m) {
  for (int64_t l = 0; l < m->config().num_layers; ++l)
    if (m->layer(l)->self_attn->w_c) return l;
  return -1;
}

// The logits of ids [B, T] decoded token by token after a prefill of `first` tokens, through
// the graph-safe decode step (the kernels' ATen fallbacks on the CPU), without gradients.
at::Tensor decode_logits(CausalLM& m, const at::Tensor& ids, int64_t first) {
  at::NoGradGuard ng;
  KVCache cache(m->config(), ids.size(0), ids.size(1) + 2, at::kDouble, at::kCPU);
  std::vector<at::Tensor> parts{m->forward(ids.narrow(1, 0, first), &cache)};
  for (int64_t t = first; t < ids.size(1); ++t) {
    ForwardOptions o;
    o.decode_position = at::full({1}, cache.length(), at::TensorOptions().dtype(at::kLong));
    parts.push_back(m->forward(ids.narrow(1, t, 1), &cache, o));
    cache.advance(1);
  }
  return at::cat(parts, 1);
}

class WcFusion : public ::testing::TestWithParam<std::string> {};

TEST_P(WcFusion, WeightsAreRowBlocksOfOneAllocation) {
  auto m = load_uniattn(GetParam());
  const auto& c = m->config();
  int64_t followers = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto a = m->layer(l)->self_attn;
    if (!a->w_c) continue;
    ++followers;
    const auto &v = a->v_proj->weight, &w = a->w_c->weight;
    EXPECT_EQ(w.sizes(), (std::vector<int64_t>{c.hidden_size, c.hidden_size})) << l;
    EXPECT_TRUE(w.is_alias_of(v)) << l;
    EXPECT_EQ(w.storage_offset(), v.storage_offset() + v.numel()) << l;
    EXPECT_TRUE(w.requires_grad() && v.requires_grad()) << l;
  }
  EXPECT_EQ(followers, 2);
  // Names as before: w_c stays its own tensor in checkpoints.
  auto params = m->named_parameters();
  const auto prefix = "model.layers." + std::to_string(first_follower(m)) + ".self_attn.";
  EXPECT_TRUE(params.contains(prefix + "w_c.weight"));
  EXPECT_TRUE(params.contains(prefix + "v_proj.weight"));
}

TEST_P(WcFusion, FusedEqualsSeparateAndReference) {
  auto m = load_uniattn(GetParam());
  at::manual_seed(3);
  // B x T = 2 x 3 prefill rows and 2 rows per decode step: all within FusedProjections' limit.
  auto ids = at::randint(m->config().vocab_size, {2, 7}, at::kLong);
  auto fused = decode_logits(m, ids, 3);
  // Grad mode: every projection runs on its own (FusedProjections returns nothing).
  ForwardOptions ref;
  ref.path = AttentionPath::Reference;  // fp64 materialised probabilities
  auto separate = m->forward(ids).detach();
  auto reference = m->forward(ids, nullptr, ref).detach();
  // Logits come out in fp32 (|logit| ~ 1e-2 here: rounding ~ 1e-9); cached decode against a full
  // pass also sums in another order.
  EXPECT_LT(test::max_abs_diff(fused, separate), 1e-8);
  EXPECT_LT(test::max_abs_diff(fused, reference), 1e-8);
  // Re-pointing w_c (as weight sharing does) turns the fusion off: the same decode, unfused.
  {
    at::NoGradGuard ng;
    for (int64_t l = 0; l < m->config().num_layers; ++l)
      if (auto a = m->layer(l)->self_attn; a->w_c) a->w_c->weight.set_data(a->w_c->weight.clone());
  }
  auto unfused = decode_logits(m, ids, 3);
  EXPECT_LT(test::max_abs_diff(fused, unfused), 1e-12);
  // And W_c really matters here: without it the logits move.
  {
    at::NoGradGuard ng;
    for (int64_t l = 0; l < m->config().num_layers; ++l)
      if (auto a = m->layer(l)->self_attn; a->w_c) a->w_c->weight.zero_();
  }
  EXPECT_GT(test::max_abs_diff(fused, decode_logits(m, ids, 3)), 1e-6);
}

TEST_P(WcFusion, TrainingGivesEachBlockItsGradient) {
  auto m = load_uniattn(GetParam());
  at::manual_seed(4);
  auto ids = at::randint(m->config().vocab_size, {1, 5}, at::kLong);
  m->forward(ids).sum().backward();
  const auto prefix = "model.layers." + std::to_string(first_follower(m)) + ".self_attn.";
  for (const char* n : {"w_c.weight", "v_proj.weight"}) {
    auto g = m->named_parameters()[prefix + n].grad();
    ASSERT_TRUE(g.defined()) << n;
    EXPECT_GT(g.abs().sum().item<double>(), 0.0) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, WcFusion, ::testing::Values("llama", "gemma2", "gemma3"));

}  // namespace
}  // namespace uniattn
