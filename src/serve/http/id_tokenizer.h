// A stand-in tokenizer for models without one (uniattn-serve --random-weights, the benchmark's
// random-weight shapes): the vocabulary is the model's ids themselves. A prompt is best given as
// token ids; text is encoded one UTF-8 byte per id (ids 0..255) so that text requests still run.
// Id N decodes to " N", so streamed text shows which ids came out. Not a real tokenizer: nothing
// is merged, nothing is special, there is no end token.
#pragma once
#include "uniattn/io/tokenizer.h"

namespace uniattn::serve {

class IdTokenizer : public Tokenizer {
 public:
  // Throws uniattn::Error when vocab_size < 256 (the byte ids must exist).
  explicit IdTokenizer(int32_t vocab_size);
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false,
                              bool parse_special = true) const override;
  // Throws uniattn::Error on an id outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const override;
  std::string token_text(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_; }
  std::optional<int32_t> find_token(std::string_view piece) const override;
  // Throws uniattn::Error: there are no files to write.
  void save(const std::filesystem::path& dir) const override;

 private:
  int32_t vocab_;
};

}  // namespace uniattn::serve
