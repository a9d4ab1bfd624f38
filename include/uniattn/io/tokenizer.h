// Text <-> token ids, without LibTorch.
//
// Two families are supported:
//  * BPE as HF `tokenizers` runs a tokenizer.json: byte-level BPE (GPT-2, LLaMA-3, SmolLM2, Qwen2
//    style; also built from the vocabulary a GGUF file of tokenizer model "gpt2" carries) and
//    SentencePiece-style BPE with byte fallback (LLaMA-2, Mistral, Gemma tokenizer.json files);
//  * SentencePiece models (tokenizer.model), through libsentencepiece.
// Every loader throws uniattn::Error naming the file and the key or component at fault.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace uniattn {

class Tokenizer {
 public:
  virtual ~Tokenizer();

  // Splits `text` (UTF-8) into token ids. add_bos: add the model's leading special tokens, i.e.
  // what the tokenizer.json post-processor template adds around the text when it has one, else
  // bos_id() when set. parse_special: special tokens written literally in the text (e.g.
  // "<|im_start|>") become their ids; when false they are tokenized as plain text (added tokens
  // that are not special are still matched, as in HF `encode_special_tokens`).
  // Throws uniattn::Error if `text` is not valid UTF-8.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos = false,
                                      bool parse_special = true) const = 0;
  // Turns ids back into bytes. Byte-level BPE gives the exact input of encode() for any valid
  // text; SentencePiece-style tokenizer.json files run their decoder as HF does (e.g. Strip drops
  // the leading space), SentencePiece models decode as libsentencepiece does. The result may be
  // cut inside a UTF-8 character when `ids` is a slice. skip_special drops special (control)
  // tokens. Throws uniattn::Error on an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // The raw vocabulary piece of `id` (byte-level BPE: in its "Ġ"-mapped form; SentencePiece: with
  // "▁"). Throws uniattn::Error on an id out of range.
  virtual std::string token_text(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const;
  virtual std::optional<int32_t> eos_id() const;
  virtual std::optional<int32_t> pad_id() const;
  // Whether the model's own configuration adds bos_id() to every prompt (GGUF add_bos_token,
  // tokenizer_config.json add_bos_token, a tokenizer.json template that adds tokens).
  virtual bool adds_bos() const;
  // The id of a vocabulary piece (raw form, as token_text returns it), if present.
  virtual std::optional<int32_t> find_token(std::string_view piece) const = 0;
  // Writes files HF can load into `dir` (created if needed): tokenizer.json +
  // tokenizer_config.json (bos/eos/pad tokens) for BPE; tokenizer.model (+ tokenizer_config.json)
  // for SentencePiece. Throws uniattn::Error if a file cannot be written.
  virtual void save(const std::filesystem::path& dir) const = 0;

  // Overrides the special ids (used by load_tokenizer_dir with tokenizer_config.json/config.json).
  // Throws uniattn::Error if an id is out of range.
  void set_special_ids(std::optional<int32_t> bos, std::optional<int32_t> eos,
                       std::optional<int32_t> pad);
  void set_adds_bos(bool adds_bos) { adds_bos_ = adds_bos; }

  // How the tokenizer was loaded, when that is worth telling the user (load_tokenizer_dir falling
  // back from tokenizer.json to tokenizer.model, with the reason); empty otherwise.
  const std::string& load_note() const { return load_note_; }
  void set_load_note(std::string note) { load_note_ = std::move(note); }

 protected:
  std::optional<int32_t> bos_, eos_, pad_;
  bool adds_bos_ = false;
  std::string load_note_;
};

// What a GGUF tokenizer of model "gpt2" carries (tokenizer.ggml.*).
struct BpeVocab {
  std::vector<std::string> tokens;  // byte-level pieces ("Ġthe")
  // Per token: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. Empty = all 1.
  // Control tokens become special added tokens, user-defined ones non-special added tokens.
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;  // "a b", lowest rank first
  // tokenizer.ggml.pre, selecting the split regexes: "gpt2"/"default"/"" (GPT-2 pattern),
  // "llama-bpe"/"llama3"/"smaug-bpe"/"dbrx" (LLaMA-3 pattern), "smollm"/"starcoder" (single digits
  // then GPT-2 pattern), "qwen2". Anything else is rejected.
  std::string pre;
  std::optional<int32_t> bos, eos, pad, unk;
  bool add_bos = false;
};

// Throws uniattn::Error on an unsupported `pre`, more than 2^24 tokens, a token-type array of the
// wrong length, or a merge that is malformed or names a piece not in the vocabulary.
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const BpeVocab& vocab);

// What a GGUF tokenizer of model "llama" carries (SentencePiece vocabulary: LLaMA-2, Mistral,
// Gemma). Encoding merges by score, as SentencePiece BPE does.
struct SpmVocab {
  std::vector<std::string> tokens;   // pieces, "▁" for space, "<0x41>" for byte tokens
  std::vector<float> scores;         // one per token
  std::vector<int32_t> token_types;  // as in BpeVocab; at most one may be 2 (unknown)
  std::optional<int32_t> bos, eos, pad;
  // tokenizer.ggml.unknown_token_id: the unknown token when given (Gemma-3's GGUFs type <unk> as
  // control, 3); else the one token of type 2.
  std::optional<int32_t> unk;
  bool add_bos = true;
  bool add_space_prefix = true;           // tokenizer.ggml.add_space_prefix
  bool remove_extra_whitespaces = false;  // tokenizer.ggml.remove_extra_whitespaces
};

// Builds a SentencePiece model (BPE, identity normalization, byte fallback when byte tokens exist)
// from the vocabulary and loads it with libsentencepiece; save() writes that model as
// tokenizer.model. Throws uniattn::Error on mismatched array lengths, more than 2^24 tokens, an
// unknown token type, a missing or repeated unknown token (or `unk` naming another token than the
// one of type 2), or ids out of range.
std::unique_ptr<Tokenizer> make_spm_tokenizer(const SpmVocab& vocab);

// Loads a HF tokenizer.json with a BPE model and encodes as HF `tokenizers` does
// (tokenizers/src/tokenizer/mod.rs, added_vocabulary.rs, models/bpe/model.rs):
//  * model BPE with byte_fallback, fuse_unk, unk_token, ignore_merges (no dropout, no
//    continuing_subword_prefix / end_of_word_suffix);
//  * added_tokens with special, normalized, lstrip, rstrip, single_word; ids as tokenizers gives
//    them (the model vocabulary's id of the content, else numbered after the vocabulary);
//  * normalizer null / Prepend / Replace (String pattern) / Sequence of these
//    (normalizers/prepend.rs, replace.rs);
//  * pre_tokenizer ByteLevel / Split(Regex or String; Isolated, Removed, MergedWithPrevious,
//    MergedWithNext, Contiguous) / Digits / Metaspace (prepend_scheme first/always/never, split;
//    pre_tokenizers/metaspace.rs; "first" only as the first step) / Sequence of these;
//  * decoder: ByteLevel (or null) when the pre-tokenizer has ByteLevel; otherwise Replace (String
//    pattern) / ByteFallback / Fuse / Strip / Metaspace / Sequence of these, or null (tokens
//    joined by spaces, as tokenizers does);
//  * post_processor TemplateProcessing (single = specials, $A, specials) / ByteLevel / Sequence /
//    null.
// truncation and padding are ignored (transformers overrides them too). Throws uniattn::Error
// naming the file and the key: malformed files, and unsupported components, which are named.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::filesystem::path& tokenizer_json);

// Loads a SentencePiece model file. Throws uniattn::Error if it is missing or not a valid model.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file);

// Loads dir/tokenizer.json, else dir/tokenizer.model. When tokenizer.json uses a component
// load_tokenizer_json does not support and tokenizer.model exists, tokenizer.model is loaded
// instead (ids as libsentencepiece gives them), keeping the tokenizer.json post-processor's
// template (its bos) provided its tokens and the added tokens are tokenizer.model's pieces of the
// same ids; load_note()
// then says so. Then takes bos/eos/pad from dir/tokenizer_config.json, filling gaps from
// dir/config.json, when present; an explicit add_bos_token / add_eos_token there replaces the
// template by "[bos] text [eos]" as transformers does (TokenizersBackend.update_post_processor).
// Throws uniattn::Error if neither tokenizer file exists, tokenizer.json is malformed, is
// unsupported with no usable tokenizer.model, or a config file is malformed.
std::unique_ptr<Tokenizer> load_tokenizer_dir(const std::filesystem::path& dir);

}  // namespace uniattn
