// tokenizer.json (BPE and SentencePiece-style models, normalizers, pre-tokenizers, decoders,
// post-processors, added tokens), then encoding and decoding a few fixed strings.
#include <vector>

#include "fuzz_util.h"
#include "uniattn/io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const auto path = fuzz::write_input("tokenizer.json", fuzz::as_text(data, size));
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_tokenizer_json(path);
  } catch (const Error&) {
    return 0;
  }
  for (const char* text :
       {"Hello world", " a\n\n b  12345 <s>", "\xc3\xa9t\xc3\xa9 \xe2\x96\x81x", ""}) {
    fuzz::expect_ok_or_error([&] {
      auto ids = tok->encode(text, true, true);
      (void)tok->decode(ids, false);
      (void)tok->decode(ids, true);
    });
  }
  const int32_t n = tok->vocab_size();
  std::vector<int32_t> some = {0, n - 1, n / 2};
  fuzz::expect_ok_or_error([&] { (void)tok->decode(some); });
  return 0;
}
