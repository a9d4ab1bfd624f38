// Shared internals of the tokenizer implementations (not a public header).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/io/tokenizer.h"

namespace uniattn::tok {

// ---- UTF-8 and the GPT-2 byte <-> unicode table (unicode.cpp) ------------------------------
// Returns the offset of the first invalid UTF-8 sequence in `s`, or npos when valid.
std::size_t find_invalid_utf8(std::string_view s);
// Throws uniattn::Error if `s` is not valid UTF-8; `what` names the input.
void check_utf8(std::string_view s, std::string_view what);
// Appends the UTF-8 encoding of `cp`.
void append_utf8(std::string& out, char32_t cp);
// Decodes one character at s[i] (s must be valid UTF-8); advances i.
char32_t next_codepoint(std::string_view s, std::size_t& i);
// The byte-level form of byte b: GPT-2 maps printable latin-1 bytes to themselves and the others
// to U+0100 + n, so that every byte is a visible character.
const std::string& byte_to_unicode(uint8_t b);
// The byte a byte-level character stands for, or -1 if `cp` is not in the table.
int unicode_to_byte(char32_t cp);

// ---- pre-tokenizer (pretokenizer.cpp) --------------------------------------------------------
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

class Regex;  // compiled PCRE2 pattern, shared read-only between threads

struct PreStep {
  enum Kind { kSplit, kByteLevel, kDigits } kind = kByteLevel;
  // kSplit
  std::string pattern;
  bool pattern_is_regex = true;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::shared_ptr<const Regex> regex;  // compiled from `pattern` by compile_pre_steps
  // kByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
  // kDigits
  bool individual_digits = false;
};

extern const char* const kGpt2Pattern;
extern const char* const kLlama3Pattern;
extern const char* const kQwen2Pattern;

// Compiles the regexes of the steps; throws uniattn::Error naming `source` on a bad pattern.
void compile_pre_steps(std::vector<PreStep>& steps, std::string_view source);
// Runs the steps on one segment of valid UTF-8 text; returns the pieces (raw bytes).
std::vector<std::string> pre_tokenize(const std::vector<PreStep>& steps, std::string_view text);
const char* behavior_name(SplitBehavior b);

// ---- byte-level BPE (bpe_tokenizer.cpp) ------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false, rstrip = false;
};

struct BpeSpec {
  std::string source;  // for messages: the file, or "BPE vocab"
  // The model vocabulary, id -> piece; ids that are missing hold std::nullopt.
  std::vector<std::optional<std::string>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // lowest rank first
  std::vector<AddedToken> added;
  std::vector<PreStep> pre;
  bool has_template = false;  // a TemplateProcessing post-processor (saved back as one)
  std::vector<int32_t> template_prefix, template_suffix;
  std::optional<int32_t> unk;
  bool ignore_merges = false;
  std::optional<int32_t> bos, eos, pad;
  bool add_bos = false;
};

constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxMerges = int64_t{1} << 25;

// Validates the spec (ids, merges) and builds the tokenizer; throws uniattn::Error naming
// spec.source.
std::unique_ptr<Tokenizer> build_bpe(BpeSpec spec);

// ---- SentencePiece (sentencepiece.cpp, spm_vocab.cpp) ---------------------------------------
// A serialized sentencepiece ModelProto for the vocabulary; throws uniattn::Error when invalid.
std::string serialize_spm_model(const SpmVocab& vocab);
// Wraps a serialized model; `source` names it in messages.
std::unique_ptr<Tokenizer> make_spm_from_proto(std::string source, std::string model);

}  // namespace uniattn::tok
