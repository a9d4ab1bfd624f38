// Shared helpers for the LibTorch-side tests.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "model/load/tensor_bytes.h"
#include "test_util.h"
#include "uniattn/config/model_config.h"
#include "uniattn/io/safetensors.h"

namespace uniattn::test {

// All tensors of a safetensors file written by a fixture script.
inline std::map<std::string, at::Tensor> read_tensors(const std::filesystem::path& p) {
  auto f = SafetensorsFile::open(p);
  std::map<std::string, at::Tensor> out;
  for (const auto& v : f.tensors()) out[v.name] = tensor_from_view(v);
  return out;
}

// A tiny LLaMA (hidden 32, 4 heads over 2 KV heads of 8, MLP 48, vocab 64, no sliding layers).
inline ModelConfig tiny_llama_config(int64_t layers) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.sliding_layers.assign(layers, false);
  return c;
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace uniattn::test
