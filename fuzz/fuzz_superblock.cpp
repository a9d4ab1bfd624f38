// SuperBlock specs: explicit groups "16-19;20,22,24" or SIZE,BEGIN,END as --superblocks gives
// them (first byte: even = text, odd = three raw int64 for from_range, as config.json's
// uniattn.superblocks), against a small and a huge layer count.
#include <cstring>

#include "fuzz_util.h"
#include "uniattn/config/superblock.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  if (size < 1) return 0;
  // Small, zero, negative and huge layer counts.
  const int64_t layers = data[0] & 2 ? 32 : (int64_t{1} << ((data[0] >> 2) % 62)) - 2;
  fuzz::expect_ok_or_error([&] {
    UniAttnSpec s;
    if (data[0] & 1) {
      int64_t v[3] = {0, 0, 0};
      std::memcpy(v, data + 1, std::min(size - 1, sizeof v));
      s = UniAttnSpec::from_range(Variant::UniAttn, v[0], v[1], v[2], layers);
    } else {
      s = UniAttnSpec::parse(Variant::UniAttn, std::string(fuzz::as_text(data + 1, size - 1)),
                             layers);
    }
    (void)s.describe();
    for (int64_t l = 0; l < std::min<int64_t>(layers, 64); ++l) (void)s.is_follower(l);
  });
  return 0;
}
