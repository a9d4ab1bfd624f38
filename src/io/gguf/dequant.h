// Internal: block dequantisation kernels for the GGUF reader.
#pragma once
#include <cstddef>
#include <cstdint>

#include "uniattn/io/gguf.h"

namespace uniattn::gguf_detail {

// Dequantises `n_blocks` consecutive blocks of `type` starting at `src` into `dst`, which receives
// n_blocks * ggml_block_size(type) floats. The caller has checked that the bytes exist and that
// `type` is supported; this never throws.
void dequantize_blocks(GgmlType type, const std::byte* src, int64_t n_blocks, float* dst);

}  // namespace uniattn::gguf_detail
