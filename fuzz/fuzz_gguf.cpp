// A whole GGUF file: header, metadata (every value type, nested arrays), tensor infos, and the
// dequantisation of every tensor small enough to be worth it.
#include <vector>

#include "fuzz_util.h"
#include "uniattn/io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const auto path = fuzz::write_input("model.gguf", fuzz::as_text(data, size));
  fuzz::expect_ok_or_error([&] {
    auto f = GgufFile::open(path);
    for (const auto& [key, v] : f.metadata()) (void)v.describe();
    fuzz::expect_ok_or_error([&] { (void)f.get_string("general.architecture"); });
    fuzz::expect_ok_or_error([&] { (void)f.get_int("llama.block_count", 0); });
    for (const auto& t : f.tensors()) {
      if (t.numel() > (1 << 16)) continue;
      (void)f.dequantize(t);
      std::vector<float> row(static_cast<size_t>(t.ne[0]));
      fuzz::expect_ok_or_error([&] { f.dequantize_rows(t, t.num_rows() - 1, 1, row.data()); });
    }
  });
  return 0;
}
