#include "uniattn/infer/sampling.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <limits>
#include <mutex>

#include "uniattn/error.h"

namespace uniattn {

void SamplingParams::validate() const {
  UNIATTN_CHECK(top_k >= 0, "sampling: top_k must be >= 0, got ", top_k);
  UNIATTN_CHECK(top_p > 0.0 && top_p <= 1.0, "sampling: top_p must be in (0, 1], got ", top_p);
  UNIATTN_CHECK(repetition_penalty > 0.0, "sampling: repetition_penalty must be > 0, got ",
                repetition_penalty);
  UNIATTN_CHECK(temperature == temperature, "sampling: temperature is NaN");
}

void apply_repetition_penalty(at::Tensor& logits, const at::Tensor& seen, double penalty) {
  if (penalty == 1.0 || !seen.defined()) return;
  UNIATTN_CHECK(seen.sizes() == logits.sizes(), "repetition penalty: seen mask ", seen.sizes(),
                " does not match logits ", logits.sizes());
  auto penalised = at::where(logits > 0, logits / penalty, logits * penalty);
  logits = at::where(seen, penalised, logits);
}

at::Tensor filter_logits(const at::Tensor& logits, double temperature, int64_t top_k,
                         double top_p) {
  UNIATTN_CHECK(logits.dim() == 2, "sampling: logits must be [batch, vocab], got ", logits.sizes());
  const double neg_inf = -std::numeric_limits<double>::infinity();
  auto x = logits.to(at::kFloat);
  if (temperature > 0.0 && temperature != 1.0) x = x / temperature;
  const int64_t vocab = x.size(1);
  if (top_k > 0 && top_k < vocab) {
    // Everything strictly below the k-th largest value goes; ties with it stay.
    auto kth = std::get<0>(at::topk(x, top_k, /*dim=*/1)).narrow(1, top_k - 1, 1);
    x = x.masked_fill(x < kth, neg_inf);
  }
  if (top_p < 1.0) {
    auto [sorted, order] = at::sort(x, /*dim=*/1, /*descending=*/true);
    auto probs = at::softmax(sorted, 1);
    // Probability mass strictly before each token: a token is dropped once the tokens ranked
    // above it already reach p, which keeps the smallest set with mass >= p (and always the top).
    auto before = at::cumsum(probs, 1) - probs;
    auto drop_sorted = before >= top_p;
    auto drop = at::zeros_like(drop_sorted).scatter(1, order, drop_sorted);
    x = x.masked_fill(drop, neg_inf);
  }
  return x;
}

at::Tensor sampling_probs(const at::Tensor& logits, const SamplingParams& p) {
  return at::softmax(filter_logits(logits, p.temperature, p.top_k, p.top_p), 1);
}

at::Generator make_generator(at::Device device, uint64_t seed) {
  at::Generator gen;
  if (device.is_cpu()) {
    gen = at::detail::createCPUGenerator(seed);
  } else if (device.is_cuda()) {
    gen = at::detail::getCUDAHooks().getNewGenerator(device.has_index() ? device.index() : 0);
  } else {
    fail("sampling: no random generator for device ", device.str());
  }
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
  return gen;
}

at::Tensor select_tokens(const at::Tensor& logits_in, const SamplingParams& p,
                         const at::Tensor& seen, at::Generator& gen) {
  UNIATTN_CHECK(logits_in.dim() == 2, "sampling: logits must be [batch, vocab], got ",
                logits_in.sizes());
  auto logits = logits_in.to(at::kFloat);
  apply_repetition_penalty(logits, seen, p.repetition_penalty);
  if (p.greedy()) return at::argmax(logits, 1);
  auto probs = sampling_probs(logits, p);
  // Exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i. It needs
  // one fixed-size random draw per step and no host sync, unlike rejection-style multinomials.
  auto noise = at::empty_like(probs).exponential_(1.0, gen);
  return at::argmax(probs / noise, 1);
}

}  // namespace uniattn
