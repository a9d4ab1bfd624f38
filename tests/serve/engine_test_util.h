// Helpers shared by the engine tests (tests/serve/test_engine*.cpp).
#pragma once
#include <cstdint>

#include "uniattn/serve/engine.h"

namespace uniattn::test {

// A pool of `num_blocks` blocks of 4 tokens (small, so that block boundaries fall inside
// prompts), prefilled `prefill_chunk` tokens per step.
inline serve::EngineOptions small_blocks(int64_t num_blocks, int64_t prefill_chunk,
                                         int64_t max_model_len = 64) {
  serve::EngineOptions o;
  o.block_size = 4;
  o.num_blocks = num_blocks;
  o.prefill_chunk = prefill_chunk;
  o.max_model_len = max_model_len;
  return o;
}

}  // namespace uniattn::test
