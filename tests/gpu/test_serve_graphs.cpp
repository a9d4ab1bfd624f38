// uniattn-serve's decode runner on a GPU: a decode step replayed from its CUDA graph equals the
// same step run eagerly with the same (padded) inputs, bit for bit, when the replay gets new
// lengths, tokens and block tables; each (rows, table width) bucket is captured once. For none,
// uniattn and cla; a random bf16 model with head_dim 64 takes the CUDA decode kernels through
// block tables. And the engine with graphs serves requests that join and leave to completion.
// Chunked paged prefill through the kernels row by row (src/attention/prefill_rows.h) meets the
// FlashAttention rule against an fp32 copy of the model, with SDPA's masked bf16 path as the
// same-dtype reference.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "serve/decode_runner.h"
#include "shared_softmax.h"
#include "uniattn/config/superblock.h"
#include "uniattn/model/kernel_paths.h"
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

// A variant's model (built outside InferenceMode), then under InferenceMode for the rest of the
// test: a pool of 64 blocks of 16 holding the five prefilled sequences, and a decode runner over
// it (8 rows, 32 blocks at most).
struct Served {
  CausalLM m;
  c10::InferenceMode guard;
  PagedKVCache cache;
  Sequences seqs;
  serve::DecodeRunner runner;
  explicit Served(Variant v)
      : m(random_model(v)),
        cache(m->config(), 64, 16, at::kBFloat16, at::kCUDA),
        seqs(prefill(m, cache)),
        runner(m, cache, 8, 32, true) {}
};

// The runner's step equals the same step run eagerly on its bucket. What the eager step wrote is
// erased first: the replay must write this step's K/V again (each query attends to its own key),
// or its logits differ.
void expect_replay_equals_eager(Served& s, int64_t step) {
  auto& m = s.m;
  auto& cache = s.cache;
  auto& seqs = s.seqs;
  auto& runner = s.runner;
  int64_t widest = 0;
  for (const auto& t : seqs.batch.block_tables) widest = std::max<int64_t>(widest, t.size());
  const auto bucket = runner.bucket(int64_t(seqs.tokens.size()), widest);
  const auto want = eager_step(m, cache, seqs, bucket);
  const auto slots = paged_decode_inputs(cache, seqs.batch, bucket.first, bucket.second)
                         .write_slots.narrow(0, 0, int64_t(seqs.tokens.size()))
                         .to(at::kCUDA);
  for (int64_t l = 0; l < m->config().num_layers; ++l) {
    if (cache.has_k(l)) cache.k_pool(l).index_fill_(0, slots, 0);
    if (cache.has_v(l)) cache.v_pool(l).index_fill_(0, slots, 0);
  }
  EXPECT_TRUE(at::equal(runner.run(seqs.tokens, seqs.batch), want)) << "step " << step;
}

TEST_P(ServeGraphs, ReplayEqualsEagerStep) {
  SKIP_WITHOUT_KERNELS();
  Served s(GetParam());
  auto& seqs = s.seqs;
  auto& runner = s.runner;
  seqs.step(5, 1);
  const auto first = runner.run(seqs.tokens, seqs.batch).clone();  // captured (rows 8)
  EXPECT_EQ(runner.graphs(), 1);
  // The same step again (it rewrites the same K/V): the replay gives the warm-up's logits.
  EXPECT_TRUE(at::equal(runner.run(seqs.tokens, seqs.batch), first));
  for (int64_t salt = 2; salt < 6; ++salt) {  // new tokens and lengths; 3 rows: bucket of 4
    seqs.step(salt < 4 ? 5 : 3, salt);
    expect_replay_equals_eager(s, salt);
  }
  EXPECT_EQ(runner.graphs(), 2);
  EXPECT_EQ(runner.bucket(3, 8), std::make_pair(int64_t(4), int64_t(16)));
  EXPECT_EQ(runner.bucket(5, 24), std::make_pair(int64_t(8), int64_t(32)));
}

// Buckets captured before any request (padding rows only) replay real steps as buckets captured
// on first use do, and nothing more is captured for them.
TEST_P(ServeGraphs, StartupCaptureReplaysRealSteps) {
  SKIP_WITHOUT_KERNELS();
  Served s(GetParam());
  auto& seqs = s.seqs;
  auto& runner = s.runner;
  EXPECT_EQ(runner.capture_buckets(300), 8);  // rows 1, 2, 4, 8 x widths 16, 32
  for (int64_t salt = 1; salt < 5; ++salt) {
    seqs.step(salt < 3 ? 5 : 2, salt);
    expect_replay_equals_eager(s, salt);
  }
  EXPECT_EQ(runner.graphs(), 8);
  EXPECT_EQ(runner.capture_buckets(300), 0);
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
  o.startup_capture_len = 0;  // each bucket captured on first use, inside the engine's steps
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

// The same model in fp32 (the oracle of the bf16 paths).
CausalLM to_fp32(CausalLM& m) {
  CausalLM f(m->config(), at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  at::NoGradGuard ng;
  auto src = m->named_parameters();
  for (auto& p : f->named_parameters()) p.value().copy_(src[p.key()]);
  f->eval();
  return f;
}

// Three prompts of 40, 75 and 100 tokens, fed 32 tokens per row and paged_forward call: rows of
// different lengths after different contexts in one padded batch. Returns each prompt's logits
// at every position, fp32 [len, V].
std::vector<at::Tensor> chunked_prefill(CausalLM& m, at::ScalarType dtype) {
  PagedKVCache cache(m->config(), 24, 16, dtype, at::kCUDA);
  const std::vector<int64_t> lens{40, 75, 100};
  std::vector<std::vector<at::Tensor>> parts(lens.size());
  for (int64_t pos = 0; pos < 100; pos += 32) {
    PagedBatch pb;
    std::vector<size_t> rows;
    for (size_t i = 0; i < lens.size(); ++i) {
      if (pos >= lens[i]) continue;
      rows.push_back(i);
      std::vector<int32_t> table;
      for (int32_t j = 0; j < 7; ++j) table.push_back(j * 3 + int32_t(2 - i));
      pb.block_tables.push_back(table);
      pb.context_lens.push_back(pos);
      pb.query_lens.push_back(std::min<int64_t>(32, lens[i] - pos));
    }
    const int64_t t = *std::max_element(pb.query_lens.begin(), pb.query_lens.end());
    std::vector<int64_t> ids(rows.size() * size_t(t), 0);
    for (size_t r = 0; r < rows.size(); ++r)
      for (int64_t j = 0; j < pb.query_lens[r]; ++j)
        ids[r * size_t(t) + size_t(j)] = (int64_t(rows[r]) * 13 + (pos + j) * 7) % 512;
    auto input = at::tensor(ids).view({int64_t(rows.size()), t}).to(at::kCUDA);
    auto logits = paged_forward(m, input, cache, pb, false).to(at::kFloat);
    for (size_t r = 0; r < rows.size(); ++r)
      parts[rows[r]].push_back(logits[int64_t(r)].narrow(0, 0, pb.query_lens[r]));
  }
  std::vector<at::Tensor> out;
  for (auto& p : parts) out.push_back(at::cat(p));
  return out;
}

TEST_P(ServeGraphs, ChunkedPrefillKernelsMeetFlashRule) {
  SKIP_WITHOUT_KERNELS();
  auto m = random_model(GetParam());
  auto oracle = to_fp32(m);
  c10::InferenceMode guard;
  const auto want = chunked_prefill(oracle, at::kFloat);
  const uint64_t calls = kernel_call_count(KernelOp::PrefillAttention);
  const auto rows = chunked_prefill(m, at::kBFloat16);
  EXPECT_GT(kernel_call_count(KernelOp::PrefillAttention), calls);
  set_kernel_path_override({std::string("prefill_attention"), std::nullopt});
  const auto sdpa = chunked_prefill(m, at::kBFloat16);
  set_kernel_path_override({});
  for (size_t i = 0; i < want.size(); ++i) {
    const double e_rows = (rows[i] - want[i]).abs().max().item<double>();
    const double e_sdpa = (sdpa[i] - want[i]).abs().max().item<double>();
    EXPECT_LE(e_rows, 2 * e_sdpa) << "prompt " << i << ": kernels " << e_rows << ", SDPA "
                                  << e_sdpa;
    std::printf("prompt %zu: max |logit error| kernels %.4g, SDPA %.4g\n", i, e_rows, e_sdpa);
  }
  // The chunks ran a library (two calls merged by lse) that our kernel validated, so the merge
  // was what the rule above checked.
  const auto status = kernels::prefill_library_status();
  std::printf("prefill library path: %s\n", status.c_str());
  const auto chunks = status.substr(status.find("chunks (T < S)"));
  EXPECT_EQ(chunks.find("current none"), std::string::npos) << status;
  EXPECT_NE(chunks.find("validated"), std::string::npos) << status;
}

INSTANTIATE_TEST_SUITE_P(Variants, ServeGraphs,
                         ::testing::Values(Variant::None, Variant::UniAttn, Variant::Cla),
                         [](const auto& i) { return variant_name(i.param); });

}  // namespace
}  // namespace uniattn
