#include "uniattn/model/checkpoint.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

#include "model/hf_remote_code.h"
#include "tensor_bytes.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/gguf.h"
#include "uniattn/io/safetensors.h"
#include "weights.h"

namespace uniattn {

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

bool is_gguf(const fs::path& p) { return fs::is_regular_file(p) && p.extension() == ".gguf"; }

bool file_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

ojson read_json_object(const fs::path& file) {
  ojson j;
  try {
    j = ojson::parse(read_text_file(file, 16u << 20));
  } catch (const ojson::exception& e) {
    fail(file.string(), ": not valid JSON: ", e.what());
  }
  UNIATTN_CHECK(j.is_object(), file.string(), ": not a JSON object");
  return j;
}

// generation_config.json: what the source says (GenerationConfig::load) over the other keys of
// its own file (e.g. cache_implementation, which uniattn does not read but transformers does);
// without a source the config.json ids, as transformers' GenerationConfig.from_model_config.
void write_generation_config(const ModelConfig& c, const fs::path& source, const fs::path& dir) {
  GenerationConfig g;
  ojson j = ojson::object();
  if (source.empty()) {
    g.bos_token_id = c.bos_token_id;
    g.pad_token_id = c.pad_token_id;
    for (int64_t id : c.eos_token_ids) g.add_eos(id);
  } else {
    g = GenerationConfig::load(source);
    if (!is_gguf(source) && file_exists(source / "generation_config.json"))
      j = read_json_object(source / "generation_config.json");
  }
  const ojson ours = ojson::parse(g.to_json().dump());
  for (const auto& [key, value] : ours.items()) j[key] = value;
  write_text_atomic(dir / "generation_config.json", j.dump(2) + "\n");
}

// Copies a file byte for byte, atomically (the copy is complete or absent).
void copy_file_atomic(const fs::path& from, const fs::path& to) {
  std::ifstream in(from, std::ios::binary);
  UNIATTN_CHECK(in.good(), "cannot read ", from.string());
  write_file_atomic(to, [&](std::FILE* out) {
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
      const auto n = static_cast<size_t>(in.gcount());
      UNIATTN_CHECK(std::fwrite(buf, 1, n, out) == n, "cannot write ", to.string());
    }
    UNIATTN_CHECK(in.eof(), "cannot read ", from.string());
  });
}

// The files transformers' tokenizers read from a model directory.
constexpr const char* kTokenizerFiles[] = {
    "tokenizer.json",          "tokenizer.model",   "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json",      "vocab.json",        "merges.txt"};

bool has_tokenizer(const fs::path& source) {
  if (is_gguf(source)) return GgufFile::open(source).has("tokenizer.ggml.tokens");
  return file_exists(source / "tokenizer.json") || file_exists(source / "tokenizer.model");
}

void save_dir_tokenizer(const fs::path& source, const fs::path& dir) {
  std::error_code ec;
  if (fs::equivalent(source, dir, ec)) return;  // saved in place: the files are there
  // Without a tokenizer_config.json of its own, the tokenizer writes one (its bos/eos/pad,
  // which load_tokenizer_dir may have taken from config.json).
  if (!file_exists(source / "tokenizer_config.json")) load_tokenizer_dir(source)->save(dir);
  for (const char* name : kTokenizerFiles)
    if (file_exists(source / name)) copy_file_atomic(source / name, dir / name);
}

// A GGUF's tokenizer as Tokenizer::save writes it, and in tokenizer_config.json the chat
// template and the special tokens transformers' GGUF loader takes from the metadata.
void save_gguf_tokenizer(const fs::path& gguf, const fs::path& dir) {
  gguf_tokenizer(gguf)->save(dir);
  const GgufFile f = GgufFile::open(gguf);
  const fs::path file = dir / "tokenizer_config.json";
  ojson cfg = file_exists(file) ? read_json_object(file) : ojson::object();
  if (f.has("tokenizer.chat_template"))
    cfg["chat_template"] = f.get_string("tokenizer.chat_template");
  const auto& tokens = f.at("tokenizer.ggml.tokens").as_string_array();
  static constexpr std::pair<const char*, const char*> kSpecial[] = {{"bos_token", "bos"},
                                                                     {"eos_token", "eos"},
                                                                     {"unk_token", "unknown"},
                                                                     {"pad_token", "padding"}};
  for (const auto& [name, key] : kSpecial) {
    const std::string id_key = std::string("tokenizer.ggml.") + key + "_token_id";
    if (cfg.contains(name) || !f.has(id_key)) continue;
    const int64_t id = f.get_int(id_key);
    UNIATTN_CHECK(id >= 0 && id < static_cast<int64_t>(tokens.size()), gguf.string(), ": ", id_key,
                  " = ", id, " lies outside the vocabulary");
    cfg[name] = tokens[static_cast<size_t>(id)];
  }
  write_text_atomic(file, cfg.dump(2) + "\n");
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

void save_model(CausalLM& model, const std::filesystem::path& dir, const SaveOptions& o) {
  std::filesystem::create_directories(dir);
  std::vector<TensorToWrite> tensors;
  std::vector<at::Tensor> keep;
  auto params = model->named_parameters(true);
  keep.reserve(params.size());
  for (const auto& item : params) {
    keep.emplace_back();
    tensors.push_back(tensor_to_write(item.key(), item.value().to(o.dtype), keep.back()));
  }
  write_checkpoint(dir, tensors, o.max_shard_bytes, {{"format", "pt"}});
  ModelConfig c = model->config();
  c.torch_dtype = o.dtype == at::kBFloat16 ? "bfloat16"
                  : o.dtype == at::kHalf   ? "float16"
                                           : "float32";
  save_hf_config(c, dir);  // with the modeling files of unified variants
  write_generation_config(c, o.source, dir);
  if (!o.source.empty() && has_tokenizer(o.source)) save_tokenizer(o.source, dir);
}

void save_model(CausalLM& model, const std::filesystem::path& dir, at::ScalarType dtype,
                std::size_t max_shard_bytes) {
  SaveOptions o;
  o.dtype = dtype;
  o.max_shard_bytes = max_shard_bytes;
  save_model(model, dir, o);
}

void save_tokenizer(const std::filesystem::path& source, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  if (is_gguf(source)) return save_gguf_tokenizer(source, dir);
  UNIATTN_CHECK(std::filesystem::is_directory(source), source.string(),
                " is neither a checkpoint directory nor a .gguf file");
  UNIATTN_CHECK(has_tokenizer(source), source.string(),
                " has no tokenizer (tokenizer.json or tokenizer.model)");
  save_dir_tokenizer(source, dir);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path) {
  if (is_gguf(path)) return gguf_tokenizer(path);
  return load_tokenizer_dir(path);
}

void convert_gguf(const std::filesystem::path& gguf, const std::filesystem::path& out_dir,
                  at::ScalarType dtype) {
  gguf_tokenizer(gguf);  // fail early, before the slow part
  auto model = load_model(gguf, LoadOptions{});
  SaveOptions o;
  o.dtype = dtype;
  o.source = gguf;
  save_model(model, out_dir, o);
}

}  // namespace uniattn
