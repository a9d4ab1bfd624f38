// A Decoder whose single-token step is captured once in a CUDA graph and replayed, so CPU-side
// dispatch of ~10 small ops per layer does not bound decode speed at small batch. The step uses
// the graph-safe path of CausalLM::forward (ForwardOptions::decode_position): device-side cache
// position and lengths, cache writes by index_copy_, and the decode kernels over whole buffers.
#include "cuda_graph_decoder.h"

#include "uniattn/error.h"
#include "uniattn/infer/generate.h"

#ifdef UNIATTN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace uniattn {

void check_decode_room(int64_t length, int64_t max_seq, int64_t n) {
  UNIATTN_CHECK(n >= 0 && length >= 0 && length + n <= max_seq,
                "CUDA-graph decoder: the KV cache is full: writing ", n, " token(s) at position ",
                length, " needs ", length + n, " positions, but it holds max_seq = ", max_seq,
                " (prompt + generated tokens); make the decoder with a larger max_seq");
}

#ifdef UNIATTN_WITH_CUDA
namespace {

class CudaGraphDecoder : public Decoder {
 public:
  CudaGraphDecoder(CausalLM model, int64_t batch, int64_t max_seq)
      : model_(std::move(model)),
        batch_(batch),
        cache_(model_->config(), batch, max_seq, model_->dtype(), model_->device()) {
    auto dev = model_->device();
    UNIATTN_CHECK(dev.is_cuda(), "the CUDA-graph decoder needs a model on a CUDA device");
    tokens_ = at::zeros({batch, 1}, at::TensorOptions().dtype(at::kLong).device(dev));
    position_ = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(dev));
  }

  at::Tensor prefill(const at::Tensor& ids, const at::Tensor& mask) override {
    // Device-side lengths are one per batch: left-padded (ragged) batches use the eager decoder.
    UNIATTN_CHECK(!mask.defined(),
                  "the CUDA-graph decoder takes equal-length prompts (no padding mask)");
    cache_.reset();
    ForwardOptions o;
    o.last_only = true;
    return model_->forward(ids, &cache_, o).select(1, 0);
  }

  // The cache is checked before anything is written: the captured step writes K and V at the
  // device-side position with index_copy_, which has no host-side bound. The logits are copied
  // out of the graph's output buffer (the next replay overwrites it), so each step's result is
  // the caller's, as the eager decoder's is; the copy is one [B, V] device copy per step.
  at::Tensor step(const at::Tensor& tokens) override {
    check_decode_room(cache_.length(), cache_.max_seq(), 1);
    UNIATTN_CHECK(tokens.numel() == batch_, "CUDA-graph decoder: step() takes one token per ",
                  "sequence: ", batch_, " expected, got a tensor of shape ", tokens.sizes());
    tokens_.copy_(tokens.reshape({batch_, 1}));
    position_.fill_(cache_.length());
    at::Tensor out;
    if (!graph_) {
      // Warm up eagerly on a side stream (lazy cuBLAS/kernel initialisation must not happen
      // inside capture), then capture the same step. The warm-up's result is this step's answer;
      // capture itself executes nothing.
      auto stream = at::cuda::getStreamFromPool();
      at::cuda::getCurrentCUDAStream().synchronize();  // once per decoder: order side stream
      {
        c10::cuda::CUDAStreamGuard guard(stream);
        out = run_step().clone();
        graph_ = std::make_unique<at::cuda::CUDAGraph>();
        graph_->capture_begin();
        logits_ = run_step();
        graph_->capture_end();
      }
      stream.synchronize();
    } else {
      graph_->replay();
      out = logits_.clone();
    }
    cache_.advance(1);
    return out;
  }

  int64_t kv_bytes_per_token() const override { return cache_.bytes_per_token(); }

 private:
  at::Tensor run_step() {
    ForwardOptions o;
    o.last_only = true;
    o.decode_position = position_;
    return model_->forward(tokens_, &cache_, o).select(1, 0);
  }

  CausalLM model_;
  int64_t batch_;
  KVCache cache_;
  at::Tensor tokens_, position_, logits_;
  std::unique_ptr<at::cuda::CUDAGraph> graph_;
};

}  // namespace

std::unique_ptr<Decoder> make_cuda_graph_decoder(CausalLM model, int64_t batch,
                                                 int64_t max_seq) {
  return std::make_unique<CudaGraphDecoder>(std::move(model), batch, max_seq);
}
#else
std::unique_ptr<Decoder> make_cuda_graph_decoder(CausalLM, int64_t, int64_t) {
  fail("uniattn was built without CUDA (UNIATTN_CUDA=OFF): no CUDA-graph decoder");
}
#endif

}  // namespace uniattn
