// Writing a BPE tokenizer as HF tokenizer.json + tokenizer_config.json, with every component the
// loader understands (so that `tokenizers` gives the same ids on the written file).
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_set>

#include "bpe_tokenizer.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn::tok {

namespace {

using nlohmann::ordered_json;

ordered_json pre_step_json(const PreStep& s) {
  switch (s.kind) {
    case PreStep::kSplit:
      return {{"type", "Split"},
              {"pattern", s.string_pattern
                              ? ordered_json{{"String", *s.string_pattern}}
                              : ordered_json{{s.pattern_is_regex ? "Regex" : "String", s.pattern}}},
              {"behavior", behavior_name(s.behavior)},
              {"invert", s.invert}};
    case PreStep::kDigits:
      return {{"type", "Digits"}, {"individual_digits", s.individual_digits}};
    case PreStep::kByteLevel:
      break;
  }
  return {{"type", "ByteLevel"},
          {"add_prefix_space", s.add_prefix_space},
          {"trim_offsets", true},
          {"use_regex", s.use_regex}};
}

ordered_json metaspace_json(const std::string& replacement, PrependScheme scheme, bool split) {
  return {{"type", "Metaspace"},
          {"replacement", replacement},
          {"prepend_scheme", scheme_name(scheme)},
          {"split", split}};
}

ordered_json norm_json(const NormStep& n) {
  if (n.kind == NormStep::kPrepend) return {{"type", "Prepend"}, {"prepend", n.a}};
  return {{"type", "Replace"}, {"pattern", {{"String", n.a}}}, {"content", n.b}};
}

ordered_json dec_json(const DecStep& d) {
  switch (d.kind) {
    case DecStep::kReplace:
      return {{"type", "Replace"}, {"pattern", {{"String", d.a}}}, {"content", d.b}};
    case DecStep::kByteFallback:
      return {{"type", "ByteFallback"}};
    case DecStep::kStrip:
      return {{"type", "Strip"}, {"content", d.a}, {"start", d.start}, {"stop", d.stop}};
    case DecStep::kMetaspace:
      return metaspace_json(d.a, d.scheme, d.split);
    case DecStep::kFuse:
      break;
  }
  return {{"type", "Fuse"}};
}

// null for no step, the step itself for one, else a Sequence under `list_key`.
ordered_json one_or_sequence(ordered_json list, const char* list_key) {
  if (list.empty()) return nullptr;
  if (list.size() == 1) return list[0];
  return {{"type", "Sequence"}, {list_key, std::move(list)}};
}

}  // namespace

void BpeTokenizer::save(const std::filesystem::path& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  UNIATTN_CHECK(!ec, "tokenizer save: cannot create directory ", dir, ": ", ec.message());

  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ordered_json added = ordered_json::array();
  for (const AddedToken& t : spec_.added) {
    added.push_back({{"id", t.id},
                     {"content", t.content},
                     {"single_word", t.single_word},
                     {"lstrip", t.lstrip},
                     {"rstrip", t.rstrip},
                     {"normalized", t.normalized},
                     {"special", t.special}});
  }
  j["added_tokens"] = std::move(added);
  ordered_json norms = ordered_json::array();
  for (const NormStep& n : spec_.normalizer) norms.push_back(norm_json(n));
  j["normalizer"] = one_or_sequence(std::move(norms), "normalizers");
  ordered_json pres = ordered_json::array();
  for (const PreOp& op : spec_.pre) {
    if (op.is_metaspace) {
      const Metaspace& m = op.metaspace;
      pres.push_back(metaspace_json(m.replacement, m.scheme, m.split));
    }
    for (const PreStep& s : op.steps) pres.push_back(pre_step_json(s));
  }
  j["pre_tokenizer"] = one_or_sequence(std::move(pres), "pretokenizers");
  if (spec_.has_template) {
    ordered_json single = ordered_json::array(), pair = ordered_json::array();
    ordered_json specials = ordered_json::object();
    auto add_special = [&](int32_t id, ordered_json& seq, int type_id) {
      const std::string name = token_text(id);
      seq.push_back({{"SpecialToken", {{"id", name}, {"type_id", type_id}}}});
      specials[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
    };
    for (int type_id = 0; type_id < 2; ++type_id) {
      ordered_json& seq = type_id == 0 ? single : pair;
      for (int part = 0; part < (type_id == 0 ? 1 : 2); ++part) {
        for (int32_t id : spec_.template_prefix) add_special(id, seq, part);
        seq.push_back({{"Sequence", {{"id", part == 0 ? "A" : "B"}, {"type_id", part}}}});
        for (int32_t id : spec_.template_suffix) add_special(id, seq, part);
      }
    }
    j["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", std::move(single)},
                           {"pair", std::move(pair)},
                           {"special_tokens", std::move(specials)}};
  } else {
    j["post_processor"] = nullptr;
  }
  if (byte_level_) {
    j["decoder"] = {{"type", "ByteLevel"},
                    {"add_prefix_space", true},
                    {"trim_offsets", true},
                    {"use_regex", true}};
  } else if (spec_.has_decoder) {
    ordered_json decs = ordered_json::array();
    for (const DecStep& d : spec_.decoders) decs.push_back(dec_json(d));
    j["decoder"] =
        decs.size() == 1 ? decs[0] : ordered_json{{"type", "Sequence"}, {"decoders", decs}};
  } else {
    j["decoder"] = nullptr;
  }

  // Appended in id order straight to the object's vector: ordered_json's own lookups are linear,
  // quadratic over a 262k vocabulary.
  ordered_json vocab = ordered_json::object();
  auto& entries = static_cast<std::vector<std::pair<const std::string, ordered_json>>&>(
      vocab.get_ref<ordered_json::object_t&>());
  entries.reserve(spec_.vocab.size());
  std::unordered_set<std::string_view> seen;
  for (std::size_t id = 0; id < spec_.vocab.size(); ++id) {
    const auto& piece = spec_.vocab[id];
    // Duplicated pieces cannot be expressed in a JSON object; the first id keeps the piece.
    if (piece && seen.insert(*piece).second) entries.emplace_back(*piece, static_cast<int32_t>(id));
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [a, b] : spec_.merges) merges.push_back({a, b});
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", spec_.unk_token ? ordered_json(*spec_.unk_token) : ordered_json()},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", spec_.fuse_unk},
                {"byte_fallback", spec_.byte_fallback},
                {"ignore_merges", spec_.ignore_merges},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}};
  write_text_atomic(dir / "tokenizer.json", j.dump(1));

  ordered_json cfg;
  cfg["tokenizer_class"] = "PreTrainedTokenizerFast";
  cfg["add_bos_token"] = adds_bos_;
  if (bos_) cfg["bos_token"] = token_text(*bos_);
  if (eos_) cfg["eos_token"] = token_text(*eos_);
  if (pad_) cfg["pad_token"] = token_text(*pad_);
  if (spec_.unk_token) cfg["unk_token"] = *spec_.unk_token;
  write_text_atomic(dir / "tokenizer_config.json", cfg.dump(2));
}

}  // namespace uniattn::tok
