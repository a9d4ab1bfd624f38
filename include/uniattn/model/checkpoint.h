// Loading and saving models: Hugging Face directories (config.json + safetensors, single or
// sharded) and GGUF files (dequantised on load).
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "uniattn/io/tokenizer.h"
#include "uniattn/model/causal_lm.h"

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

struct SaveOptions {
  at::ScalarType dtype = at::kBFloat16;  // the stored precision
  std::size_t max_shard_bytes = 5ull << 30;
  // The checkpoint the model was loaded from (a directory or a .gguf file), whose generation
  // settings and tokenizer the saved directory carries over; empty: none.
  std::filesystem::path source;
};

// Writes into `dir` (created if needed), each file atomically: config.json, model.safetensors
// (sharded past max_shard_bytes) and generation_config.json, which holds
// GenerationConfig::load(source) over the other keys of the source's own generation_config.json,
// or without a source the model config's bos/eos/pad ids. With a source that has a tokenizer,
// also save_tokenizer(source, dir). A unified model (variant not None) also gets the transformers
// modeling files of python/uniattn_hf/ (configuration_uniattn.py, modeling_uniattn.py, built
// into the library) and `auto_map` in config.json, so that transformers'
// AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True) loads it. Throws
// uniattn::Error when a file cannot be written or a source file is malformed.
void save_model(CausalLM& model, const std::filesystem::path& dir, const SaveOptions& options);
// save_model with SaveOptions{dtype, max_shard_bytes} and no source.
void save_model(CausalLM& model, const std::filesystem::path& dir,
                at::ScalarType dtype = at::kBFloat16, std::size_t max_shard_bytes = 5ull << 30);

// Writes the tokenizer of checkpoint `source` into `dir` with what tools read beside the
// vocabulary (chat template, special tokens). From a directory its tokenizer files are copied as
// they are (tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json,
// chat_template.jinja, ...), a tokenizer_config.json written by Tokenizer::save where it has none.
// From a .gguf file the tokenizer is rebuilt (Tokenizer::save) and tokenizer_config.json gains
// the metadata's tokenizer.chat_template and the special tokens that
// tokenizer.ggml.{bos,eos,unknown,padding}_token_id name (the ones transformers' GGUF loader
// reads, integrations/ggml.py). Throws uniattn::Error when the source has no
// tokenizer, a file is malformed or cannot be written.
void save_tokenizer(const std::filesystem::path& source, const std::filesystem::path& dir);

// The tokenizer of a checkpoint: tokenizer.json / tokenizer.model in a directory, or the
// vocabulary embedded in a GGUF file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

// Converts a GGUF file into a Hugging Face directory stored in `dtype`: save_model with the GGUF
// as source (config.json, model.safetensors, generation_config.json with llama.cpp's end tokens,
// tokenizer files with the chat template). Throws uniattn::Error as load_model and save_model.
void convert_gguf(const std::filesystem::path& gguf, const std::filesystem::path& out_dir,
                  at::ScalarType dtype = at::kBFloat16);

}  // namespace uniattn
