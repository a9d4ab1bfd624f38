// A downstream app linking the installed uniattn package: builds a small LLaMA-shaped model with
// two SuperBlocks, runs a prefill and one cached decode step, and prints the KV-cache saving.
#include <cstdio>

#include "uniattn/model/causal_lm.h"
#include "uniattn/version.h"

int main() {
  uniattn::ModelConfig c;
  c.arch = uniattn::Arch::Llama;
  c.vocab_size = 128;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 8;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.sliding_layers.assign(c.num_layers, false);
  c.uniattn = uniattn::UniAttnSpec::from_range(uniattn::Variant::UniAttn, 2, 4, 8, c.num_layers);

  uniattn::CausalLM model(c);
  model->eval();
  at::NoGradGuard no_grad;
  uniattn::KVCache cache(c, 1, 32, at::kFloat, at::kCPU);
  auto prompt = at::randint(0, c.vocab_size, {1, 10}, at::TensorOptions().dtype(at::kLong));
  auto logits = model->forward(prompt, &cache);
  auto next = logits.select(1, -1).argmax(-1, true);
  auto step = model->forward(next, &cache);

  uniattn::ModelConfig base = c;
  base.uniattn = {};
  uniattn::KVCache base_cache(base, 1, 32, at::kFloat, at::kCPU);
  std::printf("uniattn %s: %s\n", uniattn::version(), c.uniattn.describe().c_str());
  std::printf("decoded %lld tokens; KV bytes/token %lld vs %lld without SuperBlocks\n",
              static_cast<long long>(cache.length()),
              static_cast<long long>(cache.bytes_per_token()),
              static_cast<long long>(base_cache.bytes_per_token()));
  return step.size(1) == 1 && cache.length() == 11 ? 0 : 1;
}
