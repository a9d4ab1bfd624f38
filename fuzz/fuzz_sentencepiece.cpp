// A SentencePiece model file (tokenizer.model) through load_sentencepiece, then encoding and
// decoding a few fixed strings.
#include <vector>

#include "fuzz_util.h"
#include "uniattn/io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const auto path = fuzz::write_input("tokenizer.model", fuzz::as_text(data, size));
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_sentencepiece(path);
  } catch (const Error&) {
    return 0;
  }
  for (const char* text : {"Hello world", " a\n b <s> </s> 123", ""}) {
    fuzz::expect_ok_or_error([&] {
      auto ids = tok->encode(text, true, true);
      (void)tok->decode(ids, true);
    });
  }
  return 0;
}
