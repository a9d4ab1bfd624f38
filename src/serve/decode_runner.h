// The engine's decode-step runner (vLLM's model runner with CUDA graph capture): a batch of one
// token per row runs uniattn::paged_decode_forward, which reads every input on the device. On a
// CUDA device the step is captured once per (batch-size bucket, block-table width bucket) and
// replayed: a decode step is a few thousand small kernels whose CPU-side dispatch, not the GPU,
// bounds eager decoding (46 ms per step at 1 to 32 sequences on the H200 before, against 6.2 ms
// for the static-batch graph, bench/results/serve-llama8b-h200.json at c94057b).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "uniattn/model/paged_kv_cache.h"

namespace uniattn::serve {

class DecodeRunner {
 public:
  // `max_rows`: the most rows of a step (the engine's max_seqs); `max_blocks`: the longest block
  // table (max_model_len / block_size, rounded up). `cuda_graphs`: capture and replay on CUDA
  // devices (ignored elsewhere).
  DecodeRunner(CausalLM model, PagedKVCache& cache, int64_t max_rows, int64_t max_blocks,
               bool cuda_graphs);
  ~DecodeRunner();

  // Logits [B, 1, vocab] (model dtype) of the rows of `batch` (every query_len 1), whose tokens
  // are `tokens` (one per row). Valid until the next call. Throws uniattn::Error as
  // paged_decode_inputs does.
  at::Tensor run(const std::vector<int64_t>& tokens, const PagedBatch& batch);

  // Graphs captured so far (a metric: each costs one warm-up step and some graph memory).
  int64_t graphs() const;
  // Captures every bucket whose table is at most `max_tokens` tokens wide (at least one width),
  // for every batch-size bucket, before the first request (vLLM captures its batch sizes at
  // startup): the first steps of a busy server then replay instead of capturing. Each capture
  // runs one step of padding rows that write only the scratch slots, and each graph keeps its
  // logits [rows, 1, vocab] (the buckets of 128 rows and 4,096 tokens hold about 0.33 GB for
  // LLaMA-3's vocabulary). A capture that throws (out of memory) ends the startup capture; the
  // rest are captured on first use. Returns the number of buckets captured; 0 where graphs are
  // off.
  int64_t capture_buckets(int64_t max_tokens);
  // The bucket a batch of `rows` rows whose longest table has `blocks` blocks runs in: the next
  // power of two (at least 16 blocks), capped at max_rows / max_blocks.
  std::pair<int64_t, int64_t> bucket(int64_t rows, int64_t blocks) const;

 private:
  struct Graph;     // one bucket's input buffers, output and CUDA graph
  struct CudaPool;  // the memory pool the graphs share (they never run at once)
  at::Tensor eager(const std::vector<int64_t>& tokens, const PagedBatch& batch);
  at::Tensor replay(const std::vector<int64_t>& tokens, const PagedBatch& batch, int64_t blocks);
  // Captures bucket (rows, width) from this step's inputs and returns the warm-up's logits.
  at::Tensor capture(int64_t rows, int64_t width, const PagedDecodeInputs& host,
                     const std::vector<int64_t>& padded);

  CausalLM model_;
  PagedKVCache& cache_;
  int64_t max_rows_, max_blocks_;
  bool cuda_graphs_;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Graph>> graphs_;
  std::unique_ptr<CudaPool> pool_;
};

}  // namespace uniattn::serve
