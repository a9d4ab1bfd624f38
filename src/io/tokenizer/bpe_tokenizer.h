// The byte-level BPE tokenizer (internal; built through make_bpe_tokenizer/load_tokenizer_json).
#pragma once
#include <array>
#include <string>
#include <unordered_map>
#include <vector>

#include "internal.h"

namespace uniattn::tok {

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeSpec spec);
  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string token_text(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> find_token(std::string_view piece) const override;
  void save(const std::filesystem::path& dir) const override;

 private:
  struct Merge {
    int32_t rank, id;
  };
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
  void bpe_piece(std::string_view piece, std::vector<int32_t>& out) const;

  BpeSpec spec_;
  int32_t vocab_size_ = 0;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  std::array<int32_t, 256> byte_id_{};          // id of each byte's single-character piece, or -1
  std::vector<int32_t> added_by_id_;            // id -> index into spec_.added, or -1
  std::array<std::vector<int32_t>, 256>
      by_first_byte_;  // added tokens by first byte, longest first
};

}  // namespace uniattn::tok
