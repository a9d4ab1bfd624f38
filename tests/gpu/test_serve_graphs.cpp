// uniattn-serve's decode runner on a GPU: a decode step replayed from its CUDA graph equals the
// same step run eagerly with the same (padded) inputs, bit for bit, when the replay gets new
// lengths, tokens and block tables; each (rows, table width) bucket is captured once. For none,
// uniattn and cla; a random bf16 model with head_dim 64 takes the CUDA decode kernels through
// block tables. And the engine with graphs serves requests that join and leave to completion.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "serve/decode_runner.h"
#include "shared_softmax.h"
#include "uniattn/config/superblock.h"
#include "uniattn/model/paged_kv_cache.h"
#include "uniattn/serve/engine.h"

namespace uniattn {
namespace {

CausalLM random_model(Variant v) {
  ModelConfig c = test::tiny_llama_config(6);
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.vocab_size = 512;
  c.max_position_embeddings = 512;
  if (v != Variant::None) c.uniattn = UniAttnSpec::parse(v, "1-3;4-5", c.num_layers);
  at::manual_seed(11);
  CausalLM m(c, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
  at::NoGradGuard ng;
  for (auto& p : m->named_parameters())  // W_c starts at zero: give it weight
    if (p.key().find("w_c") != std::string::npos) p.value().normal_(0, 0.02);
  m->eval();
  return m;
}

#define SKIP_WITHOUT_KERNELS()                                                       \
  do {                                                                               \
    if (!at::cuda::is_available()) GTEST_SKIP() << "no CUDA device";                 \
    if (!kernels::cuda_kernels_available()) GTEST_SKIP() << "built without kernels"; \
  } while (0)

class ServeGraphs : public ::testing::TestWithParam<Variant> {};

// Five sequences of 20 to 100 prompt tokens in shuffled blocks of 16; each decode step feeds
// `rows` of them one more token.
struct Sequences {
  PagedBatch batch;
  std::vector<int64_t> tokens;
  void step(int64_t rows, int64_t salt) {
    PagedBatch b;
    tokens.clear();
    for (int64_t i = 0; i < rows; ++i) {
      b.context_lens.push_back(batch.context_lens[i] + batch.query_lens[i]);
      b.query_lens.push_back(1);
      b.block_tables.push_back(batch.block_tables[i]);
      tokens.push_back((salt * 37 + i * 11) % 512);
    }
    batch = b;
  }
};

Sequences prefill(CausalLM& m, PagedKVCache& cache) {
  Sequences s;
  std::vector<int64_t> ids;
  const int64_t t = 100;
  for (int64_t i = 0; i < 5; ++i) {
    const int64_t n = 20 + 20 * i;
    std::vector<int32_t> table;
    for (int64_t j = 0; j < 8; ++j) table.push_back(int32_t(j * 5 + (4 - i)));  // 8 x 16 slots
    // The last row's table runs 16 blocks past what it uses: its steps take a 32-block bucket.
    for (int64_t j = 0; i == 4 && j < 16; ++j) table.push_back(int32_t(40 + j));
    s.batch.block_tables.push_back(table);
    s.batch.context_lens.push_back(0);
    s.batch.query_lens.push_back(n);
    for (int64_t j = 0; j < t; ++j) ids.push_back(j < n ? (i * 13 + j * 7) % 512 : 0);
  }
  auto input = at::tensor(ids).view({5, t}).to(at::kCUDA);
  paged_forward(m, input, cache, s.batch, true);
  return s;
}

// The step run eagerly on the runner's bucket: the reference a replay must equal.
at::Tensor eager_step(CausalLM& m, PagedKVCache& cache, const Sequences& s,
                      const std::pair<int64_t, int64_t>& bucket) {
  const auto [rows, width] = bucket;
  const auto in = paged_decode_inputs(cache, s.batch, rows, width);
  auto tokens = s.tokens;
  tokens.resize(size_t(rows), 0);
  auto dev = at::Device(at::kCUDA);
  return paged_decode_forward(m, at::tensor(tokens).view({rows, 1}).to(dev), cache, in.to(dev))
      .narrow(0, 0, int64_t(s.tokens.size()));
}

TEST_P(ServeGraphs, ReplayEqualsEagerStep) {
  SKIP_WITHOUT_KERNELS();
  auto m = random_model(GetParam());
  c10::InferenceMode guard;
  PagedKVCache cache(m->config(), 64, 16, at::kBFloat16, at::kCUDA);
  auto seqs = prefill(m, cache);
  serve::DecodeRunner runner(m, cache, 8, 32, true);
  seqs.step(5, 1);
  const auto first = runner.run(seqs.tokens, seqs.batch).clone();  // captured (rows 8)
  EXPECT_EQ(runner.graphs(), 1);
  // The same step again (it rewrites the same K/V): the replay gives the warm-up's logits.
  EXPECT_TRUE(at::equal(runner.run(seqs.tokens, seqs.batch), first));
  for (int64_t salt = 2; salt < 6; ++salt) {  // new tokens and lengths; 3 rows: bucket of 4
    seqs.step(salt < 4 ? 5 : 3, salt);
    int64_t widest = 0;
    for (const auto& t : seqs.batch.block_tables) widest = std::max<int64_t>(widest, t.size());
    const auto bucket = runner.bucket(int64_t(seqs.tokens.size()), widest);
    const auto want = eager_step(m, cache, seqs, bucket);
    // Erase what the eager step wrote: the replay must write this step's K/V again (each query
    // attends to its own key), or its logits differ.
    const auto slots = paged_decode_inputs(cache, seqs.batch, bucket.first, bucket.second)
                           .write_slots.narrow(0, 0, int64_t(seqs.tokens.size()))
                           .to(at::kCUDA);
    for (int64_t l = 0; l < m->config().num_layers; ++l) {
      if (cache.has_k(l)) cache.k_pool(l).index_fill_(0, slots, 0);
      if (cache.has_v(l)) cache.v_pool(l).index_fill_(0, slots, 0);
    }
    EXPECT_TRUE(at::equal(runner.run(seqs.tokens, seqs.batch), want)) << "step " << salt;
  }
  EXPECT_EQ(runner.graphs(), 2);
  EXPECT_EQ(runner.bucket(3, 8), std::make_pair(int64_t(4), int64_t(16)));
  EXPECT_EQ(runner.bucket(5, 24), std::make_pair(int64_t(8), int64_t(32)));
}

// The engine with graphs: 10 requests of 3 to 120 prompt tokens and 6 to 42 new tokens through 8
// running sequences all finish with their length, over several captured buckets.
TEST_P(ServeGraphs, EngineServesEveryRequest) {
  SKIP_WITHOUT_KERNELS();
  auto m = random_model(GetParam());
  serve::EngineOptions o;
  o.num_blocks = 256;
  o.max_seqs = 8;
  o.prefill_chunk = 48;
  o.max_model_len = 512;
  serve::Engine e(m, o);
  std::map<uint64_t, std::vector<int32_t>> out;
  for (int i = 0; i < 10; ++i) {
    serve::EngineRequest r;
    for (int j = 0; j < 3 + 13 * i; ++j) r.prompt.push_back((7 * i + 31 * j) % 512);
    r.max_tokens = 6 + 4 * i;
    const uint64_t key = uint64_t(i);
    e.add(r, [&out, key](const serve::SeqOutput& s) {
      out[key].insert(out[key].end(), s.tokens.begin(), s.tokens.end());
    });
  }
  while (e.step()) {
  }
  ASSERT_EQ(out.size(), 10u);
  for (const auto& [key, tokens] : out) EXPECT_EQ(tokens.size(), size_t(6 + 4 * key)) << key;
  EXPECT_GE(e.stats().decode_graphs, 3);
  EXPECT_EQ(e.stats().blocks_free, 256);
}

INSTANTIATE_TEST_SUITE_P(Variants, ServeGraphs,
                         ::testing::Values(Variant::None, Variant::UniAttn, Variant::Cla),
                         [](const auto& i) { return variant_name(i.param); });

}  // namespace
}  // namespace uniattn
