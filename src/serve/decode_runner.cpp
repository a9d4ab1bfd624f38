#include "decode_runner.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>

#include "uniattn/error.h"
#include "uniattn/error_message.h"

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
// The inputs live in two device buffers, int32 [block tables of each group | lengths] and int64
// [tokens | write slots of each group], filled from pinned host copies of the same layout: two
// asynchronous copies per step instead of one synchronous copy per tensor.
struct DecodeRunner::Graph {
  at::Tensor ints, longs, host_ints, host_longs;
  PagedDecodeInputs in;  // views of ints and longs: what the captured step reads
  at::Tensor tokens, logits;
  std::unique_ptr<at::cuda::CUDAGraph> graph;  // null: this bucket's capture failed, run eagerly
  at::cuda::CUDAEvent copied;                  // the last copies out of the pinned buffers

  bool captured() const { return graph != nullptr; }

  Graph(int64_t rows, int64_t width, int groups, at::Device dev) {
    auto pinned = at::TensorOptions().pinned_memory(true);
    const int64_t cells = rows * width;
    host_ints = at::empty({groups * cells + rows}, pinned.dtype(at::kInt));
    host_longs = at::empty({(1 + groups) * rows}, pinned.dtype(at::kLong));
    ints = at::empty(host_ints.sizes(), at::TensorOptions().dtype(at::kInt).device(dev));
    longs = at::empty(host_longs.sizes(), at::TensorOptions().dtype(at::kLong).device(dev));
    tokens = longs.narrow(0, 0, rows).view({rows, 1});
    in.block_tables = ints.narrow(0, 0, cells).view({rows, width});
    in.seqlens = ints.narrow(0, groups * cells, rows);
    in.write_slots = longs.narrow(0, rows, rows);
    if (groups == 2) {
      in.sliding_block_tables = ints.narrow(0, cells, cells).view({rows, width});
      in.sliding_write_slots = longs.narrow(0, 2 * rows, rows);
    }
  }
  // Stages one step's inputs (CPU tensors of this bucket's shapes) and copies them over.
  void load(const PagedDecodeInputs& host, const std::vector<int64_t>& padded) {
    copied.synchronize();  // a no-op unless a copy from the pinned buffers is still pending
    auto stage = [](const at::Tensor& src, const at::Tensor& dst, const at::Tensor& host_buf,
                    const at::Tensor& dev_buf) {
      if (!dst.defined()) return;
      UNIATTN_CHECK(src.sizes() == dst.sizes(), "decode runner: input ", src.sizes(),
                    " does not fit its graph buffer ", dst.sizes());
      const int64_t offset = dst.storage_offset() - dev_buf.storage_offset();
      host_buf.narrow(0, offset, dst.numel()).copy_(src.reshape({-1}));
    };
    stage(host.block_tables, in.block_tables, host_ints, ints);
    stage(host.sliding_block_tables, in.sliding_block_tables, host_ints, ints);
    stage(host.seqlens, in.seqlens, host_ints, ints);
    stage(at::tensor(padded).view({-1, 1}), tokens, host_longs, longs);
    stage(host.write_slots, in.write_slots, host_longs, longs);
    stage(host.sliding_write_slots, in.sliding_write_slots, host_longs, longs);
    ints.copy_(host_ints, /*non_blocking=*/true);
    longs.copy_(host_longs, /*non_blocking=*/true);
    copied.record();
  }
};
#else
struct DecodeRunner::CudaPool {};
struct DecodeRunner::Graph {
  bool captured() const { return false; }
};
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

int64_t DecodeRunner::graphs() const {
  return std::count_if(graphs_.begin(), graphs_.end(),
                       [](const auto& kv) { return kv.second->captured(); });
}

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
  return cuda_graphs_ ? replay(tokens, batch, blocks) : eager(tokens, batch);
}

// paged_forward sends a one-token batch through paged_decode_forward.
at::Tensor DecodeRunner::eager(const std::vector<int64_t>& tokens, const PagedBatch& batch) {
  const auto ids = at::tensor(tokens).view({int64_t(tokens.size()), 1}).to(model_->device());
  return paged_forward(model_, ids, cache_, batch, true);
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
    if (!g.graph) return eager(tokens, batch);
    g.load(host, padded);
    g.graph->replay();
    return g.logits.narrow(0, 0, int64_t(tokens.size()));
  }
  return capture(rows, width, host, padded).narrow(0, 0, int64_t(tokens.size()));
}

at::Tensor DecodeRunner::capture(int64_t rows, int64_t width, const PagedDecodeInputs& host,
                                 const std::vector<int64_t>& padded) {
  auto g = std::make_unique<Graph>(rows, width, cache_.num_groups(), model_->device());
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
    try {
      g->logits = paged_decode_forward(model_, g->tokens, cache_, g->in);
      g->graph->capture_end();
    } catch (const std::exception& e) {
      // Leave capture mode (and the allocator's graph pool) so the engine goes on; the bucket
      // then runs eagerly. The warm-up above already computed this step.
      try {
        g->graph->capture_end();
      } catch (...) {
      }
      std::fprintf(stderr,
                   "uniattn: decode graph capture for %lld rows x %lld blocks failed (%s); "
                   "that bucket runs eagerly\n",
                   static_cast<long long>(rows), static_cast<long long>(width),
                   error_message(e).c_str());
      g->graph.reset();
      g->logits = at::Tensor();
    }
  }
  stream.synchronize();
  graphs_[{rows, width}] = std::move(g);
  return out;
}

int64_t DecodeRunner::capture_buckets(int64_t max_tokens) {
  if (!cuda_graphs_) return 0;
  const int64_t bs = cache_.block_size();
  const int64_t widest = bucket(1, (std::max<int64_t>(max_tokens, 1) + bs - 1) / bs).second;
  int64_t n = 0;
  for (int64_t rows = 1;; rows = std::min(rows * 2, max_rows_)) {
    for (int64_t width = 16;; width = std::min(width * 2, widest)) {
      const auto key = bucket(rows, width);
      if (!graphs_.count(key)) {
        // No real rows: every row has length 0 and writes the scratch slot.
        const auto host = paged_decode_inputs(cache_, PagedBatch{}, key.first, key.second);
        try {
          capture(key.first, key.second, host, std::vector<int64_t>(size_t(key.first), 0));
        } catch (const std::exception& e) {
          // E.g. out of memory next to a large KV pool: the rest are captured on first use.
          std::fprintf(stderr,
                       "uniattn: startup capture stopped at %lld rows x %lld blocks (%s); the "
                       "remaining buckets are captured on first use\n",
                       static_cast<long long>(key.first), static_cast<long long>(key.second),
                       error_message(e).c_str());
          return n;
        }
        n += graphs_.at(key)->captured();
      }
      if (key.second >= widest) break;
    }
    if (rows >= max_rows_) break;
  }
  return n;
}
#else
at::Tensor DecodeRunner::replay(const std::vector<int64_t>& tokens, const PagedBatch& batch,
                                int64_t blocks) {
  return eager(tokens, batch);
}
int64_t DecodeRunner::capture_buckets(int64_t) { return 0; }
#endif

}  // namespace uniattn::serve
