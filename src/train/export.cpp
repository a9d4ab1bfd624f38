// The trained model as a loadable model directory (output_dir/final).
#include <cstdio>

#include "components.h"
#include "uniattn/error.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn::train_detail {
namespace {

at::ScalarType save_dtype(const TrainConfig& c) {
  if (c.checkpoint.save_dtype == "bf16") return at::kBFloat16;
  if (c.checkpoint.save_dtype == "f16") return at::kHalf;
  return at::kFloat;
}

}  // namespace

void export_final_model(const TrainConfig& c, CausalLM& model, const std::filesystem::path& dir) {
  SaveOptions o;
  o.dtype = save_dtype(c);
  o.source = c.model.path;  // generation_config.json, tokenizer and chat template of the base model
  save_model(model, dir, o);
  if (c.data.tokenizer.empty()) return;
  // A separately named tokenizer replaces the base model's. The weights are what matters, so a
  // tokenizer that cannot be copied only warns.
  try {
    save_tokenizer(c.data.tokenizer, dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "[train] warning: tokenizer not copied: %s\n", e.what());
  }
}

}  // namespace uniattn::train_detail
