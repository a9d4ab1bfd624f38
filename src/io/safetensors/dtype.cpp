#include <array>
#include <limits>
#include <sstream>

#include "detail.h"
#include "uniattn/error.h"
#include "uniattn/io/safetensors.h"

namespace uniattn {
namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  std::size_t size;
};

constexpr std::array<DTypeInfo, 10> kDTypes{{
    {DType::F64, "F64", 8},
    {DType::F32, "F32", 4},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8},
    {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
}};

const DTypeInfo& info(DType dtype) {
  for (const auto& i : kDTypes)
    if (i.dtype == dtype) return i;
  fail("invalid DType value ", static_cast<int>(dtype));
}

}  // namespace

std::size_t dtype_size(DType dtype) { return info(dtype).size; }

const char* dtype_name(DType dtype) { return info(dtype).name; }

DType parse_dtype(std::string_view name) {
  for (const auto& i : kDTypes)
    if (name == i.name) return i.dtype;
  fail("unknown safetensors dtype \"", name,
       "\" (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

namespace safetensors_detail {

std::optional<std::uint64_t> tensor_nbytes(DType dtype, std::span<const std::int64_t> shape) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t n = dtype_size(dtype);
  // A zero dimension makes the tensor empty whatever the others are, but the others must still
  // be valid, so keep checking every dimension while accumulating.
  bool empty = false;
  for (auto d : shape) {
    if (d < 0) return std::nullopt;
    if (d == 0) {
      empty = true;
      continue;
    }
    if (empty) continue;
    std::uint64_t next = 0;
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &next) || next > kMax)
      return std::nullopt;
    n = next;
  }
  return empty ? 0 : n;
}

std::string shape_str(std::span<const std::int64_t> shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

}  // namespace safetensors_detail
}  // namespace uniattn
