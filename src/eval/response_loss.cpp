// The held-out response loss (include/uniattn/eval/response_loss.h): truncation, batching by
// padded tokens, a layer walk without autograd, and the LM head on the scored positions only.
#include "uniattn/eval/response_loss.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "uniattn/error.h"

namespace uniattn {
namespace {

// An example to score and the number of its tokens the model reads.
struct Item {
  const TokenizedExample* ex;
  int64_t len;
};

// Sum of -log p(target) over the scored positions of one right-padded batch. ids, mask [B, T]
// (mask: the token at that position is scored).
double batch_nll(CausalLM& model, const at::Tensor& ids, const at::Tensor& mask) {
  auto state = model->begin(ids, nullptr, ForwardOptions{});
  auto x = model->embed(ids);
  for (int64_t l = 0; l < model->config().num_layers; ++l) x = model->run_layer(l, x, *state);
  const int64_t T = ids.size(1);
  const auto sel = mask.narrow(1, 1, T - 1);
  const auto h = x.narrow(1, 0, T - 1).reshape({-1, x.size(-1)}).index({sel.reshape({-1})});
  const auto target = ids.narrow(1, 1, T - 1).index({sel});
  // The LM head in chunks of about 2^26 logits (256 MiB in fp32).
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 26) / model->config().vocab_size);
  double nll = 0;
  for (int64_t i = 0; i < h.size(0); i += chunk) {
    const int64_t n = std::min(chunk, h.size(0) - i);
    const auto logits = model->logits(h.narrow(0, i, n).unsqueeze(0), false).squeeze(0);
    const auto lp = at::log_softmax(logits.to(at::kFloat), -1);
    nll -= lp.gather(1, target.narrow(0, i, n).unsqueeze(1)).to(at::kDouble).sum().item<double>();
  }
  return nll;
}

}  // namespace

ResponseLossResult response_loss(CausalLM& model, const std::vector<TokenizedExample>& examples,
                                 const ResponseLossOptions& o) {
  UNIATTN_CHECK(o.max_len == 0 || o.max_len >= 2,
                "response loss: max_len must be 0 (no cut) or >= 2, got ", o.max_len);
  UNIATTN_CHECK(o.batch_tokens >= 1, "response loss: batch_tokens must be >= 1, got ",
                o.batch_tokens);
  const int64_t vocab = model->config().vocab_size;
  UNIATTN_CHECK(o.pad_id >= 0 && o.pad_id < vocab, "response loss: pad id ", o.pad_id,
                " outside the model vocabulary [0, ", vocab, ")");

  ResponseLossResult r;
  std::vector<Item> items;
  for (std::size_t e = 0; e < examples.size(); ++e) {
    const auto& ex = examples[e];
    UNIATTN_CHECK(ex.ids.size() == ex.loss_mask.size(), "response loss: example ", e, " has ",
                  ex.ids.size(), " ids but ", ex.loss_mask.size(), " loss_mask entries");
    const auto n = static_cast<int64_t>(ex.ids.size());
    const bool cut = o.max_len > 0 && n > o.max_len;
    const int64_t len = cut ? o.max_len : n;
    if (cut || ex.truncated) ++r.truncated;
    int64_t targets = 0;
    for (int64_t i = 1; i < n; ++i)
      if (ex.loss_mask[i]) (i < len ? targets : r.cut_target_tokens) += 1;
    if (targets == 0) {
      ++r.skipped;
      continue;
    }
    for (int64_t i = 0; i < len; ++i)
      UNIATTN_CHECK(ex.ids[i] >= 0 && ex.ids[i] < vocab, "response loss: example ", e,
                    ": token id ", ex.ids[i], " outside the model vocabulary [0, ", vocab, ")");
    ++r.examples;
    r.target_tokens += targets;
    items.push_back({&ex, len});
  }
  if (items.empty()) return r;

  // Longest first: similar lengths share a batch, and the peak memory shows on the first one.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.len > b.len; });
  at::NoGradGuard no_grad;
  const auto dev = model->device();
  const auto total = static_cast<int64_t>(items.size());
  double nll = 0;
  for (int64_t b0 = 0; b0 < total;) {
    const int64_t T = items[b0].len;
    const int64_t B = std::min(total - b0, std::max<int64_t>(1, o.batch_tokens / T));
    auto ids = at::full({B, T}, o.pad_id, at::kLong);
    auto mask = at::zeros({B, T}, at::kBool);
    auto ia = ids.accessor<int64_t, 2>();
    auto ma = mask.accessor<bool, 2>();
    for (int64_t row = 0; row < B; ++row) {
      const auto& it = items[b0 + row];
      for (int64_t t = 0; t < it.len; ++t) {
        ia[row][t] = it.ex->ids[t];
        ma[row][t] = t > 0 && it.ex->loss_mask[t] != 0;
      }
    }
    nll += batch_nll(model, ids.to(dev), mask.to(dev));
    b0 += B;
    if (o.progress) o.progress(b0, total);
  }
  r.loss = nll / static_cast<double>(r.target_tokens);
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace uniattn
