// Shared internals of the tokenizer implementations (not a public header).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "uniattn/error.h"
#include "uniattn/io/tokenizer.h"

namespace uniattn::tok {

// A tokenizer.json that is well formed but uses a component (or a combination) we do not
// implement. load_tokenizer_dir falls back to tokenizer.model on this error, never on others.
class Unsupported : public Error {
 public:
  using Error::Error;
};

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
  // A tokenizer.json {"String": ...} pattern, kept for saving; `pattern` then holds it escaped as
  // a regex.
  std::optional<std::string> string_pattern;
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
// Compiles one tokenizer.json regex (Oniguruma syntax, as HF tokenizers reads it) through
// unicode::translate_regex (`native` false: classes of explicit ranges only, for tests); throws
// uniattn::Error naming `source` and the pattern.
std::shared_ptr<const Regex> compile_regex(const std::string& pattern, std::string_view source,
                                           bool native = true);
// The [begin, end) byte spans of the matches of `re` in valid UTF-8 `s` (empty ones too), as
// the pre-tokenizer finds them.
std::vector<std::pair<std::size_t, std::size_t>> match_spans(const Regex& re, std::string_view s);
// A regex matching exactly `literal`: ASCII punctuation and spaces escaped, other characters
// (which stand for themselves) as they are.
std::string escape_regex(std::string_view literal);
// Runs the steps on one segment of valid UTF-8 text; returns the pieces (raw bytes).
std::vector<std::string> pre_tokenize(const std::vector<PreStep>& steps, std::string_view text);
const char* behavior_name(SplitBehavior b);

// ---- the HF `tokenizers` components of SentencePiece-style files (hf_components.cpp) --------
// Normalizers (tokenizers/src/normalizers/prepend.rs, replace.rs): Prepend adds `a` in front of
// a non-empty string; Replace swaps every non-overlapping occurrence of the literal `a`
// (leftmost first) for `b`.
struct NormStep {
  enum Kind { kPrepend, kReplace } kind = kPrepend;
  std::string a, b;
};
// Applies the normalizer steps in order. *prepended (optional) gets the number of leading bytes
// that Prepend steps added.
std::string normalize(const std::vector<NormStep>& steps, std::string_view s,
                      std::size_t* prepended = nullptr);

// The Metaspace pre-tokenizer (tokenizers/src/pre_tokenizers/metaspace.rs).
enum class PrependScheme { kFirst, kNever, kAlways };
const char* scheme_name(PrependScheme s);
struct Metaspace {
  std::string replacement = "\xE2\x96\x81";  // one character, "▁"
  PrependScheme scheme = PrependScheme::kAlways;
  bool split = true;
  std::vector<PreStep> split_step;  // Split(String replacement, MergedWithNext), compiled
};
// One step of a pre_tokenizer Sequence: either a run of PreSteps or a Metaspace.
struct PreOp {
  bool is_metaspace = false;
  std::vector<PreStep> steps;
  Metaspace metaspace;
};
// Replaces ' ' by the replacement, prepends it per the scheme (`at_origin`: the piece starts at
// offset 0 of the original text, what PrependScheme::First asks), and splits before each
// replacement character when `split`.
void metaspace_pre_tokenize(const Metaspace& m, std::string piece, bool at_origin,
                            std::vector<std::string>& out);

// Decoders (tokenizers/src/decoders/*.rs and the Decoder impls of replace.rs and metaspace.rs).
struct DecStep {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind = kFuse;
  std::string a, b;  // kReplace: pattern, content; kStrip: a = the character; kMetaspace: a
  std::size_t start = 0, stop = 0;                // kStrip
  PrependScheme scheme = PrependScheme::kAlways;  // kMetaspace
  bool split = true;                              // kMetaspace (kept for saving)
};
// Runs the decoder chain on the token strings and joins the result. ByteFallback keeps a run of
// byte tokens that ends the input and is a valid UTF-8 prefix as raw bytes (a slice may end
// inside a character); elsewhere an invalid run becomes one U+FFFD per byte, as in tokenizers.
std::string run_decoders(const std::vector<DecStep>& steps, std::vector<std::string> tokens);

// ---- added tokens (added_vocab.cpp) ----------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false, rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

// The AddedVocabulary of tokenizers (tokenizers/src/tokenizer/added_vocabulary.rs): tokens
// matched leftmost-longest in the raw text (normalized = false) or in the normalized text
// (normalized = true, matched in their normalized form), with single_word / lstrip / rstrip.
class AddedVocab {
 public:
  struct Split {
    std::size_t begin = 0, end = 0;  // bytes of the input
    int32_t id = -1;                 // the added token, or -1 for text between tokens
  };
  AddedVocab() = default;
  // `tokens` with their final ids; `normalizer` gives the normalized forms.
  AddedVocab(const std::vector<AddedToken>& tokens, const std::vector<NormStep>& normalizer);
  bool has_raw() const { return raw_.nodes.size() > 1; }
  bool has_normalized() const { return norm_.nodes.size() > 1; }
  // Splits `text` on the raw (normalized = false) or the normalized tokens. `parse_special`
  // false: special tokens are not matched (HF encode_special_tokens). Empty text gives nothing.
  std::vector<Split> split(std::string_view text, bool normalized, bool parse_special) const;
  // The string decode() gives for an added token id (its normalized form if normalized), if any.
  const std::string* decoded(int32_t id) const;
  // Whether `piece` is the content of a special added token (HF skips those when decoding).
  bool is_special(std::string_view piece) const;

 private:
  struct Trie {
    std::vector<int32_t> nodes{-1};               // node -> index into tokens_ ending here, or -1
    std::unordered_map<uint64_t, int32_t> edges;  // (node << 8 | byte) -> child node
    void insert(std::string_view s, int32_t token);
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, std::string> decoded_;
  std::vector<std::string> specials_;  // sorted
  Trie raw_, norm_;
};

// ---- BPE (bpe_tokenizer.cpp) -----------------------------------------------------------------
struct BpeSpec {
  std::string source;  // for messages: the file, or "BPE vocab"
  // The model vocabulary, id -> piece; ids that are missing hold std::nullopt.
  std::vector<std::optional<std::string>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // lowest rank first
  // Added tokens as tokenizer.json lists them; build_bpe gives them the ids tokenizers does.
  std::vector<AddedToken> added;
  std::vector<NormStep> normalizer;
  std::vector<PreOp> pre;
  // Decoding: byte-level files (a ByteLevel pre-tokenizer) map characters back to bytes and write
  // added tokens as they are; the others run `decoders` (has_decoder false: HF joins with " ").
  std::vector<DecStep> decoders;
  bool has_decoder = false;
  bool has_template = false;  // a TemplateProcessing post-processor (saved back as one)
  std::vector<int32_t> template_prefix, template_suffix;
  std::optional<std::string> unk_token;  // model.unk_token (looked up when needed, as HF does)
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::optional<int32_t> bos, eos, pad;
  bool add_bos = false;
};

constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxMerges = int64_t{1} << 25;

// Validates the spec (ids, merges) and builds the tokenizer; throws uniattn::Error naming
// spec.source. `gguf`: the ids of the spec are authoritative (see BpeTokenizer).
std::unique_ptr<Tokenizer> build_bpe(BpeSpec spec, bool gguf = false);

// A tokenizer whose special-token template (what encode(add_bos = true) puts around the text) can
// be replaced: load_tokenizer_dir does so for tokenizer_config.json add_bos_token/add_eos_token,
// as transformers does.
class TemplatedTokenizer : public Tokenizer {
 public:
  virtual void set_template(std::vector<int32_t> prefix, std::vector<int32_t> suffix) = 0;
};

// ---- tokenizer.json (tokenizer_json.cpp) ------------------------------------------------------
// The TemplateProcessing of a tokenizer.json's post_processor: ids before and after $A, with the
// token strings it names for them; and the added tokens. Throws Unsupported for other
// post-processors.
struct JsonTemplate {
  bool present = false;
  std::vector<int32_t> prefix, suffix;
  std::vector<std::string> prefix_tokens, suffix_tokens;
  std::vector<std::pair<std::string, int32_t>> added;  // added_tokens: content, id as listed
};
JsonTemplate read_json_template(const std::filesystem::path& tokenizer_json);

// ---- SentencePiece (sentencepiece.cpp, spm_vocab.cpp) ---------------------------------------
// A serialized sentencepiece ModelProto for the vocabulary; throws uniattn::Error when invalid.
std::string serialize_spm_model(const SpmVocab& vocab);
// Wraps a serialized model; `source` names it in messages.
std::unique_ptr<Tokenizer> make_spm_from_proto(std::string source, std::string model);

}  // namespace uniattn::tok
