// Loading a HF tokenizer.json with a BPE model: byte-level files (GPT-2, LLaMA-3, Qwen2) and
// SentencePiece-style ones (LLaMA-2, Mistral, Gemma: byte fallback, Prepend/Replace normalizers,
// Metaspace, ByteFallback/Fuse/Strip decoders). Components we do not implement throw
// tok::Unsupported (a uniattn::Error) naming them; malformed files throw uniattn::Error.
#include <nlohmann/json.hpp>

#include "internal.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"

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
  [[noreturn]] void unsupported(const std::string& key, const std::string& msg) const {
    throw tok::Unsupported(detail::concat(file, ": ", key, ": ", msg));
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
  // A Rust `char`: exactly one character.
  std::string get_char(const json& obj, const char* key, const std::string& where) const {
    std::string s = get_string(obj, key, where);
    tok::check_utf8(s, file + ": " + where + "." + key);
    std::size_t i = 0;
    if (!s.empty()) tok::next_codepoint(s, i);
    if (s.empty() || i != s.size()) bad(where + "." + key, "expected a single character");
    return s;
  }
  std::size_t get_size(const json& obj, const char* key, const std::string& where) const {
    const json& v = get(obj, key, where);
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
      bad(where + "." + key, "expected a non-negative integer");
    }
    return static_cast<std::size_t>(std::min<uint64_t>(v.get<uint64_t>(), uint64_t{1} << 32));
  }
  // A Replace pattern: only {"String": ...} (a {"Regex": ...} is Oniguruma syntax).
  std::string get_literal_pattern(const json& obj, const std::string& where) const {
    const json& pat = get(obj, "pattern", where);
    if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
      std::string s = pat["String"].get<std::string>();
      if (s.empty()) unsupported(where + ".pattern", "an empty String pattern is not supported");
      return s;
    }
    if (pat.is_object() && pat.contains("Regex")) {
      unsupported(where + ".pattern", "Regex patterns are not supported here (only String)");
    }
    bad(where + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
  }
};

std::string index_key(const std::string& where, const char* list, std::size_t i) {
  return where + "." + list + "[" + std::to_string(i) + "]";
}

void parse_normalizer(const Ctx& c, const json& n, const std::string& where,
                      std::vector<tok::NormStep>& out) {
  if (n.is_null()) return;
  if (!n.is_object()) c.bad(where, "expected an object");
  const std::string type = c.get_string(n, "type", where);
  tok::NormStep s;
  if (type == "Sequence") {
    const json& list = c.get(n, "normalizers", where);
    if (!list.is_array()) c.bad(where + ".normalizers", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      parse_normalizer(c, list[i], index_key(where, "normalizers", i), out);
    }
    return;
  } else if (type == "Prepend") {
    s.kind = tok::NormStep::kPrepend;
    s.a = c.get_string(n, "prepend", where);
  } else if (type == "Replace") {
    s.kind = tok::NormStep::kReplace;
    s.a = c.get_literal_pattern(n, where);
    s.b = c.get_string(n, "content", where);
  } else {
    c.unsupported(where, "unsupported normalizer type '" + type +
                             "' (supported: Prepend, Replace with a String pattern, Sequence)");
  }
  out.push_back(std::move(s));
}

// Metaspace's fields, as its deserializer reads them (pre_tokenizers/metaspace.rs): prepend_scheme
// defaults to "always"; the old add_prefix_space = false means "never" and must not contradict it;
// split defaults to true.
void parse_metaspace(const Ctx& c, const json& p, const std::string& where, tok::Metaspace& m) {
  m.replacement = c.get_char(p, "replacement", where);
  m.scheme = tok::PrependScheme::kAlways;
  if (p.contains("prepend_scheme") && !p["prepend_scheme"].is_null()) {
    const std::string s = c.get_string(p, "prepend_scheme", where);
    if (s == "first")
      m.scheme = tok::PrependScheme::kFirst;
    else if (s == "never")
      m.scheme = tok::PrependScheme::kNever;
    else if (s == "always")
      m.scheme = tok::PrependScheme::kAlways;
    else
      c.bad(where + ".prepend_scheme", "expected first, never or always, not '" + s + "'");
  }
  if (p.contains("add_prefix_space") && !c.get_bool(p, "add_prefix_space", true, where)) {
    if (m.scheme != tok::PrependScheme::kNever) {
      c.bad(where, "add_prefix_space does not match declared prepend_scheme");
    }
  }
  m.split = c.get_bool(p, "split", true, where);
  m.split_step.clear();
  if (m.split) {
    PreStep s;
    s.kind = PreStep::kSplit;
    s.pattern = tok::escape_regex(m.replacement);
    s.behavior = tok::SplitBehavior::kMergedWithNext;
    m.split_step.push_back(std::move(s));
  }
}

void parse_pre(const Ctx& c, const json& p, const std::string& where,
               std::vector<tok::PreOp>& out) {
  if (!p.is_object()) c.bad(where, "expected an object");
  const std::string type = c.get_string(p, "type", where);
  PreStep s;
  if (type == "Sequence") {
    const json& list = c.get(p, "pretokenizers", where);
    if (!list.is_array()) c.bad(where + ".pretokenizers", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      parse_pre(c, list[i], index_key(where, "pretokenizers", i), out);
    }
    return;
  } else if (type == "Metaspace") {
    tok::PreOp op;
    op.is_metaspace = true;
    parse_metaspace(c, p, where, op.metaspace);
    if (op.metaspace.scheme == tok::PrependScheme::kFirst && !out.empty()) {
      c.unsupported(where,
                    "Metaspace with prepend_scheme 'first' after another pre-tokenizer is "
                    "not supported");
    }
    out.push_back(std::move(op));
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
      // Matched as an escaped regex: the same non-overlapping, leftmost occurrences.
      s.string_pattern = pat["String"].get<std::string>();
      s.pattern = tok::escape_regex(*s.string_pattern);
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
      c.bad(where + ".behavior", "unknown split behavior '" + b + "'");
    s.invert = c.get_bool(p, "invert", false, where);
  } else {
    c.unsupported(where, "unsupported pre-tokenizer type '" + type +
                             "' (supported: ByteLevel, Split, Digits, Metaspace, Sequence)");
  }
  if (out.empty() || out.back().is_metaspace) out.emplace_back();
  out.back().steps.push_back(std::move(s));
}

// Byte-level files: the decoder must be ByteLevel (or absent). Others: the SentencePiece-style
// decoders.
void parse_decoder(const Ctx& c, const json& d, const std::string& where, bool byte_level,
                   std::vector<tok::DecStep>& out) {
  if (d.is_null()) return;
  if (!d.is_object()) c.bad(where, "expected an object");
  const std::string type = c.get_string(d, "type", where);
  if (type == "Sequence") {
    const json& list = c.get(d, "decoders", where);
    if (!list.is_array()) c.bad(where + ".decoders", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      parse_decoder(c, list[i], index_key(where, "decoders", i), byte_level, out);
    }
    return;
  }
  if (byte_level) {
    if (type == "ByteLevel") return;
    c.unsupported(where, "unsupported decoder type '" + type +
                             "' with a ByteLevel pre-tokenizer (supported: ByteLevel)");
  }
  tok::DecStep s;
  if (type == "Replace") {
    s.kind = tok::DecStep::kReplace;
    s.a = c.get_literal_pattern(d, where);
    s.b = c.get_string(d, "content", where);
  } else if (type == "ByteFallback") {
    s.kind = tok::DecStep::kByteFallback;
  } else if (type == "Fuse") {
    s.kind = tok::DecStep::kFuse;
  } else if (type == "Strip") {
    s.kind = tok::DecStep::kStrip;
    s.a = c.get_char(d, "content", where);
    s.start = c.get_size(d, "start", where);
    s.stop = c.get_size(d, "stop", where);
  } else if (type == "Metaspace") {
    s.kind = tok::DecStep::kMetaspace;
    tok::Metaspace m;
    parse_metaspace(c, d, where, m);
    s.a = m.replacement;
    s.scheme = m.scheme;
    s.split = m.split;
  } else {
    c.unsupported(where, "unsupported decoder type '" + type +
                             "' (supported: Replace, ByteFallback, Fuse, Strip, Metaspace, "
                             "Sequence; ByteLevel with a ByteLevel pre-tokenizer)");
  }
  out.push_back(std::move(s));
}

// Reads a TemplateProcessing "single" template: special tokens, then $A, then special tokens.
void parse_template(const Ctx& c, const json& p, const std::string& where, tok::JsonTemplate& t) {
  const json& single = c.get(p, "single", where);
  const json& specials = c.get(p, "special_tokens", where);
  if (!single.is_array()) c.bad(where + ".single", "expected an array");
  bool seen_a = false;
  for (std::size_t i = 0; i < single.size(); ++i) {
    const std::string w = where + ".single[" + std::to_string(i) + "]";
    const json& item = single[i];
    if (item.is_object() && item.contains("Sequence")) {
      const json& seq = item["Sequence"];
      if (!seq.is_object()) c.bad(w, "expected {\"Sequence\": {\"id\": ...}}");
      if (seen_a || seq.value("id", "") != "A") {
        c.unsupported(w, "only templates of the form 'specials $A specials' are supported");
      }
      seen_a = true;
    } else if (item.is_object() && item.contains("SpecialToken")) {
      const std::string name = c.get_string(item["SpecialToken"], "id", w + ".SpecialToken");
      const std::string ew = where + ".special_tokens." + name;
      const json& entry = c.get(specials, name.c_str(), where + ".special_tokens");
      const json& ids = c.get(entry, "ids", ew);
      if (!ids.is_array()) c.bad(ew + ".ids", "expected an array");
      const json* tokens = entry.contains("tokens") ? &entry["tokens"] : nullptr;
      if (tokens && (!tokens->is_array() || tokens->size() != ids.size())) {
        c.bad(ew + ".tokens", "expected an array as long as ids");
      }
      for (std::size_t k = 0; k < ids.size(); ++k) {
        const json& id = ids[k];
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tok::kMaxVocab)
          c.bad(ew, "ids must be integers in [0, 2^24)");
        (seen_a ? t.suffix : t.prefix).push_back(id.get<int32_t>());
        std::string tname = name;
        if (tokens) {
          if (!(*tokens)[k].is_string()) c.bad(ew + ".tokens", "expected strings");
          tname = (*tokens)[k].get<std::string>();
        }
        (seen_a ? t.suffix_tokens : t.prefix_tokens).push_back(std::move(tname));
      }
    } else {
      c.bad(w, "expected a Sequence or SpecialToken item");
    }
  }
  if (!seen_a) c.unsupported(where + ".single", "has no $A sequence");
  t.present = true;
}

void parse_post(const Ctx& c, const json& p, const std::string& where, tok::JsonTemplate& t) {
  if (p.is_null()) return;
  if (!p.is_object()) c.bad(where, "expected an object");
  const std::string type = c.get_string(p, "type", where);
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "TemplateProcessing") {
    if (t.present) c.unsupported(where, "more than one TemplateProcessing");
    parse_template(c, p, where, t);
  } else if (type == "Sequence") {
    const json& list = c.get(p, "processors", where);
    if (!list.is_array()) c.bad(where + ".processors", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) {
      parse_post(c, list[i], index_key(where, "processors", i), t);
    }
  } else {
    c.unsupported(where, "unsupported post-processor type '" + type +
                             "' (supported: TemplateProcessing, ByteLevel, Sequence)");
  }
}

void parse_model(const Ctx& c, const json& m, tok::BpeSpec& spec) {
  if (!m.is_object()) c.bad("model", "expected an object");
  const std::string type = m.contains("type") && m["type"].is_string()
                               ? m["type"].get<std::string>()
                               : std::string("BPE");
  if (type != "BPE") {
    c.unsupported("model.type", "unsupported model type '" + type + "' (supported: BPE)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() &&
        !(m[key].is_string() && m[key].get<std::string>().empty())) {
      c.unsupported(std::string("model.") + key, "is not supported");
    }
  }
  spec.byte_fallback = c.get_bool(m, "byte_fallback", false, "model");
  spec.fuse_unk = c.get_bool(m, "fuse_unk", false, "model");
  if (m.contains("dropout") && !m["dropout"].is_null() &&
      !(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0)) {
    c.unsupported("model.dropout", "BPE dropout is not supported");
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
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    if (!m["unk_token"].is_string()) c.bad("model.unk_token", "expected a string or null");
    spec.unk_token = m["unk_token"].get<std::string>();
  }
}

void parse_added(const Ctx& c, const json& added, tok::BpeSpec& spec) {
  if (added.is_null()) return;
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
    t.single_word = c.get_bool(a, "single_word", false, w);
    t.normalized = c.get_bool(a, "normalized", !t.special, w);  // AddedToken::from's default
    spec.added.push_back(std::move(t));
  }
}

json parse_file(const Ctx& c, const std::filesystem::path& path) {
  UNIATTN_CHECK(std::filesystem::is_regular_file(path), c.file, ": tokenizer file not found");
  const std::string text = read_text_file(path, kMaxJsonBytes);
  check_json_depth(text, c.file);  // component Sequences are read recursively
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(c.file, ": not valid JSON");
  if (!j.is_object()) fail(c.file, ": expected a JSON object at the top level");
  return j;
}

}  // namespace

namespace tok {
JsonTemplate read_json_template(const std::filesystem::path& path) {
  Ctx c{path.string()};
  const json j = parse_file(c, path);
  JsonTemplate t;
  if (j.contains("post_processor")) parse_post(c, j["post_processor"], "post_processor", t);
  if (j.contains("added_tokens")) {
    tok::BpeSpec spec;
    parse_added(c, j["added_tokens"], spec);
    for (const tok::AddedToken& a : spec.added) t.added.emplace_back(a.content, a.id);
  }
  return t;
}
}  // namespace tok

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& path) {
  Ctx c{path.string()};
  const json j = parse_file(c, path);

  tok::BpeSpec spec;
  spec.source = c.file;
  parse_model(c, c.get(j, "model", "top level"), spec);
  if (j.contains("normalizer")) parse_normalizer(c, j["normalizer"], "normalizer", spec.normalizer);
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
    parse_pre(c, j["pre_tokenizer"], "pre_tokenizer", spec.pre);
  }
  bool byte_level = false;
  for (const tok::PreOp& op : spec.pre) {
    for (const PreStep& s : op.steps) byte_level |= s.kind == PreStep::kByteLevel;
    // Metaspace(first) asks whether a piece starts at offset 0 of the input; we follow that
    // through Prepend and Replace, but not through a Replace that deletes characters.
    if (op.is_metaspace && op.metaspace.scheme == tok::PrependScheme::kFirst) {
      for (const tok::NormStep& n : spec.normalizer) {
        if (n.kind == tok::NormStep::kReplace && n.b.empty()) {
          c.unsupported("pre_tokenizer",
                        "Metaspace with prepend_scheme 'first' after a Replace "
                        "normalizer that deletes text is not supported");
        }
      }
    }
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    spec.has_decoder = true;
    parse_decoder(c, j["decoder"], "decoder", byte_level, spec.decoders);
  }
  tok::JsonTemplate t;
  if (j.contains("post_processor")) parse_post(c, j["post_processor"], "post_processor", t);
  spec.has_template = t.present;
  spec.template_prefix = t.prefix;
  spec.template_suffix = t.suffix;
  if (j.contains("added_tokens")) parse_added(c, j["added_tokens"], spec);
  // The template's leading special token is the bos, as HF's tokenizer applies it.
  if (!spec.template_prefix.empty()) {
    spec.bos = spec.template_prefix.front();
    spec.add_bos = true;
  }
  return tok::build_bpe(std::move(spec));
}

}  // namespace uniattn
