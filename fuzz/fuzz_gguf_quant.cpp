// Each tensor type's dequantisation on arbitrary block bytes: the first byte picks the type, the
// rest becomes the data of a one-tensor GGUF file (as many whole blocks as the input holds) that
// is opened and dequantised through GgufFile, as uniattn reads a checkpoint.
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "uniattn/io/gguf.h"

namespace {
using uniattn::GgmlType;
constexpr GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                               GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                               GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                               GgmlType::Q6_K, GgmlType::Q8_K};

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// GGUF v3: no metadata, one 2-D tensor "t" of `rows` rows of `row_elems` elements at offset 0.
std::string gguf_with(GgmlType type, uint64_t row_elems, uint64_t rows, std::string_view blocks) {
  std::string f = "GGUF";
  put<uint32_t>(f, 3);
  put<uint64_t>(f, 1);  // tensors
  put<uint64_t>(f, 0);  // metadata pairs
  put<uint64_t>(f, 1);
  f += "t";
  put<uint32_t>(f, 2);
  put<uint64_t>(f, row_elems);
  put<uint64_t>(f, rows);
  put<uint32_t>(f, static_cast<uint32_t>(type));
  put<uint64_t>(f, 0);
  f.resize((f.size() + 31) / 32 * 32, '\0');
  f.append(blocks);
  return f;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  if (size < 1) return 0;
  const GgmlType type = kTypes[data[0] % std::size(kTypes)];
  const auto block_bytes = static_cast<size_t>(ggml_type_size(type));
  const auto n_blocks = (size - 1) / block_bytes;
  if (n_blocks == 0) return 0;
  // Two rows when the blocks split evenly, so the row-wise path is exercised as well.
  const uint64_t rows = n_blocks % 2 == 0 ? 2 : 1;
  const uint64_t row_elems = n_blocks / rows * static_cast<uint64_t>(ggml_block_size(type));
  const auto bytes = fuzz::as_text(data + 1, n_blocks * block_bytes);
  const auto path = fuzz::write_input("quant.gguf", gguf_with(type, row_elems, rows, bytes));
  auto f = GgufFile::open(path);  // a well-formed file: any error here is a finding
  const auto& t = f.tensors().at(0);
  auto all = f.dequantize(t);
  std::vector<float> last(row_elems);
  f.dequantize_rows(t, static_cast<int64_t>(rows) - 1, 1, last.data());
  if (std::memcmp(last.data(), all.data() + (rows - 1) * row_elems, row_elems * sizeof(float)) !=
      0) {
    // Bitwise equal (NaN payloads too): the row-wise path must agree with the whole-tensor one.
    __builtin_trap();
  }
  return 0;
}
