// The Tokenizer base class and load_tokenizer_dir.
#include <nlohmann/json.hpp>

#include "internal.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"

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
  const std::string text = read_text_file(p, std::size_t{64} << 20);
  check_json_depth(text, p.string());
  json j = json::parse(text, nullptr, false);
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

// tokenizer.model standing in for a tokenizer.json we cannot run: the post-processor's template
// (what HF adds around the text, usually the bos) is kept, after checking that its tokens and the
// added tokens are the model's pieces of the same ids.
std::unique_ptr<Tokenizer> sentencepiece_for(const std::filesystem::path& dir,
                                             const tok::Unsupported& why) {
  auto t = load_sentencepiece(dir / "tokenizer.model");
  tok::JsonTemplate tpl;
  try {
    tpl = tok::read_json_template(dir / "tokenizer.json");
  } catch (const tok::Unsupported& e) {
    fail(why.what(), "; tokenizer.model cannot stand in for it either: ", e.what());
  }
  auto check = [&](const std::vector<int32_t>& ids, const std::vector<std::string>& names) {
    for (std::size_t k = 0; k < ids.size(); ++k) {
      UNIATTN_CHECK(ids[k] < t->vocab_size() && t->token_text(ids[k]) == names[k], why.what(),
                    "; and tokenizer.model cannot stand in for it: the post-processor's token '",
                    names[k], "' (id ", ids[k], ") is not that id's piece in tokenizer.model");
    }
  };
  check(tpl.prefix, tpl.prefix_tokens);
  check(tpl.suffix, tpl.suffix_tokens);
  // Added tokens tokenizer.model lacks would silently become other ids.
  for (const auto& [content, id] : tpl.added) {
    UNIATTN_CHECK(id < t->vocab_size() && t->token_text(id) == content, why.what(),
                  "; and tokenizer.model cannot stand in for it: the added token '", content,
                  "' (id ", id, ") is not that id's piece in tokenizer.model");
  }
  // No post-processor adds nothing, as with an empty template.
  dynamic_cast<tok::TemplatedTokenizer&>(*t).set_template(tpl.prefix, tpl.suffix);
  t->set_adds_bos(!tpl.prefix.empty());
  t->set_load_note(std::string(why.what()) +
                   "; using tokenizer.model (SentencePiece) with the tokenizer.json template");
  return t;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_dir(const std::filesystem::path& dir) {
  std::unique_ptr<Tokenizer> t;
  const bool has_model = std::filesystem::is_regular_file(dir / "tokenizer.model");
  if (std::filesystem::is_regular_file(dir / "tokenizer.json")) {
    try {
      t = load_tokenizer_json(dir / "tokenizer.json");
    } catch (const tok::Unsupported& e) {
      if (!has_model) fail(e.what(), " (and there is no tokenizer.model to fall back to)");
      t = sentencepiece_for(dir, e);
    }
  } else if (has_model) {
    t = load_sentencepiece(dir / "tokenizer.model");
  } else {
    fail(dir.string(), ": no tokenizer.json or tokenizer.model in this directory");
  }
  auto bos = t->bos_id(), eos = t->eos_id(), pad = t->pad_id();
  std::optional<int32_t> cfg_bos, cfg_eos, cfg_pad;
  std::optional<bool> add_bos_token, add_eos_token;
  if (const auto p = dir / "tokenizer_config.json"; std::filesystem::is_regular_file(p)) {
    const json cfg = read_json(p);
    cfg_bos = config_token(*t, cfg, "bos_token", p);
    cfg_eos = config_token(*t, cfg, "eos_token", p);
    cfg_pad = config_token(*t, cfg, "pad_token", p);
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      add_bos_token = cfg["add_bos_token"].get<bool>();
    }
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) {
      add_eos_token = cfg["add_eos_token"].get<bool>();
    }
  }
  if (const auto p = dir / "config.json"; std::filesystem::is_regular_file(p)) {
    const json cfg = read_json(p);
    if (!cfg_bos) cfg_bos = config_id(cfg, "bos_token_id", p);
    if (!cfg_eos) cfg_eos = config_id(cfg, "eos_token_id", p);
    if (!cfg_pad) cfg_pad = config_id(cfg, "pad_token_id", p);
  }
  t->set_special_ids(cfg_bos ? cfg_bos : bos, cfg_eos ? cfg_eos : eos, cfg_pad ? cfg_pad : pad);
  if (add_bos_token || add_eos_token) {
    // transformers (TokenizersBackend.update_post_processor): an explicit add_bos_token or
    // add_eos_token replaces the post-processor by "[bos] $A [eos]"; a missing token is not added.
    std::vector<int32_t> prefix, suffix;
    if (add_bos_token.value_or(false) && t->bos_id()) prefix.push_back(*t->bos_id());
    if (add_eos_token.value_or(false) && t->eos_id()) suffix.push_back(*t->eos_id());
    t->set_adds_bos(!prefix.empty());
    if (auto* tt = dynamic_cast<tok::TemplatedTokenizer*>(t.get())) {
      tt->set_template(std::move(prefix), std::move(suffix));
    }
  }
  return t;
}

}  // namespace uniattn
