// Loading and saving models: Hugging Face directories (config.json + safetensors, single or
// sharded) and GGUF files (dequantised on load).
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "uniattn/model/causal_lm.h"
#include "uniattn/io/tokenizer.h"

namespace uniattn {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // Turns a base checkpoint into a unified model (or replaces a unified checkpoint's spec).
  // Follower q/k projections in the checkpoint are then dropped, and missing W_c start at zero.
  std::optional<UniAttnSpec> uniattn;
};

// What loading did beyond a one-to-one copy.
struct LoadReport {
  std::vector<std::string> dropped;      // checkpoint tensors the unified model has no use for
  std::vector<std::string> zero_filled;  // W_c weights absent from the checkpoint
};

// Loads `path`: a directory with config.json and model.safetensors (or a sharded index), or a
// .gguf file. Throws uniattn::Error on a malformed file, a missing or unexpected tensor, or a
// shape that does not match the config (naming the tensor and both shapes).
CausalLM load_model(const std::filesystem::path& path, const LoadOptions& options = {},
                    LoadReport* report = nullptr);
// The config a checkpoint describes (config.json, or a GGUF's metadata).
ModelConfig load_config(const std::filesystem::path& path);

// Writes config.json and model.safetensors (sharded past `max_shard_bytes`) into `dir`, each file
// atomically. `dtype` is the stored precision.
void save_model(CausalLM& model, const std::filesystem::path& dir,
                at::ScalarType dtype = at::kBFloat16, std::size_t max_shard_bytes = 5ull << 30);

// The tokenizer of a checkpoint: tokenizer.json / tokenizer.model in a directory, or the
// vocabulary embedded in a GGUF file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

// Converts a GGUF file into a Hugging Face directory (config.json, model.safetensors,
// tokenizer files) stored in `dtype`.
void convert_gguf(const std::filesystem::path& gguf, const std::filesystem::path& out_dir,
                  at::ScalarType dtype = at::kBFloat16);

}  // namespace uniattn
