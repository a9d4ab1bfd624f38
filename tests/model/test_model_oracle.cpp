// Our decoders against transformers on the same weights: tiny random LLaMA (llama3 RoPE, GQA),
// Mistral (sliding window shorter than the prompt), Gemma-2 (soft-capping, alternating sliding
// layers, query_pre_attn_scalar) and Gemma-3 (q/k norms, per-type RoPE).
#include <cstdio>

#include "model_test_util.h"
#include "uniattn/model/checkpoint.h"

using namespace uniattn;

namespace {

class TinyModel : public ::testing::TestWithParam<std::string> {};

// fp32 end to end on both sides, so differences come only from summation order: observed
// <= 4e-7 on logits of magnitude ~0.7; 1e-5 leaves margin for other BLAS builds while still
// catching any real mistake (a wrong RoPE or norm moves logits by >1e-2).
constexpr double kTol = 1e-5;

TEST_P(TinyModel, LogitsMatchTransformers) {
  auto dir = test::data_dir() / "models" / GetParam();
  auto oracle = test::read_tensors(dir / "oracle.safetensors");
  auto model = load_model(dir);
  model->eval();
  at::NoGradGuard ng;
  for (auto path : {AttentionPath::Fused, AttentionPath::Reference}) {
    ForwardOptions o;
    o.path = path;
    auto logits = model->forward(oracle["input_ids"], nullptr, o);
    double d = test::max_abs_diff(logits, oracle["logits"]);
    std::printf("%s %s: max |ours - transformers| = %.3g (logit scale %.3g)\n", GetParam().c_str(),
                path == AttentionPath::Fused ? "fused" : "reference", d,
                oracle["logits"].abs().max().item<double>());
    EXPECT_LT(d, kTol);
  }
}

TEST_P(TinyModel, LeftPaddedBatchMatchesTransformers) {
  auto dir = test::data_dir() / "models" / GetParam();
  auto oracle = test::read_tensors(dir / "oracle.safetensors");
  auto model = load_model(dir);
  at::NoGradGuard ng;
  ForwardOptions o;
  o.attention_mask = oracle["attention_mask"];
  auto logits = model->forward(oracle["input_ids"], nullptr, o);
  // Only real tokens are compared: transformers leaves padded rows unspecified.
  auto valid = oracle["attention_mask"].to(at::kBool);
  auto ours = logits.index({valid});
  auto theirs = oracle["logits_padded"].index({valid});
  double d = test::max_abs_diff(ours, theirs);
  std::printf("%s padded: max diff %.3g\n", GetParam().c_str(), d);
  EXPECT_LT(d, kTol);
}

TEST_P(TinyModel, LastOnlyEqualsLastPosition) {
  auto dir = test::data_dir() / "models" / GetParam();
  auto oracle = test::read_tensors(dir / "oracle.safetensors");
  auto model = load_model(dir);
  at::NoGradGuard ng;
  ForwardOptions o;
  o.last_only = true;
  auto last = model->forward(oracle["input_ids"], nullptr, o);
  ASSERT_EQ(last.size(1), 1);
  EXPECT_LT(test::max_abs_diff(last.squeeze(1), oracle["logits"].select(1, -1)), kTol);
}

INSTANTIATE_TEST_SUITE_P(Archs, TinyModel,
                         ::testing::Values("llama", "mistral", "gemma2", "gemma3"));

}  // namespace
