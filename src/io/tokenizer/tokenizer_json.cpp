// Loading a HF tokenizer.json (BPE model over byte-level pieces).
#include <nlohmann/json.hpp>

#include "internal.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn {

namespace {

using nlohmann::json;
using tok::PreStep;

constexpr std::size_t kMaxJsonBytes = std::size_t{512} << 20;

struct Ctx {
  std::string file;
  [[noreturn]] void bad(const std::string& key, const std::string& msg) const {
    fail(file, ": ", key, ": ", msg);
  }
  const json& get(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object() || !obj.contains(key))
      bad(where, std::string("missing key '") + key + "'");
    return obj[key];
  }
  bool get_bool(const json& obj, const char* key, bool dflt, const std::string& where) const {
    if (!obj.contains(key) || obj[key].is_null()) return dflt;
    if (!obj[key].is_boolean()) bad(where + "." + key, "expected true/false");
    return obj[key].get<bool>();
  }
  std::string get_string(const json& obj, const char* key, const std::string& where) const {
    const json& v = get(obj, key, where);
    if (!v.is_string()) bad(where + "." + key, "expected a string");
    return v.get<std::string>();
  }
};

void parse_pre(const Ctx& c, const json& p, const std::string& where, std::vector<PreStep>& out) {
  if (!p.is_object()) c.bad(where, "expected an object");
  const std::string type = c.get_string(p, "type", where);
  PreStep s;
  if (type == "Sequence") {
    const json& list = c.get(p, "pretokenizers", where);
    if (!list.is_array()) c.bad(where + ".pretokenizers", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      parse_pre(c, list[i], where + ".pretokenizers[" + std::to_string(i) + "]", out);
    }
    return;
  } else if (type == "ByteLevel") {
    s.kind = PreStep::kByteLevel;
    s.add_prefix_space = c.get_bool(p, "add_prefix_space", false, where);
    s.use_regex = c.get_bool(p, "use_regex", true, where);
  } else if (type == "Digits") {
    s.kind = PreStep::kDigits;
    s.individual_digits = c.get_bool(p, "individual_digits", false, where);
  } else if (type == "Split") {
    s.kind = PreStep::kSplit;
    const json& pat = c.get(p, "pattern", where);
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
      s.pattern = pat["Regex"].get<std::string>();
    } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
      s.pattern = pat["String"].get<std::string>();
      s.pattern_is_regex = false;
    } else {
      c.bad(where + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    UNIATTN_CHECK(!s.pattern.empty(), c.file, ": ", where, ".pattern is empty");
    const std::string b = c.get_string(p, "behavior", where);
    using tok::SplitBehavior;
    if (b == "Isolated")
      s.behavior = SplitBehavior::kIsolated;
    else if (b == "Removed")
      s.behavior = SplitBehavior::kRemoved;
    else if (b == "MergedWithPrevious")
      s.behavior = SplitBehavior::kMergedWithPrevious;
    else if (b == "MergedWithNext")
      s.behavior = SplitBehavior::kMergedWithNext;
    else if (b == "Contiguous")
      s.behavior = SplitBehavior::kContiguous;
    else
      c.bad(where + ".behavior", "unsupported split behavior '" + b + "'");
    s.invert = c.get_bool(p, "invert", false, where);
  } else {
    c.bad(where, "unsupported pre-tokenizer type '" + type +
                     "' (supported: ByteLevel, Split, Digits, Sequence)");
  }
  out.push_back(std::move(s));
}

void check_decoder(const Ctx& c, const json& d, const std::string& where) {
  if (d.is_null()) return;
  const std::string type = c.get_string(d, "type", where);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const json& list = c.get(d, "decoders", where);
    if (!list.is_array()) c.bad(where + ".decoders", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      check_decoder(c, list[i], where + ".decoders[" + std::to_string(i) + "]");
    }
    return;
  }
  c.bad(where, "unsupported decoder type '" + type + "' (supported: ByteLevel)");
}

// Reads a TemplateProcessing "single" template: special tokens, then $A, then special tokens.
void parse_template(const Ctx& c, const json& p, const std::string& where, tok::BpeSpec& spec) {
  const json& single = c.get(p, "single", where);
  const json& specials = c.get(p, "special_tokens", where);
  if (!single.is_array()) c.bad(where + ".single", "expected an array");
  bool seen_a = false;
  for (std::size_t i = 0; i < single.size(); ++i) {
    const std::string w = where + ".single[" + std::to_string(i) + "]";
    const json& item = single[i];
    if (item.is_object() && item.contains("Sequence")) {
      const json& seq = item["Sequence"];
      if (seen_a || !seq.is_object() || seq.value("id", "") != "A") {
        c.bad(w, "only templates of the form 'specials $A specials' are supported");
      }
      seen_a = true;
    } else if (item.is_object() && item.contains("SpecialToken")) {
      const std::string name = c.get_string(item["SpecialToken"], "id", w + ".SpecialToken");
      const json& entry = c.get(specials, name.c_str(), where + ".special_tokens");
      const json& ids = c.get(entry, "ids", where + ".special_tokens." + name);
      if (!ids.is_array()) c.bad(where + ".special_tokens." + name + ".ids", "expected an array");
      for (const json& id : ids) {
        if (!id.is_number_integer())
          c.bad(where + ".special_tokens." + name, "ids must be integers");
        (seen_a ? spec.template_suffix : spec.template_prefix).push_back(id.get<int32_t>());
      }
    } else {
      c.bad(w, "expected a Sequence or SpecialToken item");
    }
  }
  if (!seen_a) c.bad(where + ".single", "has no $A sequence");
  spec.has_template = true;
}

void parse_post(const Ctx& c, const json& p, const std::string& where, tok::BpeSpec& spec) {
  if (p.is_null()) return;
  const std::string type = c.get_string(p, "type", where);
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "TemplateProcessing") {
    if (spec.has_template) c.bad(where, "more than one TemplateProcessing");
    parse_template(c, p, where, spec);
  } else if (type == "Sequence") {
    const json& list = c.get(p, "processors", where);
    if (!list.is_array()) c.bad(where + ".processors", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      parse_post(c, list[i], where + ".processors[" + std::to_string(i) + "]", spec);
    }
  } else {
    c.bad(where, "unsupported post-processor type '" + type +
                     "' (supported: TemplateProcessing, ByteLevel, Sequence)");
  }
}

void parse_model(const Ctx& c, const json& m, tok::BpeSpec& spec) {
  if (!m.is_object()) c.bad("model", "expected an object");
  const std::string type = m.contains("type") && m["type"].is_string()
                               ? m["type"].get<std::string>()
                               : std::string("BPE");
  if (type != "BPE") c.bad("model.type", "unsupported model type '" + type + "' (supported: BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty())) {
      c.bad(std::string("model.") + key, "is not supported (byte-level BPE only)");
    }
  }
  if (c.get_bool(m, "byte_fallback", false, "model")) {
    c.bad("model.byte_fallback", "byte fallback is not supported (byte-level BPE only)");
  }
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0)) {
    c.bad("model.dropout", "BPE dropout is not supported");
  }
  spec.ignore_merges = c.get_bool(m, "ignore_merges", false, "model");

  const json& vocab = c.get(m, "vocab", "model");
  if (!vocab.is_object()) c.bad("model.vocab", "expected an object of piece -> id");
  UNIATTN_CHECK(static_cast<int64_t>(vocab.size()) <= tok::kMaxVocab, c.file, ": model.vocab has ",
                vocab.size(), " entries, more than the limit ", tok::kMaxVocab);
  for (const auto& [piece, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tok::kMaxVocab) {
      c.bad("model.vocab['" + piece + "']", "id must be an integer in [0, 2^24)");
    }
    const auto i = static_cast<std::size_t>(id.get<int64_t>());
    if (i >= spec.vocab.size()) spec.vocab.resize(i + 1);
    if (spec.vocab[i])
      c.bad("model.vocab['" + piece + "']", "id " + std::to_string(i) + " is used twice");
    spec.vocab[i] = piece;
  }
  const json& merges = c.get(m, "merges", "model");
  if (!merges.is_array()) c.bad("model.merges", "expected an array");
  UNIATTN_CHECK(static_cast<int64_t>(merges.size()) <= tok::kMaxMerges, c.file,
                ": model.merges has ", merges.size(), " entries, more than the limit ",
                tok::kMaxMerges);
  spec.merges.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    const std::string w = "model.merges[" + std::to_string(r) + "]";
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const std::size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() ||
          s.find(' ', sp + 1) != std::string::npos) {
        c.bad(w, "'" + s + "' is not of the form 'a b'");
      }
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      spec.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      c.bad(w, "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    const std::string unk = m["unk_token"].get<std::string>();
    for (std::size_t i = 0; i < spec.vocab.size() && !spec.unk; ++i) {
      if (spec.vocab[i] && *spec.vocab[i] == unk) spec.unk = static_cast<int32_t>(i);
    }
    if (!spec.unk) c.bad("model.unk_token", "'" + unk + "' is not in model.vocab");
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& path) {
  Ctx c{path.string()};
  UNIATTN_CHECK(std::filesystem::is_regular_file(path), c.file, ": tokenizer file not found");
  const std::string text = read_text_file(path, kMaxJsonBytes);
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(c.file, ": not valid JSON");
  if (!j.is_object()) fail(c.file, ": expected a JSON object at the top level");

  tok::BpeSpec spec;
  spec.source = c.file;
  parse_model(c, c.get(j, "model", "top level"), spec);
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const std::string t = j["normalizer"].value("type", std::string("?"));
    c.bad("normalizer", "unsupported normalizer type '" + t + "' (only null is supported)");
  }
  bool byte_level = false;
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
    parse_pre(c, j["pre_tokenizer"], "pre_tokenizer", spec.pre);
  }
  for (const PreStep& s : spec.pre) byte_level |= s.kind == PreStep::kByteLevel;
  if (!byte_level)
    c.bad("pre_tokenizer", "has no ByteLevel step; only byte-level BPE is supported");
  if (j.contains("decoder")) check_decoder(c, j["decoder"], "decoder");
  if (j.contains("post_processor")) parse_post(c, j["post_processor"], "post_processor", spec);

  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    const json& added = j["added_tokens"];
    if (!added.is_array()) c.bad("added_tokens", "expected an array");
    UNIATTN_CHECK(static_cast<int64_t>(added.size()) <= tok::kMaxVocab, c.file,
                  ": too many added_tokens");
    for (std::size_t i = 0; i < added.size(); ++i) {
      const std::string w = "added_tokens[" + std::to_string(i) + "]";
      const json& a = added[i];
      tok::AddedToken t;
      const json& id = c.get(a, "id", w);
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tok::kMaxVocab) {
        c.bad(w + ".id", "expected an integer in [0, 2^24)");
      }
      t.id = id.get<int32_t>();
      t.content = c.get_string(a, "content", w);
      t.special = c.get_bool(a, "special", false, w);
      t.lstrip = c.get_bool(a, "lstrip", false, w);
      t.rstrip = c.get_bool(a, "rstrip", false, w);
      if (c.get_bool(a, "single_word", false, w)) c.bad(w + ".single_word", "is not supported");
      spec.added.push_back(std::move(t));
    }
  }
  // The template's leading special token is the bos, as HF's tokenizer applies it.
  if (!spec.template_prefix.empty()) {
    spec.bos = spec.template_prefix.front();
    spec.add_bos = true;
  }
  return tok::build_bpe(std::move(spec));
}

}  // namespace uniattn
