// A source of named tensors (a safetensors checkpoint or a GGUF file) and the copy of its
// tensors into a model's parameters.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "uniattn/model/checkpoint.h"

namespace uniattn {

struct WeightSource {
  std::string origin;  // for messages
  std::vector<std::string> names;
  // The tensor as float32 or its stored dtype, on the CPU, in HF layout.
  std::function<at::Tensor(const std::string&)> get;
  std::function<std::vector<int64_t>(const std::string&)> shape;
};

// Copies every parameter of `model` from `src` (converting dtype/device to the parameter's).
void load_weights(CausalLM& model, const WeightSource& src, LoadReport* report);

WeightSource safetensors_source(const std::filesystem::path& dir);

// GGUF: config from metadata, tensors dequantised and renamed to HF names.
ModelConfig gguf_config(const std::filesystem::path& path);
WeightSource gguf_source(const std::filesystem::path& path, const ModelConfig& config);
std::unique_ptr<Tokenizer> gguf_tokenizer(const std::filesystem::path& path);

}  // namespace uniattn
