// make_spm_tokenizer: a SentencePiece model built from a GGUF-style vocabulary (tokens, scores,
// types). The ModelProto is written directly in protobuf wire format (no protobuf dependency);
// field numbers are those of sentencepiece_model.proto.
#include <cstring>

#include "internal.h"
#include "uniattn/error.h"

namespace uniattn {

namespace {

constexpr const char* kSource = "SentencePiece vocab";

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_tag(std::string& out, uint32_t field, uint32_t wire) {
  put_varint(out, (field << 3) | wire);
}
void put_bytes(std::string& out, uint32_t field, std::string_view s) {
  put_tag(out, field, 2);
  put_varint(out, s.size());
  out += s;
}
void put_int(std::string& out, uint32_t field, int64_t v) {
  put_tag(out, field, 0);
  put_varint(out, static_cast<uint64_t>(v));  // negative int32 is sign-extended, as protobuf does
}
void put_float(std::string& out, uint32_t field, float f) {
  put_tag(out, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  for (int i = 0; i < 4; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
}

}  // namespace

namespace tok {

std::string serialize_spm_model(const SpmVocab& v) {
  const std::size_t n = v.tokens.size();
  UNIATTN_CHECK(n > 0, kSource, ": no tokens");
  UNIATTN_CHECK(static_cast<int64_t>(n) <= kMaxVocab, kSource, ": ", n,
                " tokens, more than the limit ", kMaxVocab);
  UNIATTN_CHECK(v.scores.size() == n, kSource, ": ", v.scores.size(), " scores for ", n, " tokens");
  UNIATTN_CHECK(v.token_types.empty() || v.token_types.size() == n, kSource, ": ",
                v.token_types.size(), " token types for ", n, " tokens");
  std::optional<int32_t> unk;
  bool has_bytes = false;
  std::string model;
  for (std::size_t i = 0; i < n; ++i) {
    const int32_t type = v.token_types.empty() ? 1 : v.token_types[i];
    UNIATTN_CHECK(type >= 1 && type <= 6, kSource, ": token ", i, " has unknown type ", type);
    UNIATTN_CHECK(!v.tokens[i].empty(), kSource, ": token ", i, " is empty");
    check_utf8(v.tokens[i], std::string(kSource) + ": token " + std::to_string(i));
    if (type == 2) {
      UNIATTN_CHECK(!unk, kSource, ": tokens ", *unk, " and ", i, " are both of type unknown");
      unk = static_cast<int32_t>(i);
    }
    has_bytes |= type == 6;
    std::string piece;
    put_bytes(piece, 1, v.tokens[i]);
    put_float(piece, 2, v.scores[i]);
    // libsentencepiece finds its unknown piece by type.
    put_int(piece, 3, v.unk && static_cast<std::size_t>(*v.unk) == i ? 2 : type);
    put_bytes(model, 1, piece);
  }
  if (v.unk) {  // llama.cpp takes tokenizer.ggml.unknown_token_id over the token types
    UNIATTN_CHECK(*v.unk >= 0 && static_cast<std::size_t>(*v.unk) < n, kSource,
                  ": unknown token id ", *v.unk, " is outside [0, ", n, ")");
    UNIATTN_CHECK(!unk || *unk == *v.unk, kSource, ": the unknown token id is ", *v.unk,
                  " but token ", *unk, " has type unknown (2)");
    unk = v.unk;
  }
  UNIATTN_CHECK(unk.has_value(), kSource, ": no token of type unknown (2) and no unknown token id");
  for (const auto& id : {v.bos, v.eos, v.pad}) {
    UNIATTN_CHECK(!id || (*id >= 0 && static_cast<std::size_t>(*id) < n), kSource,
                  ": special token id ", id.value_or(0), " is outside [0, ", n, ")");
  }
  std::string trainer;
  put_int(trainer, 3, 2);  // model_type = BPE: merge by score
  put_int(trainer, 4, static_cast<int64_t>(n));
  put_int(trainer, 35, has_bytes ? 1 : 0);  // byte_fallback
  put_int(trainer, 40, *unk);
  put_int(trainer, 41, v.bos.value_or(-1));
  put_int(trainer, 42, v.eos.value_or(-1));
  put_int(trainer, 43, v.pad.value_or(-1));
  put_bytes(trainer, 45, v.tokens[static_cast<std::size_t>(*unk)]);
  // The processor finds bos/eos/pad through these piece names.
  if (v.bos) put_bytes(trainer, 46, v.tokens[static_cast<std::size_t>(*v.bos)]);
  if (v.eos) put_bytes(trainer, 47, v.tokens[static_cast<std::size_t>(*v.eos)]);
  if (v.pad) put_bytes(trainer, 48, v.tokens[static_cast<std::size_t>(*v.pad)]);
  put_bytes(model, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, "identity");
  put_int(normalizer, 3, v.add_space_prefix ? 1 : 0);
  put_int(normalizer, 4, v.remove_extra_whitespaces ? 1 : 0);
  put_int(normalizer, 5, 1);  // escape_whitespaces: spaces are "▁" in pieces
  put_bytes(model, 3, normalizer);
  return model;
}

}  // namespace tok
}  // namespace uniattn
