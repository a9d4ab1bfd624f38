#include "decode_runner.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "uniattn/error.h"

#ifdef UNIATTN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace uniattn::serve {

namespace {
int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}
}  // namespace

#ifdef UNIATTN_WITH_CUDA
struct DecodeRunner::CudaPool {
  at::cuda::MempoolId_t id = at::cuda::graph_pool_handle();
};
// The inputs live in two device buffers, int32 [block tables | lengths] and int64 [tokens |
// write slots], filled from pinned host copies of the same layout: two asynchronous copies per
// step instead of four synchronous ones.
struct DecodeRunner::Graph {
  at::Tensor ints, longs, host_ints, host_longs;
  PagedDecodeInputs in;  // views of ints and longs: what the captured step reads
  at::Tensor tokens, logits;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::cuda::CUDAEvent copied;  // the last copies out of the pinned buffers

  Graph(int64_t rows, int64_t width, at::Device dev) {
    auto pinned = at::TensorOptions().pinned_memory(true);
    host_ints = at::empty({rows * width + rows}, pinned.dtype(at::kInt));
    host_longs = at::empty({2 * rows}, pinned.dtype(at::kLong));
    ints = at::empty_like(host_ints, at::TensorOptions().device(dev).pinned_memory(false));
    longs = at::empty_like(host_longs, at::TensorOptions().device(dev).pinned_memory(false));
    in = {ints.narrow(0, 0, rows * width).view({rows, width}), ints.narrow(0, rows * width, rows),
          longs.narrow(0, rows, rows)};
    tokens = longs.narrow(0, 0, rows).view({rows, 1});
  }
  // Stages one step's inputs (CPU tensors of this bucket's shapes) and copies them over.
  void load(const PagedDecodeInputs& host, const std::vector<int64_t>& padded) {
    const int64_t rows = in.seqlens.size(0), cells = in.block_tables.numel();
    copied.synchronize();  // a no-op unless a copy from the pinned buffers is still pending
    auto* i32 = host_ints.data_ptr<int32_t>();
    std::copy_n(host.block_tables.data_ptr<int32_t>(), cells, i32);
    std::copy_n(host.seqlens.data_ptr<int32_t>(), rows, i32 + cells);
    auto* i64 = host_longs.data_ptr<int64_t>();
    std::copy_n(padded.data(), rows, i64);
    std::copy_n(host.write_slots.data_ptr<int64_t>(), rows, i64 + rows);
    ints.copy_(host_ints, /*non_blocking=*/true);
    longs.copy_(host_longs, /*non_blocking=*/true);
    copied.record();
  }
};
#else
struct DecodeRunner::CudaPool {};
struct DecodeRunner::Graph {};
#endif

DecodeRunner::DecodeRunner(CausalLM model, PagedKVCache& cache, int64_t max_rows,
                           int64_t max_blocks, bool cuda_graphs)
    : model_(std::move(model)),
      cache_(cache),
      max_rows_(max_rows),
      max_blocks_(max_blocks),
      cuda_graphs_(cuda_graphs && model_->device().is_cuda()) {
  UNIATTN_CHECK(max_rows >= 1 && max_blocks >= 1, "decode runner: max_rows (", max_rows,
                ") and max_blocks (", max_blocks, ") must be >= 1");
#ifndef UNIATTN_WITH_CUDA
  cuda_graphs_ = false;
#endif
}

DecodeRunner::~DecodeRunner() = default;

int64_t DecodeRunner::graphs() const { return static_cast<int64_t>(graphs_.size()); }

std::pair<int64_t, int64_t> DecodeRunner::bucket(int64_t rows, int64_t blocks) const {
  return {std::min(next_pow2(rows), max_rows_),
          std::min(next_pow2(std::max<int64_t>(blocks, 16)), max_blocks_)};
}

at::Tensor DecodeRunner::run(const std::vector<int64_t>& tokens, const PagedBatch& batch) {
  UNIATTN_CHECK(!tokens.empty() && tokens.size() == batch.query_lens.size(),
                "decode runner: ", tokens.size(), " tokens for a batch of ",
                batch.query_lens.size(), " rows");
  UNIATTN_CHECK(int64_t(tokens.size()) <= max_rows_, "decode runner: ", tokens.size(),
                " rows exceed max_rows ", max_rows_);
  int64_t blocks = 0;
  for (const auto& t : batch.block_tables) blocks = std::max<int64_t>(blocks, int64_t(t.size()));
  return cuda_graphs_ ? replay(tokens, batch, blocks) : eager(tokens, batch, blocks);
}

at::Tensor DecodeRunner::eager(const std::vector<int64_t>& tokens, const PagedBatch& batch,
                               int64_t blocks) {
  const auto dev = model_->device();
  const auto n = static_cast<int64_t>(tokens.size());
  const auto in = paged_decode_inputs(cache_, batch, n, blocks);
  return paged_decode_forward(
      model_, at::tensor(tokens).view({n, 1}).to(dev), cache_,
      {in.block_tables.to(dev), in.seqlens.to(dev), in.write_slots.to(dev)});
}

#ifdef UNIATTN_WITH_CUDA
// The bucket's graph is captured on its first use: an eager warm-up on a side stream (lazy
// cuBLAS and allocator initialisation must not happen inside a capture) computes this step,
// then the same step is captured, which executes nothing. Later steps copy their inputs into the
// buffers and replay. Capture is thread-local, so HTTP threads that touch the device meanwhile
// (a request's generator or penalty mask) cannot invalidate it.
at::Tensor DecodeRunner::replay(const std::vector<int64_t>& tokens, const PagedBatch& batch,
                                int64_t blocks) {
  const auto [rows, width] = bucket(int64_t(tokens.size()), blocks);
  const auto host = paged_decode_inputs(cache_, batch, rows, width);
  std::vector<int64_t> padded(tokens);
  padded.resize(size_t(rows), 0);
  if (auto it = graphs_.find({rows, width}); it != graphs_.end()) {
    Graph& g = *it->second;
    g.load(host, padded);
    g.graph->replay();
    return g.logits.narrow(0, 0, int64_t(tokens.size()));
  }
  // A failed capture leaves no entry behind: the next step of this bucket tries again.
  auto g = std::make_unique<Graph>(rows, width, model_->device());
  g->load(host, padded);
  if (!pool_) pool_ = std::make_unique<CudaPool>();
  auto stream = at::cuda::getStreamFromPool();
  at::cuda::getCurrentCUDAStream().synchronize();
  at::Tensor out;
  {
    c10::cuda::CUDAStreamGuard guard(stream);
    out = paged_decode_forward(model_, g->tokens, cache_, g->in);
    stream.synchronize();
    g->graph = std::make_unique<at::cuda::CUDAGraph>();
    g->graph->capture_begin(pool_->id, cudaStreamCaptureModeThreadLocal);
    g->logits = paged_decode_forward(model_, g->tokens, cache_, g->in);
    g->graph->capture_end();
  }
  stream.synchronize();
  graphs_[{rows, width}] = std::move(g);
  return out.narrow(0, 0, int64_t(tokens.size()));
}
#else
at::Tensor DecodeRunner::replay(const std::vector<int64_t>& tokens, const PagedBatch& batch,
                                int64_t blocks) {
  return eager(tokens, batch, blocks);
}
#endif

}  // namespace uniattn::serve
