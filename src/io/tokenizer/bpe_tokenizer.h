// The BPE tokenizer (internal; built through make_bpe_tokenizer/load_tokenizer_json): byte-level
// BPE (GPT-2, LLaMA-3, Qwen2) and SentencePiece-style BPE over characters with byte fallback
// (LLaMA-2, Mistral, Gemma), run as HF `tokenizers` runs a tokenizer.json: added tokens,
// normalizer, pre-tokenizer, model, post-processor template; decoding through the decoder.
#pragma once
#include <array>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "internal.h"

namespace uniattn::tok {

// std::hash<std::string_view> that also takes std::string, for lookups without a copy.
struct PieceHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class BpeTokenizer final : public TemplatedTokenizer {
 public:
  // `gguf`: the spec comes from a GGUF vocabulary, whose ids are authoritative (added tokens keep
  // theirs and a repeated merge keeps its first rank, as llama.cpp does); otherwise added tokens
  // get the ids tokenizers gives them and a repeated merge its last rank.
  BpeTokenizer(BpeSpec spec, bool gguf);
  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string token_text(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> find_token(std::string_view piece) const override;
  void save(const std::filesystem::path& dir) const override;
  void set_template(std::vector<int32_t> prefix, std::vector<int32_t> suffix) override;

 private:
  struct Merge {
    int32_t rank, id;
  };
  void assign_added_ids(bool gguf);
  // Normalizes one segment between raw added tokens, splits it on normalized added tokens, and
  // tokenizes the rest. `at_origin`: the segment starts at offset 0 of the text.
  void encode_segment(std::string_view text, bool at_origin, bool parse_special,
                      std::vector<int32_t>& out) const;
  void pre_and_model(std::string piece, bool at_origin, std::vector<int32_t>& out) const;
  // The BPE model on one pre-tokenized piece (tokenizers/src/models/bpe/model.rs merge_word).
  void model_piece(std::string_view piece, std::vector<int32_t>& out) const;

  BpeSpec spec_;
  bool byte_level_ = false;  // a ByteLevel pre-tokenizer maps bytes to characters
  int32_t vocab_size_ = 0;
  std::unordered_map<std::string, int32_t, PieceHash, std::equal_to<>> piece_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  std::array<int32_t, 256> byte_id_{};          // id of each byte's byte-level character, or -1
  std::array<int32_t, 256> fallback_id_{};      // id of "<0xXY>", or -1
  std::optional<int32_t> unk_id_;
  std::vector<int32_t> added_by_id_;  // id -> index into spec_.added, or -1
  AddedVocab added_;
};

}  // namespace uniattn::tok
