// One .safetensors file: header JSON, dtypes, shapes, offsets; every tensor's bytes are read.
#include "fuzz_util.h"
#include "uniattn/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const auto path = fuzz::write_input("model.safetensors", fuzz::as_text(data, size));
  fuzz::expect_ok_or_error([&] {
    auto f = SafetensorsFile::open(path);
    unsigned sum = 0;
    for (const auto& t : f.tensors())
      for (std::byte b : t.data) sum += static_cast<unsigned>(b);
    (void)f.find("a");
    volatile unsigned sink = sum;  // keeps the reads
    (void)sink;
  });
  return 0;
}
