// The Tokenizer base class and load_tokenizer_dir.
#include <nlohmann/json.hpp>

#include "internal.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn {

Tokenizer::~Tokenizer() = default;
std::optional<int32_t> Tokenizer::bos_id() const { return bos_; }
std::optional<int32_t> Tokenizer::eos_id() const { return eos_; }
std::optional<int32_t> Tokenizer::pad_id() const { return pad_; }
bool Tokenizer::adds_bos() const { return adds_bos_; }

void Tokenizer::set_special_ids(std::optional<int32_t> bos, std::optional<int32_t> eos,
                                std::optional<int32_t> pad) {
  for (const auto& id : {bos, eos, pad}) {
    UNIATTN_CHECK(!id || (*id >= 0 && *id < vocab_size()), "tokenizer: special token id ", *id,
                  " is outside the vocabulary [0, ", vocab_size(), ")");
  }
  bos_ = bos;
  eos_ = eos;
  pad_ = pad;
}

namespace {

using nlohmann::json;

json read_json(const std::filesystem::path& p) {
  json j = json::parse(read_text_file(p, std::size_t{64} << 20), nullptr, false);
  UNIATTN_CHECK(!j.is_discarded() && j.is_object(), p.string(), ": not a valid JSON object");
  return j;
}

// tokenizer_config.json names special tokens either as a string or as {"content": ...}.
std::optional<int32_t> config_token(const Tokenizer& t, const json& cfg, const char* key,
                                    const std::filesystem::path& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
  const json& v = cfg[key];
  std::string piece;
  if (v.is_string()) {
    piece = v.get<std::string>();
  } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    piece = v["content"].get<std::string>();
  } else {
    fail(file.string(), ": ", key, ": expected a string or {\"content\": ...}");
  }
  auto id = t.find_token(piece);
  UNIATTN_CHECK(id.has_value(), file.string(), ": ", key, " '", piece,
                "' is not in the tokenizer's vocabulary");
  return id;
}

// config.json gives ids, sometimes a list of them (several eos ids); the first is taken.
std::optional<int32_t> config_id(const json& cfg, const char* key,
                                 const std::filesystem::path& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
  const json& v = cfg[key].is_array() && !cfg[key].empty() ? cfg[key][0] : cfg[key];
  UNIATTN_CHECK(v.is_number_integer(), file.string(), ": ", key, ": expected an integer id");
  return v.get<int32_t>();
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_dir(const std::filesystem::path& dir) {
  std::unique_ptr<Tokenizer> t;
  if (std::filesystem::is_regular_file(dir / "tokenizer.json")) {
    t = load_tokenizer_json(dir / "tokenizer.json");
  } else if (std::filesystem::is_regular_file(dir / "tokenizer.model")) {
    t = load_sentencepiece(dir / "tokenizer.model");
  } else {
    fail(dir.string(), ": no tokenizer.json or tokenizer.model in this directory");
  }
  auto bos = t->bos_id(), eos = t->eos_id(), pad = t->pad_id();
  std::optional<int32_t> cfg_bos, cfg_eos, cfg_pad;
  if (const auto p = dir / "tokenizer_config.json"; std::filesystem::is_regular_file(p)) {
    const json cfg = read_json(p);
    cfg_bos = config_token(*t, cfg, "bos_token", p);
    cfg_eos = config_token(*t, cfg, "eos_token", p);
    cfg_pad = config_token(*t, cfg, "pad_token", p);
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      t->set_adds_bos(cfg["add_bos_token"].get<bool>());
    }
  }
  if (const auto p = dir / "config.json"; std::filesystem::is_regular_file(p)) {
    const json cfg = read_json(p);
    if (!cfg_bos) cfg_bos = config_id(cfg, "bos_token_id", p);
    if (!cfg_eos) cfg_eos = config_id(cfg, "eos_token_id", p);
    if (!cfg_pad) cfg_pad = config_id(cfg, "pad_token_id", p);
  }
  t->set_special_ids(cfg_bos ? cfg_bos : bos, cfg_eos ? cfg_eos : eos, cfg_pad ? cfg_pad : pad);
  return t;
}

}  // namespace uniattn
