// Held-out response loss: the one definition used by uniattn-eval --heldout, by the trainer's
// evaluation (eval_loss in metrics.jsonl) and by calibration (CalibResult's losses; loss_base and
// loss_unified_wc are read from the calibration pass's cached final states by this definition),
// so that they report the same number for the same records and model. See docs/evaluation.md,
// section "Held-out response loss".
//
// Definition, for tokenised examples (ids, loss_mask) as tokenize_records produces them:
//  * Truncation: an example longer than max_len tokens is cut to its first max_len tokens (the
//    rule of tokenize_records, so examples tokenised with the same max_len give the same
//    number); target tokens past max_len are not scored (counted in cut_target_tokens).
//  * Scored tokens: position i (1 <= i < kept length) with loss_mask[i] != 0, scored for being
//    predicted from ids[0..i); loss_mask[0] is ignored (nothing predicts the first token). An
//    example left with no scored token is skipped (counted, not an error).
//  * Average: token-weighted over all examples, loss = sum of -log p(ids[i] | ids[0..i)) over
//    every scored token of every example / number of scored tokens, in nats; log p from an fp32
//    log-softmax of the model's logits, summed in fp64. perplexity = exp(loss).
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "uniattn/data/records.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

// The default max_len of the held-out loss, equal to the defaults of uniattn-calib --max-len and
// of training's data.max_length (the paper's maximum length), so the three agree by default.
inline constexpr int64_t kDefaultResponseLossMaxLen = 1024;

struct ResponseLossOptions {
  // Examples longer than this are cut to their first max_len tokens; 0 = never cut (score the
  // examples as given). Otherwise >= 2.
  int64_t max_len = kDefaultResponseLossMaxLen;
  // Padded tokens per forward pass: examples are sorted by length (longest first) and each batch
  // takes max(1, batch_tokens / longest) of them, right padded. Changes speed and memory only.
  int64_t batch_tokens = 8192;
  int32_t pad_id = 0;  // fills the right padding (never influences real tokens: causal attention)
  // Called after each batch with (examples done, examples to score); may throw to abort.
  std::function<void(int64_t done, int64_t total)> progress = nullptr;
};

struct ResponseLossResult {
  // Mean negative log-likelihood per scored token (nats) and exp(loss); NaN when no example has
  // a scored token.
  double loss = std::numeric_limits<double>::quiet_NaN();
  double perplexity = std::numeric_limits<double>::quiet_NaN();
  int64_t examples = 0;       // examples scored (at least one scored token)
  int64_t target_tokens = 0;  // tokens scored
  // Examples cut to max_len by this call or already cut when tokenised (TokenizedExample::
  // truncated), and the target tokens this call cut off.
  int64_t truncated = 0;
  int64_t cut_target_tokens = 0;
  int64_t skipped = 0;  // examples with no scored token (after truncation)
};

// Held-out response loss of `model` on `examples` as defined above. Runs without autograd (under
// an autocast scope the caller holds, if any); the model's mode and weights are unchanged.
// Throws uniattn::Error if max_len is 1 or negative, batch_tokens < 1, pad_id or a kept token id
// is outside [0, vocab_size), or an example's ids and loss_mask differ in length.
ResponseLossResult response_loss(CausalLM& model, const std::vector<TokenizedExample>& examples,
                                 const ResponseLossOptions& options = {});

}  // namespace uniattn
