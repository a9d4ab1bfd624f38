// A sharded checkpoint's model.safetensors.index.json, next to two valid shards (a.safetensors
// with tensors "a" and "b", b.safetensors with "c"); the checkpoint is opened and every tensor the
// index lists is looked up.
#include <cstddef>
#include <vector>

#include "fuzz_util.h"
#include "uniattn/io/safetensors.h"

namespace {
const std::filesystem::path& checkpoint_dir() {
  static const std::filesystem::path dir = [] {
    using namespace uniattn;
    auto d = fuzz::scratch() / "sharded";
    std::filesystem::create_directories(d);
    static const std::vector<std::byte> bytes(16, std::byte{1});
    const std::span<const std::byte> four(bytes.data(), 4), eight(bytes.data(), 8);
    write_safetensors(d / "a.safetensors",
                      {{"a", DType::F32, {1}, four}, {"b", DType::F16, {2, 2}, eight}});
    write_safetensors(d / "b.safetensors", {{"c", DType::BF16, {2}, four}});
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const auto& dir = checkpoint_dir();
  fuzz::write_input("sharded/model.safetensors.index.json", fuzz::as_text(data, size));
  fuzz::expect_ok_or_error([&] {
    auto ck = SafetensorsCheckpoint::open(dir);
    for (const auto& name : ck.names()) (void)ck.at(name).data.size();
    (void)ck.metadata();
  });
  return 0;
}
