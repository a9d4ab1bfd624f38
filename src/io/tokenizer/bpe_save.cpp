// Writing a byte-level BPE tokenizer as HF tokenizer.json + tokenizer_config.json.
#include <nlohmann/json.hpp>

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
              {"pattern", {{s.pattern_is_regex ? "Regex" : "String", s.pattern}}},
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
                     {"single_word", false},
                     {"lstrip", t.lstrip},
                     {"rstrip", t.rstrip},
                     {"normalized", false},
                     {"special", t.special}});
  }
  j["added_tokens"] = std::move(added);
  j["normalizer"] = nullptr;
  if (spec_.pre.size() == 1) {
    j["pre_tokenizer"] = pre_step_json(spec_.pre[0]);
  } else {
    ordered_json seq = ordered_json::array();
    for (const PreStep& s : spec_.pre) seq.push_back(pre_step_json(s));
    j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", std::move(seq)}};
  }
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
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};

  ordered_json vocab = ordered_json::object();
  for (std::size_t id = 0; id < spec_.vocab.size(); ++id) {
    const auto& piece = spec_.vocab[id];
    // Duplicated pieces cannot be expressed in a JSON object; the first id keeps the piece.
    if (piece && !vocab.contains(*piece)) vocab[*piece] = static_cast<int32_t>(id);
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [a, b] : spec_.merges) merges.push_back({a, b});
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", spec_.unk ? ordered_json(token_text(*spec_.unk)) : ordered_json()},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
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
  if (spec_.unk) cfg["unk_token"] = token_text(*spec_.unk);
  write_text_atomic(dir / "tokenizer_config.json", cfg.dump(2));
}

}  // namespace uniattn::tok
