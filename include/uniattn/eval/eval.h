// Evaluation: multiple-choice accuracy by log-likelihood (as lm-evaluation-harness computes acc
// and acc_norm) and held-out response loss / perplexity on instruction data
// (uniattn/eval/response_loss.h, included here).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/data/mc_data.h"
#include "uniattn/data/records.h"
#include "uniattn/eval/response_loss.h"
#include "uniattn/io/tokenizer.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

// A (context, continuation) pair in token ids.
struct LoglikRequest {
  std::vector<int32_t> context;       // non-empty
  std::vector<int32_t> continuation;  // non-empty; the tokens that are scored
};

// Tokenises a pair the way lm-evaluation-harness does: whitespace at the end of `context` is moved
// to the front of `continuation`; whole = encode(context + continuation) and ctx =
// encode(context) (both with the tokenizer's leading special tokens when it adds them, special
// tokens in the text parsed as text); the continuation is whole[len(ctx):]. An empty context
// becomes [bos] (else [eos]). Throws uniattn::Error if the continuation ends up with no token or
// the tokenizer has neither bos nor eos for an empty context.
LoglikRequest tokenize_pair(const Tokenizer& tok, std::string_view context,
                            std::string_view continuation);

struct LoglikResult {
  double logprob = 0;   // sum over continuation tokens of log p(token | everything before it)
  int64_t tokens = 0;   // continuation tokens
  bool greedy = false;  // every continuation token is the argmax of its distribution
};

using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct ScoreOptions {
  int64_t batch = 16;   // sequences per forward pass (right padded; sorted by length)
  int64_t max_len = 0;  // tokens per sequence; 0 = the model's max_position_embeddings. Longer
                        // inputs lose tokens at the front of the context, as in the harness.
  ProgressFn progress;  // called after each batch with (sequences done, total)
};

// Scores every request with one model pass per batch; log-softmax runs in fp32 whatever the
// model dtype. Throws uniattn::Error on an empty context or continuation, a continuation longer
// than max_len, an id outside the vocabulary, or batch < 1.
std::vector<LoglikResult> score_loglikelihood(CausalLM& model,
                                              const std::vector<LoglikRequest>& requests,
                                              const ScoreOptions& options = {});

struct McItemResult {
  std::string id;
  int64_t answer = 0;
  int64_t pred = 0;       // argmax of logprob (first on ties)
  int64_t pred_norm = 0;  // argmax of logprob / chars
  std::vector<double> logprob;
  std::vector<int64_t> tokens;  // continuation tokens per choice
  std::vector<int64_t> chars;   // Unicode code points of each choice (without choice_prefix)
};

struct McTaskResult {
  std::string task;
  int64_t n = 0;
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  std::vector<McItemResult> items;
};

struct McOptions {
  ScoreOptions score;
  std::string choice_prefix = " ";  // continuation = choice_prefix + choice
};

// Multiple-choice accuracy: every choice of every question is scored as a continuation of the
// question's context; acc counts argmax(logprob) == answer and acc_norm argmax(logprob / chars).
// stderr is the sample standard error of the mean, sqrt(p (1 - p) / (n - 1)) (0 for n = 1).
// Throws uniattn::Error on an empty question list or what tokenize_pair / score_loglikelihood
// throw.
McTaskResult evaluate_mc(CausalLM& model, const Tokenizer& tok,
                         const std::vector<McQuestion>& questions, const std::string& task,
                         const McOptions& options = {});

// Pools the items of several tasks into one result named `name` (micro average: each question
// counts once; stderr over the pooled items). Per-item data is not copied.
McTaskResult pool_mc(const std::string& name, const std::vector<const McTaskResult*>& parts);

}  // namespace uniattn
