// The CUDA-graph decoder's bounds and results. On every build: the capacity check its step() runs
// before writing (check_decode_room) refuses a token past max_seq with the position and the
// capacity, and a model on the CPU is refused. With a CUDA device: a step at capacity throws that
// error before the captured step writes past the cache (the device stays usable and decoding
// restarts correctly), and each step's logits are the caller's (the next replay does not change
// them), equal to the eager decoder's.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "infer/cuda_graph_decoder.h"
#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/infer/generate.h"
#include "uniattn/model/checkpoint.h"

#ifdef UNIATTN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace uniattn {
namespace {

TEST(CudaGraphDecoder, CapacityIsCheckedWithPositionAndSize) {
  EXPECT_NO_THROW(check_decode_room(0, 4, 1));
  EXPECT_NO_THROW(check_decode_room(3, 4, 1));
  EXPECT_NO_THROW(check_decode_room(0, 4, 4));
  test::expect_error([] { check_decode_room(4, 4, 1); }, "position 4");
  test::expect_error([] { check_decode_room(4, 4, 1); }, "max_seq = 4");
  test::expect_error([] { check_decode_room(2, 4, 3); }, "needs 5 positions");
  test::expect_error([] { check_decode_room(0, 4, -1); }, "KV cache is full");
}

TEST(CudaGraphDecoder, ModelOnTheCpuIsRefused) {
  auto model = load_model(test::data_dir() / "models" / "llama");
  // Without CUDA: "built without CUDA"; with it: "needs a model on a CUDA device".
  EXPECT_THROW(make_cuda_graph_decoder(model, 1, 16), Error);
}

#ifdef UNIATTN_WITH_CUDA
// Logits of prefill + one step per column of `next`, each copied at once.
std::vector<at::Tensor> decode(Decoder& dec, const at::Tensor& prompt, const at::Tensor& next) {
  std::vector<at::Tensor> out{dec.prefill(prompt, at::Tensor()).clone()};
  for (int64_t s = 0; s < next.size(1); ++s) out.push_back(dec.step(next.select(1, s)).clone());
  return out;
}

// Max |a - b| relative to max |b| (the decode kernels may round differently from the eager path).
double diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / (1e-6 + b.abs().max().item<double>());
}

TEST(CudaGraphDecoder, StepAtCapacityThrowsBeforeWritingAndLogitsAreOwned) {
  if (!at::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  at::NoGradGuard ng;
  LoadOptions lo;
  lo.device = at::Device(at::kCUDA, 0);
  auto model = load_model(test::data_dir() / "models" / "llama", lo);
  const int64_t vocab = model->config().vocab_size, prompt_len = 5, steps = 3;
  at::manual_seed(3);
  const auto opts = at::TensorOptions().dtype(at::kLong).device(lo.device);
  const auto prompt = at::randint(0, vocab, {2, prompt_len}, opts);
  const auto next = at::randint(0, vocab, {2, steps + 1}, opts);

  auto eager = make_eager_decoder(model, 2, prompt_len + steps);
  const auto want = decode(*eager, prompt, next.narrow(1, 0, steps));
  auto graph = make_cuda_graph_decoder(model, 2, prompt_len + steps);
  // Returned tensors kept without cloning: a later replay must not change them.
  std::vector<at::Tensor> got{graph->prefill(prompt, at::Tensor())};
  for (int64_t s = 0; s < steps; ++s) got.push_back(graph->step(next.select(1, s)));
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("position " + std::to_string(i));
    EXPECT_LT(diff(got[i], want[i]), 1e-2);
  }
  // The cache holds prompt_len + steps = max_seq tokens: one more step is refused.
  test::expect_error([&] { graph->step(next.select(1, steps)); },
                     "position " + std::to_string(prompt_len + steps));
  c10::cuda::device_synchronize();  // no device-side fault happened
  const auto again = decode(*graph, prompt, next.narrow(1, 0, steps));
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_LT(diff(again[i], want[i]), 1e-2) << "position " << i;
}
#endif

}  // namespace
}  // namespace uniattn
