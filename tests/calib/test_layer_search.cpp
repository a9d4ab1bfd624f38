// SuperBlock search on a tiny LLaMA (tests/fixtures/make_layer_similarity_fixtures.py): a model
// built so that two layers share their attention map exactly (zero q projections make both maps
// the uniform causal map) yields that group as the best one; budgets are respected; the K-best
// selection equals a brute-force enumeration.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <random>

#include "model/decoder_layer.h"
#include "model/model_test_util.h"
#include "uniattn/calib/layer_search.h"
#include "uniattn/calib/layer_similarity.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn {
namespace {

std::filesystem::path llama_dir() { return test::data_dir() / "layer_similarity" / "llama"; }

// The fixture model with a 50x LM head: peaked next-token distributions that depend on the
// hidden state (a random N(0, 0.02) head predicts nearly uniformly, so any change of the layers
// would move the loss by less than sampling noise).
CausalLM peaked_model() {
  auto m = load_model(llama_dir());
  at::NoGradGuard ng;
  m->named_parameters()["lm_head.weight"].mul_(50.0);
  return m;
}

// Layers 2 and 3 attend uniformly: their maps are equal whatever their inputs.
CausalLM planted_model() {
  auto m = peaked_model();
  at::NoGradGuard ng;
  for (int64_t l : {2, 3}) m->layer(l)->self_attn->q_proj->weight.zero_();
  return m;
}

// Sequences sampled from the model itself: the model is then the best predictor of them in
// expectation, so every change of its function raises the expected loss (by the KL divergence).
std::vector<TokenizedExample> sampled(CausalLM& m, int n, int len, uint64_t seed) {
  at::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<TokenizedExample> out;
  for (int i = 0; i < n; ++i) {
    auto ids = at::randint(3, 97, {1, 4}, gen, at::kLong);
    while (ids.size(1) < len) {
      ForwardOptions fo;
      fo.last_only = true;
      auto p = at::softmax(m->forward(ids, nullptr, fo)[0][0].to(at::kDouble), -1);
      ids = at::cat({ids, at::multinomial(p, 1, false, gen).view({1, 1})}, 1);
    }
    TokenizedExample e;
    for (int64_t t = 0; t < len; ++t) e.ids.push_back(ids[0][t].item<int32_t>());
    e.loss_mask.assign(len, 1);
    std::fill(e.loss_mask.begin(), e.loss_mask.begin() + 4, 0);
    e.prompt_tokens = 4;
    out.push_back(e);
  }
  return out;
}

LayerSearchOptions options(int64_t followers) {
  LayerSearchOptions o;
  o.followers = followers;
  o.max_group = 3;
  o.verify = 2;
  o.calib.ridge = 1e-4;
  o.calib.batch_tokens = 256;
  return o;
}

TEST(LayerSearch, FindsThePlantedGroup) {
  auto m = planted_model();
  const auto cal = sampled(m, 24, 24, 1), held = sampled(m, 24, 24, 2);
  const auto r = search_superblocks(m, cal, held, options(1));
  ASSERT_FALSE(r.rows.empty());
  EXPECT_EQ(r.rows.front().spec, "2-3");
  EXPECT_NEAR(r.rows.front().loss_wc, r.loss_base, 1e-4);
  EXPECT_NEAR(r.rows.front().loss_no_wc, r.loss_base, 1e-4);
  // Candidates: leaders 0..4, groups of 2 and 3 inside the 6 layers.
  EXPECT_EQ(r.candidates.size(), 9u);
  const CandidateScore* planted = nullptr;
  for (const auto& c : r.candidates)
    if (c.layers == std::vector<int64_t>{2, 3}) planted = &c;
  ASSERT_NE(planted, nullptr);
  EXPECT_LT(std::abs(planted->delta), 1e-5);
  EXPECT_LT(planted->rel_err, 1e-5);
  for (const auto& c : r.candidates) {
    if (&c == planted) continue;
    EXPECT_GT(c.delta, 1e-3) << format_groups({c.layers});
  }
}

TEST(LayerSearch, RespectsFollowerAndKvBudgets) {
  auto m = peaked_model();
  const auto cal = sampled(m, 12, 20, 3), held = sampled(m, 8, 20, 4);
  auto o = options(3);
  o.first_layer = 1;
  o.last_layer = 5;
  o.compare = {UniAttnSpec::parse(Variant::UniAttn, "3,0,6", 6)};  // 0-2;3-5: 4 followers
  auto r = search_superblocks(m, cal, held, o);
  EXPECT_EQ(r.followers, 3);
  ASSERT_EQ(r.rows.size(), 3u);
  for (const auto& row : r.rows) {
    const auto spec = UniAttnSpec::parse(Variant::UniAttn, row.spec, 6);
    if (row.origin == "compare") continue;
    EXPECT_EQ(spec.num_followers(), 3) << row.spec;
    EXPECT_EQ(row.followers, 3);
    for (const auto& g : spec.groups) {
      EXPECT_LE(g.size(), 3u) << row.spec;
      EXPECT_GE(g.front(), 1) << row.spec;
    }
  }
  for (size_t i = 1; i < r.rows.size(); ++i) EXPECT_LE(r.rows[i - 1].loss_wc, r.rows[i].loss_wc);
  // K (fp32): 2 KV heads x 16 x 4 bytes = 128 bytes per layer and token.
  EXPECT_EQ(r.base_kv_bytes_per_token, 6 * 2 * 128);
  o = options(-1);
  o.kv_bytes_per_token = 6 * 2 * 128 - 2 * 128 - 1;  // needs 3 followers
  o.verify = 1;
  r = search_superblocks(m, cal, held, o);
  EXPECT_EQ(r.followers, 3);
  ASSERT_EQ(r.rows.size(), 1u);
  EXPECT_EQ(r.rows[0].kv_bytes_per_token, 6 * 2 * 128 - 3 * 128);
  EXPECT_LE(r.rows[0].kv_bytes_per_token, o.kv_bytes_per_token);
}

// Every set of disjoint candidates with `followers` followers, by brute force.
std::vector<double> brute_force(const std::vector<CandidateScore>& c, int64_t followers) {
  std::vector<double> sums;
  for (uint32_t mask = 0; mask < (1u << c.size()); ++mask) {
    std::vector<int64_t> used;
    int64_t f = 0;
    double sum = 0;
    for (size_t i = 0; i < c.size(); ++i)
      if (mask >> i & 1) {
        used.insert(used.end(), c[i].layers.begin(), c[i].layers.end());
        f += static_cast<int64_t>(c[i].layers.size()) - 1;
        sum += c[i].delta;
      }
    std::sort(used.begin(), used.end());
    if (f == followers && std::adjacent_find(used.begin(), used.end()) == used.end())
      sums.push_back(sum);
  }
  std::sort(sums.begin(), sums.end());
  return sums;
}

TEST(BestGroupSets, EqualsBruteForce) {
  const std::vector<std::vector<int64_t>> chains = {{0, 1, 2, 3, 4}, {5, 6, 7}};
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-0.1, 1.0);
  std::vector<CandidateScore> cands;
  for (const auto& ch : chains)
    for (size_t p = 0; p < ch.size(); ++p)
      for (size_t n = 2; n <= 3 && p + n <= ch.size(); ++n)
        cands.push_back({{ch.begin() + p, ch.begin() + p + n}, 0.0, u(rng), 0.0});
  ASSERT_LE(cands.size(), 20u);
  for (int64_t f = 1; f <= 5; ++f) {
    const auto expect = brute_force(cands, f);
    const auto got = best_group_sets(cands, chains, f, 4);
    ASSERT_EQ(got.size(), std::min<size_t>(4, expect.size())) << f;
    for (size_t i = 0; i < got.size(); ++i) {
      double sum = 0;
      int64_t followers = 0;
      for (const auto& g : got[i]) {
        for (const auto& c : cands)
          if (c.layers == g) sum += c.delta;
        followers += static_cast<int64_t>(g.size()) - 1;
      }
      EXPECT_EQ(followers, f);
      EXPECT_NEAR(sum, expect[i], 1e-12) << "followers " << f << " rank " << i;
    }
  }
  // At most 3 + 2 followers fit in these chains with groups of up to 3 layers.
  EXPECT_TRUE(best_group_sets(cands, chains, 6, 4).empty());
}

TEST(LayerSearch, RejectsBadInputs) {
  auto m = load_model(llama_dir());
  const auto ex = sampled(m, 4, 10, 5);
  test::expect_error([&] { search_superblocks(m, ex, {}, options(1)); }, "no held-out");
  test::expect_error([&] { search_superblocks(m, {}, ex, options(1)); }, "no calibration");
  test::expect_error([&] { search_superblocks(m, ex, ex, options(-1)); }, "budget");
  test::expect_error([&] { search_superblocks(m, ex, ex, options(5)); }, "no SuperBlocks with 5");
  auto o = options(1);
  o.max_group = 1;
  test::expect_error([&] { search_superblocks(m, ex, ex, o); }, "max_group");
  o = options(1);
  o.last_layer = 6;
  test::expect_error([&] { search_superblocks(m, ex, ex, o); }, "layer range");
  LoadOptions lo;
  lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, "1-2", 6);
  auto uni = load_model(llama_dir(), lo);
  test::expect_error([&] { search_superblocks(uni, ex, ex, options(1)); }, "standard model");
}

}  // namespace
}  // namespace uniattn
