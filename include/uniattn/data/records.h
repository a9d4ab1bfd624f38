// Instruction-tuning data without LibTorch: JSON / JSONL records, the prompt templates of the
// UniAttn recipe (Alpaca, Tulu-3 single turn, custom), and tokenisation into ids with a
// response-only loss mask. Calibration and training both build on it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace uniattn {

// One record: its string fields by name (non-string JSON values are rejected when a template
// needs them; other fields are ignored).
using Record = std::map<std::string, std::string, std::less<>>;

// How a record becomes a prompt and a target. Placeholders are written {field}; "{{" and "}}"
// stand for literal braces.
struct PromptTemplate {
  std::string name;
  std::string prompt;          // used when `optional_field` is non-empty (or there is none)
  std::string prompt_without;  // used when `optional_field` is missing or empty ("" = never)
  std::string optional_field;  // e.g. "input" for Alpaca
  std::string response_field = "output";

  // The fields every record must carry as strings (placeholders of `prompt` and
  // `prompt_without` other than `optional_field`, plus `response_field`).
  std::vector<std::string> required_fields() const;
  // Fills the placeholders. Throws uniattn::Error naming the field if a record lacks it.
  std::string render_prompt(const Record& r) const;

  // "Below is an instruction ... ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n###
  // Response:" (the no-input variant drops the Input section).
  static PromptTemplate alpaca();
  // "### Input:\n{input}\n\n### Response:" (Tulu-3 single turn).
  static PromptTemplate tulu();
  // A user template; throws uniattn::Error on an unbalanced or empty placeholder.
  static PromptTemplate custom(std::string prompt, std::string response_field = "output");
  // "alpaca" | "tulu"; throws uniattn::Error naming the accepted names otherwise.
  static PromptTemplate by_name(const std::string& name);
};

// Loads records from a JSON array of objects or from JSON Lines (one object per line; blank lines
// skipped). Only string fields are kept; JSON null counts as missing. When `tmpl` is given, every
// record is checked against its required fields. Throws uniattn::Error naming the file (and the
// record index or line) for: a missing or unreadable file, an empty file or an empty array,
// invalid JSON, a record that is not an object, a required field that is missing or not a string.
std::vector<Record> load_records(const std::filesystem::path& path,
                                 const PromptTemplate* tmpl = nullptr);

// Text -> ids without special tokens, plus the ids the layout adds around it.
struct TextEncoder {
  std::function<std::vector<int32_t>(std::string_view)> encode;
  std::optional<int32_t> bos;  // prepended to every example when set
  std::optional<int32_t> eos;  // appended to the target; required
};

// ids = [bos] + encode(prompt) + encode(response) + [eos], cut to max_len tokens (the end is
// dropped). loss_mask[i] is 1 where ids[i] is a target token (the response and eos), i.e. where
// the model is scored for predicting ids[i] from ids[..i-1].
struct TokenizedExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;
  int64_t prompt_tokens = 0;  // including bos
  bool truncated = false;
  int64_t target_tokens() const;
};

// Throws uniattn::Error if the encoder has no eos, max_len < 2, or the record lacks a field.
TokenizedExample tokenize_example(const Record& r, const PromptTemplate& tmpl,
                                  const TextEncoder& enc, int64_t max_len);

struct TokenizeStats {
  int64_t records = 0, kept = 0, truncated = 0, dropped_no_target = 0;
};
// Tokenises every record; examples left without a target token after truncation are dropped
// (counted in stats).
std::vector<TokenizedExample> tokenize_records(const std::vector<Record>& records,
                                               const PromptTemplate& tmpl, const TextEncoder& enc,
                                               int64_t max_len, TokenizeStats* stats = nullptr);

}  // namespace uniattn
