// Log-likelihood scoring for evaluation: multiple-choice accuracy (lm-evaluation-harness acc /
// acc_norm); the held-out response loss is in response_loss.cpp. Sequences run right padded:
// with causal attention the pad tokens after a sequence never influence its logits, so no
// attention mask is needed.
#include "uniattn/eval/eval.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "uniattn/error.h"

namespace uniattn {
namespace {

// One sequence to run: the model reads `input`; the log-probability of target[j] is read from
// the distribution at position pos[j].
struct Seq {
  std::vector<int32_t> input;
  std::vector<int64_t> pos;
  std::vector<int32_t> target;
};

struct SeqScore {
  double sum = 0;
  bool greedy = true;
};

std::vector<SeqScore> score_seqs(CausalLM& model, const std::vector<Seq>& seqs, int64_t batch,
                                 const ProgressFn& progress) {
  UNIATTN_CHECK(batch >= 1, "evaluation batch size must be >= 1, got ", batch);
  const int64_t vocab = model->config().vocab_size;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const auto& s = seqs[i];
    UNIATTN_CHECK(!s.input.empty() && s.pos.size() == s.target.size(), "sequence ", i,
                  ": empty input or mismatched targets");
    for (int32_t t : s.input)
      UNIATTN_CHECK(t >= 0 && t < vocab, "sequence ", i, ": token id ", t,
                    " outside the model vocabulary [0, ", vocab, ")");
    for (std::size_t j = 0; j < s.pos.size(); ++j)
      UNIATTN_CHECK(s.target[j] >= 0 && s.target[j] < vocab && s.pos[j] >= 0 &&
                        s.pos[j] < static_cast<int64_t>(s.input.size()),
                    "sequence ", i, ": target ", j, " (id ", s.target[j], " at position ", s.pos[j],
                    ") out of range");
  }
  // Longest first: similar lengths share a batch (less padding) and an out-of-memory error shows
  // up on the first batch.
  std::vector<std::size_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return seqs[a].input.size() > seqs[b].input.size();
  });

  std::vector<SeqScore> out(seqs.size());
  c10::InferenceMode guard;
  const auto dev = model->device();
  for (std::size_t b0 = 0; b0 < order.size(); b0 += batch) {
    const auto b1 = std::min(order.size(), b0 + static_cast<std::size_t>(batch));
    const auto B = static_cast<int64_t>(b1 - b0);
    int64_t T = 0, N = 1;
    for (auto k = b0; k < b1; ++k) {
      T = std::max<int64_t>(T, seqs[order[k]].input.size());
      N = std::max<int64_t>(N, seqs[order[k]].pos.size());
    }
    auto ids = at::zeros({B, T}, at::kLong);
    auto pos = at::zeros({B, N}, at::kLong);
    auto tgt = at::zeros({B, N}, at::kLong);
    auto valid = at::zeros({B, N}, at::kBool);
    auto ia = ids.accessor<int64_t, 2>();
    auto pa = pos.accessor<int64_t, 2>();
    auto ta = tgt.accessor<int64_t, 2>();
    auto va = valid.accessor<bool, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const auto& s = seqs[order[b0 + r]];
      for (std::size_t t = 0; t < s.input.size(); ++t) ia[r][t] = s.input[t];
      for (std::size_t j = 0; j < s.pos.size(); ++j) {
        pa[r][j] = s.pos[j];
        ta[r][j] = s.target[j];
        va[r][j] = true;
      }
    }
    ids = ids.to(dev);
    pos = pos.to(dev);
    tgt = tgt.to(dev);
    valid = valid.to(dev);

    auto state = model->begin(ids, nullptr, {});
    auto x = model->embed(ids);
    for (int64_t l = 0; l < model->config().num_layers; ++l) x = model->run_layer(l, x, *state);
    // Only the scored positions go through the LM head.
    const auto h = x.gather(1, pos.unsqueeze(-1).expand({B, N, x.size(2)}));
    const auto lp = at::log_softmax(model->logits(h, false).to(at::kFloat), -1);
    const auto tok_lp = lp.gather(2, tgt.unsqueeze(-1)).squeeze(-1).masked_fill(~valid, 0.0);
    const auto sums = tok_lp.to(at::kDouble).sum(1).cpu();
    const auto greedy = (lp.argmax(-1).eq(tgt) | ~valid).all(1).cpu();
    for (int64_t r = 0; r < B; ++r) {
      out[order[b0 + r]].sum = sums[r].item<double>();
      out[order[b0 + r]].greedy = greedy[r].item<bool>();
    }
    if (progress) progress(static_cast<int64_t>(b1), static_cast<int64_t>(order.size()));
  }
  return out;
}

int64_t code_points(std::string_view s) {
  return std::count_if(s.begin(), s.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

double stderr_of(double p, int64_t n) {
  return n > 1 ? std::sqrt(p * (1 - p) / static_cast<double>(n - 1)) : 0.0;
}

void finish(McTaskResult& r, int64_t correct, int64_t correct_norm) {
  UNIATTN_CHECK(r.n > 0, r.task, ": no questions to score");
  r.acc = static_cast<double>(correct) / r.n;
  r.acc_norm = static_cast<double>(correct_norm) / r.n;
  r.acc_stderr = stderr_of(r.acc, r.n);
  r.acc_norm_stderr = stderr_of(r.acc_norm, r.n);
}

}  // namespace

LoglikRequest tokenize_pair(const Tokenizer& tok, std::string_view context,
                            std::string_view continuation) {
  std::string ctx(context), cont(continuation);
  const auto end = ctx.find_last_not_of(" \t\n\r\v\f");
  const std::size_t keep = end == std::string::npos ? 0 : end + 1;
  cont = ctx.substr(keep) + cont;
  ctx.resize(keep);
  LoglikRequest r;
  if (ctx.empty()) {
    const auto first = tok.bos_id() ? tok.bos_id() : tok.eos_id();
    UNIATTN_CHECK(first.has_value(),
                  "empty context and the tokenizer has no bos or eos token to start from");
    r.context = {*first};
    r.continuation = tok.encode(cont, /*add_bos=*/false, /*parse_special=*/false);
  } else {
    const bool bos = tok.adds_bos();
    auto whole = tok.encode(ctx + cont, bos, /*parse_special=*/false);
    r.context = tok.encode(ctx, bos, /*parse_special=*/false);
    if (whole.size() > r.context.size())
      r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(r.context.size()),
                            whole.end());
  }
  UNIATTN_CHECK(!r.continuation.empty(), "continuation '", continuation,
                "' has no tokens after its context");
  return r;
}

std::vector<LoglikResult> score_loglikelihood(CausalLM& model,
                                              const std::vector<LoglikRequest>& requests,
                                              const ScoreOptions& options) {
  const int64_t max_len =
      options.max_len > 0 ? options.max_len : model->config().max_position_embeddings;
  UNIATTN_CHECK(max_len >= 1, "max_len must be >= 1");
  std::vector<Seq> seqs(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const auto& rq = requests[i];
    UNIATTN_CHECK(!rq.context.empty() && !rq.continuation.empty(), "request ", i,
                  ": empty context or continuation");
    const auto n = static_cast<int64_t>(rq.continuation.size());
    UNIATTN_CHECK(n <= max_len, "request ", i, ": continuation of ", n, " tokens exceeds max_len ",
                  max_len);
    // full = context + continuation, keeping its last max_len + 1 tokens; the model reads all but
    // the last one.
    std::vector<int32_t> full(rq.context);
    full.insert(full.end(), rq.continuation.begin(), rq.continuation.end());
    const auto L = static_cast<int64_t>(full.size());
    const int64_t drop = std::max<int64_t>(0, L - (max_len + 1));
    auto& s = seqs[i];
    s.input.assign(full.begin() + drop, full.end() - 1);
    const int64_t T = L - drop - 1;
    for (int64_t j = 0; j < n; ++j) {
      s.pos.push_back(T - n + j);
      s.target.push_back(rq.continuation[j]);
    }
  }
  const auto scores = score_seqs(model, seqs, options.batch, options.progress);
  std::vector<LoglikResult> out(requests.size());
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = {scores[i].sum, static_cast<int64_t>(requests[i].continuation.size()),
              scores[i].greedy};
  return out;
}

McTaskResult evaluate_mc(CausalLM& model, const Tokenizer& tok,
                         const std::vector<McQuestion>& questions, const std::string& task,
                         const McOptions& options) {
  UNIATTN_CHECK(!questions.empty(), task, ": no questions to score");
  std::vector<LoglikRequest> reqs;
  for (const auto& q : questions) {
    UNIATTN_CHECK(q.answer >= 0 && q.answer < static_cast<int64_t>(q.choices.size()), task,
                  ": question ", q.id, " has answer ", q.answer, " outside its ", q.choices.size(),
                  " choices");
    for (const auto& c : q.choices) {
      try {
        reqs.push_back(tokenize_pair(tok, q.question, options.choice_prefix + c));
      } catch (const Error& e) {
        fail(task, ": question ", q.id, ": ", e.what());
      }
    }
  }
  const auto scores = score_loglikelihood(model, reqs, options.score);
  McTaskResult r;
  r.task = task;
  r.n = static_cast<int64_t>(questions.size());
  int64_t correct = 0, correct_norm = 0;
  std::size_t k = 0;
  for (const auto& q : questions) {
    McItemResult it;
    it.id = q.id;
    it.answer = q.answer;
    double best = -INFINITY, best_norm = -INFINITY;
    for (std::size_t c = 0; c < q.choices.size(); ++c, ++k) {
      const double lp = scores[k].logprob;
      // The harness divides by len(choice), without the delimiter before it.
      const int64_t chars = code_points(q.choices[c]);
      it.logprob.push_back(lp);
      it.tokens.push_back(scores[k].tokens);
      it.chars.push_back(chars);
      if (lp > best) best = lp, it.pred = static_cast<int64_t>(c);
      if (lp / chars > best_norm) best_norm = lp / chars, it.pred_norm = static_cast<int64_t>(c);
    }
    correct += it.pred == it.answer;
    correct_norm += it.pred_norm == it.answer;
    r.items.push_back(std::move(it));
  }
  finish(r, correct, correct_norm);
  return r;
}

McTaskResult pool_mc(const std::string& name, const std::vector<const McTaskResult*>& parts) {
  McTaskResult r;
  r.task = name;
  double correct = 0, correct_norm = 0;
  for (const auto* p : parts) {
    r.n += p->n;
    correct += p->acc * p->n;
    correct_norm += p->acc_norm * p->n;
  }
  finish(r, std::llround(correct), std::llround(correct_norm));
  return r;
}

}  // namespace uniattn
