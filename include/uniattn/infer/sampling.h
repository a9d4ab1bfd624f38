// Next-token selection: repetition penalty, temperature, top-k, top-p, greedy or seeded sampling.
// Every operation is a tensor op on the logits' device with no host synchronisation, so a decode
// loop (or a captured CUDA graph) can run it step after step.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace uniattn {

struct SamplingParams {
  // <= 0 selects greedy decoding (argmax after the repetition penalty); else logits are divided
  // by it before top-k / top-p.
  double temperature = 0.0;
  int64_t top_k = 0;   // keep the k most likely tokens; 0 = off
  double top_p = 1.0;  // keep the smallest most-likely set whose probability reaches p; 1 = off
  // Hugging Face semantics: for every token already present (prompt or generated), a positive
  // logit is divided by it and a negative one multiplied. 1 = off.
  double repetition_penalty = 1.0;
  uint64_t seed = 0;  // the random stream of sampling; equal seeds give equal outputs

  bool greedy() const { return temperature <= 0.0; }
  // Throws uniattn::Error on a negative top_k, top_p outside (0, 1] or a penalty <= 0.
  void validate() const;
};

// In place on logits [B, V]: where seen [B, V] (bool) is true, positive logits are divided by
// `penalty` and the others multiplied by it.
void apply_repetition_penalty(at::Tensor& logits, const at::Tensor& seen, double penalty);

// Logits [B, V] with every token outside the top-k / top-p set (computed after dividing by
// `temperature`) set to -inf; the result is the temperature-scaled logits. At least one token is
// always kept. Ties at the k-th value are all kept.
at::Tensor filter_logits(const at::Tensor& logits, double temperature, int64_t top_k, double top_p);

// The distribution sampling draws from: softmax of filter_logits (float32 [B, V]).
at::Tensor sampling_probs(const at::Tensor& logits, const SamplingParams& params);

// A seeded random generator on `device` (CPU or CUDA).
at::Generator make_generator(at::Device device, uint64_t seed);

// Picks next tokens from logits [B, V] (any float dtype): applies the repetition penalty using
// `seen` (may be undefined when the penalty is off), then argmax (greedy) or one draw from
// sampling_probs per row using `gen`. Returns int64 [B] on the logits' device.
at::Tensor select_tokens(const at::Tensor& logits, const SamplingParams& params,
                         const at::Tensor& seen, at::Generator& gen);

}  // namespace uniattn
