// Attention-map similarity between layers against transformers (eager attention,
// output_attentions=True, cosine in float64: tests/fixtures/make_layer_similarity_fixtures.py)
// on tiny random LLaMA / Mistral / Gemma-2 / Gemma-3 models; the chains that keep SuperBlocks
// inside one attention kind; candidate groups and the spec format.
#include <ATen/ATen.h>

#include "model/model_test_util.h"
#include "uniattn/calib/layer_similarity.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

std::filesystem::path dir(const std::string& name) {
  return test::data_dir() / "layer_similarity" / name;
}

std::vector<TokenizedExample> fixture_examples(const std::map<std::string, at::Tensor>& t) {
  std::vector<TokenizedExample> out;
  for (int i = 0; t.count("ids" + std::to_string(i)); ++i) {
    auto ids = t.at("ids" + std::to_string(i)).to(at::kLong).contiguous();
    TokenizedExample e;
    for (int64_t k = 0; k < ids.numel(); ++k) e.ids.push_back(ids[k].item<int32_t>());
    e.loss_mask.assign(e.ids.size(), 1);
    out.push_back(e);
  }
  return out;
}

class Similarity : public ::testing::TestWithParam<std::string> {};

TEST_P(Similarity, EqualsTransformersAttentions) {
  auto model = load_model(dir(GetParam()));
  const auto oracle = test::read_tensors(dir(GetParam()) / "similarity.safetensors");
  const auto ex = fixture_examples(oracle);
  ASSERT_EQ(ex.size(), 3u);
  const auto s = attention_similarity(model, ex);
  EXPECT_EQ(s.records, 3);
  EXPECT_EQ(s.tokens, 9 + 14 + 20);
  EXPECT_LT(test::max_abs_diff(s.per_head, oracle.at("per_head")), 2e-5);
  EXPECT_LT(test::max_abs_diff(s.per_kv_group, oracle.at("per_kv_group")), 2e-5);
  EXPECT_LT(test::max_abs_diff(s.mean, oracle.at("mean")), 2e-5);
  // The oracle is not trivially close to everything: layers differ.
  EXPECT_LT(oracle.at("mean").min().item<double>(), 0.95);
  // Symmetric, ones on the diagonal, within [0, 1] (maps are non-negative).
  EXPECT_LT(test::max_abs_diff(s.per_head, s.per_head.transpose(1, 2)), 1e-12);
  EXPECT_LT(test::max_abs_diff(s.per_head.diagonal(0, 1, 2),
                               at::ones({s.num_heads, s.num_layers}, at::kDouble)),
            1e-12);
  EXPECT_GE(s.per_head.min().item<double>(), 0.0);
  EXPECT_LE(s.per_head.max().item<double>(), 1.0 + 1e-12);
}

TEST_P(Similarity, HeadChunksGiveTheSameResult) {
  auto model = load_model(dir(GetParam()));
  const auto ex = fixture_examples(test::read_tensors(dir(GetParam()) / "similarity.safetensors"));
  SimilarityOptions one_head;
  one_head.max_map_bytes = 1;  // every record runs once per head
  int64_t calls = 0;
  one_head.progress = [&](int64_t, int64_t) { ++calls; };
  const auto a = attention_similarity(model, ex);
  const auto b = attention_similarity(model, ex, one_head);
  EXPECT_EQ(calls, 3 * a.num_heads);
  EXPECT_LT(test::max_abs_diff(a.per_head, b.per_head), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Archs, Similarity,
                         ::testing::Values("llama", "mistral", "gemma2", "gemma3"));

TEST(SimilarityErrors, RefusesUnifiedModelsAndEmptyInput) {
  LoadOptions o;
  o.uniattn = UniAttnSpec::parse(Variant::UniAttn, "1-2", 6);
  auto uni = load_model(dir("llama"), o);
  TokenizedExample e;
  e.ids = {1, 2, 3};
  e.loss_mask = {0, 1, 1};
  test::expect_error([&] { attention_similarity(uni, {e}); }, "must be a standard model");
  auto base = load_model(dir("llama"));
  test::expect_error([&] { attention_similarity(base, {}); }, "no examples");
  test::expect_error([&] { attention_similarity(base, {TokenizedExample{}}); }, "example 0");
}

TEST(Chains, NeverCrossALocalGlobalBoundary) {
  using Chains = std::vector<std::vector<int64_t>>;
  EXPECT_EQ(superblock_chains(load_config(dir("llama"))), (Chains{{0, 1, 2, 3, 4, 5}}));
  EXPECT_EQ(superblock_chains(load_config(dir("mistral"))), (Chains{{0, 1, 2, 3, 4, 5}}));
  // Gemma-3 here: sliding, sliding, global, sliding, sliding, global.
  EXPECT_EQ(superblock_chains(load_config(dir("gemma3"))), (Chains{{0, 1}, {2}, {3, 4}, {5}}));
  // Gemma-2 alternates: the chains are the layers of each kind.
  EXPECT_EQ(superblock_chains(load_config(dir("gemma2"))), (Chains{{0, 2, 4}, {1, 3, 5}}));
  // Every chain's groups are valid SuperBlocks of that model.
  auto g2 = load_config(dir("gemma2"));
  g2.uniattn = UniAttnSpec::parse(Variant::UniAttn, format_groups({{0, 2, 4}, {1, 3}}), 6);
  EXPECT_NO_THROW(g2.validate());
}

TEST(CandidateGroups, RunsAboveTheThresholdWithinChains) {
  // Adjacent similarities 0-1: .9, 1-2: .95, 2-3: .3, 3-4: .85, 4-5: .5
  auto m = at::eye(6, at::kDouble);
  const double adj[] = {0.9, 0.95, 0.3, 0.85, 0.5};
  for (int i = 0; i < 5; ++i) m[i][i + 1] = m[i + 1][i] = adj[i];
  auto g = candidate_groups(m, {{0, 1, 2, 3, 4, 5}}, 0.8);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0].layers, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_NEAR(g[0].mean_adjacent, 0.925, 1e-12);
  EXPECT_NEAR(g[0].min_adjacent, 0.9, 1e-12);
  EXPECT_EQ(g[1].layers, (std::vector<int64_t>{3, 4}));
  // A chain boundary between 1 and 2 splits the first run.
  g = candidate_groups(m, {{0, 1}, {2, 3, 4, 5}}, 0.8);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0].layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(g[1].layers, (std::vector<int64_t>{3, 4}));
  test::expect_error([&] { candidate_groups(at::zeros({2, 3}), {}, 0.5); }, "square");
}

TEST(FormatGroups, ParsesBackToTheSameGroups) {
  const std::vector<std::vector<std::vector<int64_t>>> cases = {
      {{16, 17, 18, 19}, {22, 23}}, {{2, 4, 6}}, {{2, 4}, {3, 5}}, {{0, 1}}};
  for (const auto& groups : cases) {
    const auto text = format_groups(groups);
    EXPECT_EQ(UniAttnSpec::parse(Variant::UniAttn, text, 32).groups, groups) << text;
  }
  EXPECT_EQ(format_groups({{16, 17, 18, 19}, {22, 23}}), "16-19;22-23");
  EXPECT_EQ(format_groups({{2, 4, 6}}), "2,4,6;");
}

}  // namespace
}  // namespace uniattn
