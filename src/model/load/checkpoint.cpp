#include "uniattn/model/checkpoint.h"

#include "tensor_bytes.h"
#include "uniattn/error.h"
#include "uniattn/io/safetensors.h"
#include "weights.h"

namespace uniattn {

namespace {
bool is_gguf(const std::filesystem::path& p) {
  return std::filesystem::is_regular_file(p) && p.extension() == ".gguf";
}
}  // namespace

ModelConfig load_config(const std::filesystem::path& path) {
  if (is_gguf(path)) return gguf_config(path);
  UNIATTN_CHECK(std::filesystem::is_directory(path), path.string(),
                " is neither a checkpoint directory nor a .gguf file");
  return ModelConfig::load(path / "config.json");
}

CausalLM load_model(const std::filesystem::path& path, const LoadOptions& o, LoadReport* report) {
  ModelConfig c = load_config(path);
  if (o.uniattn) {
    c.uniattn = *o.uniattn;
    c.validate();
  }
  CausalLM model(c, at::TensorOptions().dtype(o.dtype).device(o.device));
  auto src = is_gguf(path) ? gguf_source(path, c) : safetensors_source(path);
  load_weights(model, src, report);
  return model;
}

void save_model(CausalLM& model, const std::filesystem::path& dir, at::ScalarType dtype,
                std::size_t max_shard_bytes) {
  std::filesystem::create_directories(dir);
  std::vector<TensorToWrite> tensors;
  std::vector<at::Tensor> keep;
  auto params = model->named_parameters(true);
  keep.reserve(params.size());
  for (const auto& item : params) {
    keep.emplace_back();
    tensors.push_back(tensor_to_write(item.key(), item.value().to(dtype), keep.back()));
  }
  write_checkpoint(dir, tensors, max_shard_bytes, {{"format", "pt"}});
  ModelConfig c = model->config();
  c.torch_dtype = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  c.save(dir / "config.json");
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  if (is_gguf(path)) return gguf_tokenizer(path);
  return load_tokenizer_dir(path);
}

void convert_gguf(const std::filesystem::path& gguf, const std::filesystem::path& out_dir,
                  at::ScalarType dtype) {
  auto tok = gguf_tokenizer(gguf);  // fail early, before the slow part
  auto model = load_model(gguf, LoadOptions{});
  save_model(model, out_dir, dtype);
  tok->save(out_dir);
}

}  // namespace uniattn
