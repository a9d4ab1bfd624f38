#include "serve/http/id_tokenizer.h"

#include <charconv>

#include "uniattn/error.h"

namespace uniattn::serve {

IdTokenizer::IdTokenizer(int32_t vocab_size) : vocab_(vocab_size) {
  UNIATTN_CHECK(vocab_size >= 256, "id tokenizer: vocabulary of ", vocab_size,
                " ids is smaller than the 256 byte ids");
}

std::vector<int32_t> IdTokenizer::encode(std::string_view text, bool, bool) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char ch : text) ids.push_back(int32_t(ch));
  return ids;
}

std::string IdTokenizer::decode(std::span<const int32_t> ids, bool) const {
  std::string out;
  for (int32_t id : ids) out += " " + token_text(id);
  return out;
}

std::string IdTokenizer::token_text(int32_t id) const {
  UNIATTN_CHECK(id >= 0 && id < vocab_, "id tokenizer: id ", id, " outside [0, ", vocab_, ")");
  return std::to_string(id);
}

std::optional<int32_t> IdTokenizer::find_token(std::string_view piece) const {
  int32_t id = -1;
  const auto [end, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), id);
  if (ec != std::errc{} || end != piece.data() + piece.size() || id < 0 || id >= vocab_)
    return std::nullopt;
  return id;
}

void IdTokenizer::save(const std::filesystem::path& dir) const {
  fail("id tokenizer: nothing to save to ", dir.string(),
       " (it stands in for a missing tokenizer)");
}

}  // namespace uniattn::serve
