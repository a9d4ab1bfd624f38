#include "uniattn/config/generation_config.h"

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>
#include <system_error>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/gguf.h"
#include "uniattn/io/json_depth.h"

namespace uniattn {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// transformers' tokenizers number tokens with int32; more end tokens than this is no real model.
constexpr int64_t kMaxTokenId = (int64_t{1} << 31) - 1;
constexpr size_t kMaxEndTokens = 1024;
// Bounds on stop_strings: every stop string is matched against the text at each token, so an
// unbounded list from a file would cost unbounded time per token. Real checkpoints name a few
// short strings.
constexpr size_t kMaxStopStrings = 64;
constexpr size_t kMaxStopStringBytes = 1024;
constexpr size_t kMaxJsonBytes = 16u << 20;

json read_json(const fs::path& file) {
  json j;
  try {
    const std::string text = read_text_file(file, kMaxJsonBytes);
    check_json_depth(text, file.string());
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(file.string(), ": not valid JSON: ", e.what());
  }
  UNIATTN_CHECK(j.is_object(), file.string(), ": not a JSON object");
  return j;
}

// The value of `key` when present and not null.
const json* find(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t token_id(const json& v, const std::string& origin, const char* key) {
  UNIATTN_CHECK(v.is_number_integer(), origin, ": '", key, "' must be an integer token id, got ",
                v.dump());
  const bool fits =
      v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(kMaxTokenId) : v.get<int64_t>() >= 0;
  UNIATTN_CHECK(fits, origin, ": '", key, "' = ", v.dump(), " is not a token id (0 to 2^31 - 1)");
  return v.get<int64_t>();
}

std::optional<int64_t> opt_id(const json& j, const char* key, const std::string& origin) {
  const json* v = find(j, key);
  return v ? std::optional<int64_t>(token_id(*v, origin, key)) : std::nullopt;
}

// eos_token_id: one id, or a list of them (LLaMA-3-Instruct, Gemma).
std::vector<int64_t> end_ids(const json& j, const std::string& origin) {
  const json* v = find(j, "eos_token_id");
  if (!v) return {};
  if (!v->is_array()) return {token_id(*v, origin, "eos_token_id")};
  UNIATTN_CHECK(v->size() <= kMaxEndTokens, origin, ": 'eos_token_id' lists ", v->size(),
                " ids; at most ", kMaxEndTokens, " are accepted");
  std::vector<int64_t> ids;
  for (const auto& x : *v) ids.push_back(token_id(x, origin, "eos_token_id"));
  return ids;
}

// stop_strings: one string, or a list of them (transformers' StopStringCriteria takes either).
std::vector<std::string> stop_texts(const json& j, const std::string& origin) {
  const json* v = find(j, "stop_strings");
  if (!v) return {};
  std::vector<std::string> out;
  auto add = [&](const json& x) {
    UNIATTN_CHECK(x.is_string(), origin,
                  ": 'stop_strings' must be a string or a list of strings, got ", x.dump());
    const auto& s = x.get_ref<const std::string&>();
    UNIATTN_CHECK(!s.empty() && s.size() <= kMaxStopStringBytes, origin,
                  ": 'stop_strings' holds a string of ", s.size(), " bytes; each must have 1 to ",
                  kMaxStopStringBytes);
    if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  };
  if (!v->is_array()) {
    add(*v);
    return out;
  }
  UNIATTN_CHECK(v->size() <= kMaxStopStrings, origin, ": 'stop_strings' lists ", v->size(),
                " strings; at most ", kMaxStopStrings, " are accepted");
  for (const auto& x : *v) add(x);
  return out;
}

std::optional<double> opt_number(const json& j, const char* key, const std::string& origin) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  UNIATTN_CHECK(v->is_number(), origin, ": '", key, "' must be a number, got ", v->dump());
  return v->get<double>();
}

std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& origin) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  UNIATTN_CHECK(v->is_number_integer(), origin, ": '", key, "' must be an integer, got ",
                v->dump());
  UNIATTN_CHECK(!v->is_number_unsigned() || v->get<uint64_t>() <= uint64_t(INT64_MAX), origin,
                ": '", key, "' = ", v->dump(), " is too large");
  return v->get<int64_t>();
}

// The ranges transformers' logits processors accept (TemperatureLogitsWarper, TopKLogitsWarper,
// TopPLogitsWarper, RepetitionPenaltyLogitsProcessor); temperature 0 is read as greedy.
void check_sampling(const GenerationConfig& g, const std::string& origin) {
  if (g.temperature)
    UNIATTN_CHECK(*g.temperature >= 0, origin, ": 'temperature' must be >= 0, got ",
                  *g.temperature);
  if (g.top_p)
    UNIATTN_CHECK(*g.top_p >= 0 && *g.top_p <= 1, origin, ": 'top_p' must lie in [0, 1], got ",
                  *g.top_p);
  if (g.top_k) UNIATTN_CHECK(*g.top_k >= 0, origin, ": 'top_k' must be >= 0, got ", *g.top_k);
  if (g.repetition_penalty)
    UNIATTN_CHECK(*g.repetition_penalty > 0, origin, ": 'repetition_penalty' must be > 0, got ",
                  *g.repetition_penalty);
  if (g.max_new_tokens)
    UNIATTN_CHECK(*g.max_new_tokens >= 0, origin, ": 'max_new_tokens' must be >= 0, got ",
                  *g.max_new_tokens);
}

// A directory: generation_config.json first, then what config.json adds (see the header).
GenerationConfig load_dir(const fs::path& dir) {
  std::error_code ec;
  GenerationConfig g;
  const fs::path gen_file = dir / "generation_config.json";
  if (fs::exists(gen_file, ec))
    g = GenerationConfig::from_json(read_json(gen_file), gen_file.string());
  const fs::path cfg_file = dir / "config.json";
  if (fs::exists(cfg_file, ec)) {
    const json cfg = read_json(cfg_file);
    for (int64_t id : end_ids(cfg, cfg_file.string())) g.add_eos(id);
    if (!g.bos_token_id) g.bos_token_id = opt_id(cfg, "bos_token_id", cfg_file.string());
    if (!g.pad_token_id) g.pad_token_id = opt_id(cfg, "pad_token_id", cfg_file.string());
  }
  return g;
}

// A GGUF token-id key, checked against the vocabulary when the file has one.
std::optional<int64_t> gguf_id(const GgufFile& f, const std::string& key) {
  if (!f.has(key)) return std::nullopt;
  const GgufValue& v = f.at(key);
  UNIATTN_CHECK(v.is_integer(), f.path().string(), ": ", key, " is ", v.describe(),
                ", not an integer token id");
  const int64_t id = v.as_int();
  int64_t vocab = kMaxTokenId + 1;
  if (f.has("tokenizer.ggml.tokens"))
    vocab = static_cast<int64_t>(f.at("tokenizer.ggml.tokens").size());
  UNIATTN_CHECK(id >= 0 && id < vocab, f.path().string(), ": ", key, " = ", id,
                " lies outside the vocabulary of ", vocab, " tokens");
  return id;
}

// A GGUF float as the decimal it was written from: FLOAT32 0.7 reads back as 0.699999988, which
// would then land in generation_config.json; the shortest decimal that rounds to the same float
// is the value the converter was given.
double gguf_float(const GgufFile& f, const std::string& key) {
  const GgufValue& v = f.at(key);
  if (v.type() != GgufValueType::FLOAT32) return v.as_float();
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, static_cast<float>(v.as_float())).ptr;
  double d = v.as_float();
  std::from_chars(buf, end, d);  // locale-independent, unlike strtod
  return d;
}

GenerationConfig load_gguf(const fs::path& path) {
  const GgufFile f = GgufFile::open(path);
  GenerationConfig g;
  // llama.cpp ends generation at each of these (llama_vocab::is_eog).
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"})
    if (auto id = gguf_id(f, key)) g.add_eos(*id);
  g.bos_token_id = gguf_id(f, "tokenizer.ggml.bos_token_id");
  g.pad_token_id = gguf_id(f, "tokenizer.ggml.padding_token_id");
  if (f.has("general.sampling.temp")) {
    g.temperature = gguf_float(f, "general.sampling.temp");
    g.do_sample = *g.temperature > 0;
  }
  if (f.has("general.sampling.top_k")) g.top_k = f.at("general.sampling.top_k").as_int();
  if (f.has("general.sampling.top_p")) g.top_p = gguf_float(f, "general.sampling.top_p");
  if (f.has("general.sampling.penalty_repeat"))
    g.repetition_penalty = gguf_float(f, "general.sampling.penalty_repeat");
  check_sampling(g, path.string() + ": general.sampling");
  return g;
}

}  // namespace

GenerationConfig GenerationConfig::from_json(const json& j, const std::string& origin) {
  UNIATTN_CHECK(j.is_object(), origin, ": not a JSON object");
  GenerationConfig g;
  for (int64_t id : end_ids(j, origin)) g.add_eos(id);
  g.bos_token_id = opt_id(j, "bos_token_id", origin);
  g.pad_token_id = opt_id(j, "pad_token_id", origin);
  g.stop_strings = stop_texts(j, origin);
  if (const json* v = find(j, "do_sample")) {
    UNIATTN_CHECK(v->is_boolean(), origin, ": 'do_sample' must be true or false, got ", v->dump());
    g.do_sample = v->get<bool>();
  }
  g.temperature = opt_number(j, "temperature", origin);
  g.top_p = opt_number(j, "top_p", origin);
  g.repetition_penalty = opt_number(j, "repetition_penalty", origin);
  g.top_k = opt_int(j, "top_k", origin);
  g.max_new_tokens = opt_int(j, "max_new_tokens", origin);
  check_sampling(g, origin);
  return g;
}

GenerationConfig GenerationConfig::load(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_dir(path);
  UNIATTN_CHECK(fs::is_regular_file(path, ec), path.string(),
                " is neither a checkpoint directory nor a file");
  return load_gguf(path);
}

void GenerationConfig::add_eos(int64_t id) {
  if (std::find(eos_token_ids.begin(), eos_token_ids.end(), id) == eos_token_ids.end())
    eos_token_ids.push_back(id);
}

json GenerationConfig::to_json() const {
  json j = json::object();
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  if (!stop_strings.empty()) j["stop_strings"] = stop_strings;
  if (do_sample) j["do_sample"] = *do_sample;
  if (temperature) j["temperature"] = *temperature;
  if (top_k) j["top_k"] = *top_k;
  if (top_p) j["top_p"] = *top_p;
  if (repetition_penalty) j["repetition_penalty"] = *repetition_penalty;
  if (max_new_tokens) j["max_new_tokens"] = *max_new_tokens;
  return j;
}

}  // namespace uniattn
