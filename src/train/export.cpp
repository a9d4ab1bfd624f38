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
  save_model(model, dir, save_dtype(c));
  if (c.data.format != "text") return;
  // With the tokenizer beside it, the directory serves generation and evaluation as it is; the
  // weights are what matters, so a missing tokenizer only warns.
  try {
    load_tokenizer(c.data.tokenizer.empty() ? c.model.path : c.data.tokenizer)->save(dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "[train] warning: tokenizer not copied: %s\n", e.what());
  }
}

}  // namespace uniattn::train_detail
