// Helpers shared by the safetensors reader and writer (not part of the public API).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "uniattn/io/safetensors.h"

namespace uniattn::safetensors_detail {

// Byte size of a tensor of `dtype` and `shape`, or nullopt if a dimension is negative or the
// element count or byte size overflows int64.
std::optional<std::uint64_t> tensor_nbytes(DType dtype, std::span<const std::int64_t> shape);

// Renders a shape as "[2, 3]" for error messages.
std::string shape_str(std::span<const std::int64_t> shape);

// Largest header accepted, as in the reference implementation: a real header is far smaller, and
// a bound keeps a corrupt length from making us parse (or allocate for) gigabytes.
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

}  // namespace uniattn::safetensors_detail
