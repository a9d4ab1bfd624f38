// Attention-map similarity between layers (docs/layer_selection.md): the probability maps of
// every layer for one record are gathered (a chunk of heads at a time), their Gram matrix over
// layers gives every pairwise cosine at once.
#include "uniattn/calib/layer_similarity.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "attention/reference.h"
#include "model/decoder_layer.h"
#include "model/forward_state.h"
#include "model/layers.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

// Layer l's probability map for the queries of heads [h0, h0 + n): the arithmetic of the
// reference path of AttentionImpl::prefill_attention for a layer that computes its own map
// (projections, q/k norms, RoPE, scale, soft-cap, mask), over the layer's input `x` [1, T, d].
at::Tensor layer_probs(CausalLM& m, int64_t l, const at::Tensor& x, ForwardState& s, int64_t h0,
                       int64_t n) {
  const auto& c = m->config();
  auto layer = m->layer(l);
  auto& attn = *layer->self_attn;
  const double eps = c.rms_norm_eps;
  auto xn = rms_norm(x, layer->input_layernorm, eps, c.norm_plus_one);
  const int64_t b = x.size(0), t = x.size(1);
  auto heads = [&](Proj& p, int64_t h) {
    return p->forward(xn).view({b, t, h, c.head_dim}).transpose(1, 2);
  };
  auto q = heads(attn.q_proj, c.num_heads), k = heads(attn.k_proj, c.num_kv_heads);
  if (c.qk_norm) {
    auto params = attn.named_parameters(true);
    q = rms_norm(q, params["q_norm.weight"], eps, c.norm_plus_one);
    k = rms_norm(k, params["k_norm.weight"], eps, c.norm_plus_one);
  }
  const bool sliding = c.layer_is_sliding(l);
  const auto& [cos, sin] = sliding ? s.rope_sliding : s.rope_global;
  q = apply_rotary(q, cos, sin);
  k = apply_rotary(k, cos, sin);
  // Only the kv heads the chosen query heads read.
  const int64_t per_kv = c.num_heads / c.num_kv_heads;
  const int64_t k0 = h0 / per_kv, k1 = (h0 + n - 1) / per_kv + 1;
  auto kc = k.narrow(1, k0, k1 - k0);
  auto qc = q.narrow(1, h0, n);
  if (per_kv > 1) kc = kc.repeat_interleave(per_kv, 1).narrow(1, h0 - k0 * per_kv, n);
  const at::Tensor& mask = sliding ? s.mask_sliding : s.mask_global;
  return reference_probs(qc, kc, mask, AttnMath{c.attention_scale(), c.attn_logit_softcap});
}

// Adds cos(P_i^h, P_j^h) of one record, heads [h0, h0 + n), to sum [Hq, L, L].
void add_record(CausalLM& m, const at::Tensor& ids, int64_t h0, int64_t n, at::Tensor& sum) {
  const int64_t L = m->config().num_layers;
  auto s = m->begin(ids, nullptr, ForwardOptions{});
  auto x = m->embed(ids);
  std::vector<at::Tensor> maps;  // [n, T*T] fp64 per layer
  for (int64_t l = 0; l < L; ++l) {
    maps.push_back(layer_probs(m, l, x, *s, h0, n)[0].reshape({n, -1}).to(at::kDouble));
    if (l + 1 < L) x = m->run_layer(l, x, *s);
  }
  auto p = at::stack(maps, 1);                   // [n, L, T*T]
  auto gram = at::matmul(p, p.transpose(1, 2));  // [n, L, L]
  auto norms = gram.diagonal(0, 1, 2).clamp_min(1e-300).sqrt();
  auto cosine = gram / (norms.unsqueeze(2) * norms.unsqueeze(1));
  sum.narrow(0, h0, n).add_(cosine.to(sum.device()));
}

}  // namespace

LayerSimilarity attention_similarity(CausalLM& model, const std::vector<TokenizedExample>& examples,
                                     const SimilarityOptions& o) {
  const auto& c = model->config();
  UNIATTN_CHECK(!c.uniattn.enabled(), "attention similarity: the model must be a standard model; ",
                "it has SuperBlocks (", c.uniattn.describe(), ")");
  UNIATTN_CHECK(!examples.empty(), "attention similarity: no examples");
  at::NoGradGuard ng;
  LayerSimilarity r;
  r.num_layers = c.num_layers;
  r.num_heads = c.num_heads;
  r.num_kv_heads = c.num_kv_heads;
  auto sum = at::zeros({c.num_heads, c.num_layers, c.num_layers}, at::kDouble);
  int64_t done = 0;
  for (size_t e = 0; e < examples.size(); ++e) {
    const auto& ids32 = examples[e].ids;
    UNIATTN_CHECK(!ids32.empty(), "attention similarity: example ", e, " has no tokens");
    const int64_t t = static_cast<int64_t>(ids32.size());
    const double per_head = static_cast<double>(c.num_layers) * t * t * 8.0;
    const int64_t chunk = std::clamp<int64_t>(
        static_cast<int64_t>(static_cast<double>(o.max_map_bytes) / per_head), 1, c.num_heads);
    auto ids = at::tensor(std::vector<int64_t>(ids32.begin(), ids32.end()), at::kLong)
                   .unsqueeze(0)
                   .to(model->device());
    for (int64_t h0 = 0; h0 < c.num_heads; h0 += chunk) {
      add_record(model, ids, h0, std::min(chunk, c.num_heads - h0), sum);
      if (o.progress) o.progress(++done, 0);
    }
    r.tokens += t;
  }
  r.records = static_cast<int64_t>(examples.size());
  r.per_head = sum / static_cast<double>(r.records);
  r.per_kv_group =
      r.per_head.view({c.num_kv_heads, c.num_heads / c.num_kv_heads, c.num_layers, c.num_layers})
          .mean(1);
  r.mean = r.per_head.mean(0);
  return r;
}

std::vector<std::vector<int64_t>> superblock_chains(const ModelConfig& c) {
  std::vector<std::vector<int64_t>> runs;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (runs.empty() || c.layer_is_sliding(l) != c.layer_is_sliding(runs.back().back()))
      runs.emplace_back();
    runs.back().push_back(l);
  }
  const bool alternating = runs.size() > 2 && std::all_of(runs.begin(), runs.end(),
                                                          [](auto& r) { return r.size() == 1; });
  if (!alternating) return runs;
  std::vector<std::vector<int64_t>> kinds(2);
  for (int64_t l = 0; l < c.num_layers; ++l) kinds[c.layer_is_sliding(l) ? 0 : 1].push_back(l);
  return kinds;
}

std::vector<CandidateGroup> candidate_groups(const at::Tensor& mean,
                                             const std::vector<std::vector<int64_t>>& chains,
                                             double threshold) {
  UNIATTN_CHECK(mean.dim() == 2 && mean.size(0) == mean.size(1),
                "candidate groups: the similarity must be a square [L, L] matrix, got ",
                mean.sizes());
  auto sim = mean.to(at::kDouble).contiguous();
  const auto* a = sim.data_ptr<double>();
  const int64_t L = sim.size(0);
  std::vector<CandidateGroup> out;
  auto close = [&](CandidateGroup& g, double sum) {
    if (g.layers.size() >= 2) {
      g.mean_adjacent = sum / static_cast<double>(g.layers.size() - 1);
      out.push_back(g);
    }
  };
  for (const auto& chain : chains) {
    CandidateGroup g;
    double sum = 0.0;
    for (size_t i = 0; i < chain.size(); ++i) {
      UNIATTN_CHECK(chain[i] >= 0 && chain[i] < L, "candidate groups: layer ", chain[i],
                    " outside the ", L, "-layer similarity");
      const double s = i ? a[chain[i - 1] * L + chain[i]] : -1.0;
      if (i && s >= threshold) {
        if (g.layers.empty()) {
          g = CandidateGroup{{chain[i - 1]}, s, 0.0};
          sum = 0.0;
        }
        g.layers.push_back(chain[i]);
        g.min_adjacent = std::min(g.min_adjacent, s);
        sum += s;
      } else {
        close(g, sum);
        g = CandidateGroup{};
      }
    }
    close(g, sum);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& x, const auto& y) { return x.mean_adjacent > y.mean_adjacent; });
  return out;
}

std::string format_groups(const std::vector<std::vector<int64_t>>& groups) {
  std::ostringstream os;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& v = groups[g];
    if (g) os << ';';
    const bool consecutive =
        v.size() > 1 && v.back() - v.front() + 1 == static_cast<int64_t>(v.size());
    if (consecutive) {
      os << v.front() << '-' << v.back();
    } else {
      for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
    }
  }
  std::string s = os.str();
  // One comma-separated group alone would read as SIZE,BEGIN,END.
  if (!s.empty() && s.find(';') == std::string::npos && s.find('-') == std::string::npos) s += ';';
  return s;
}

}  // namespace uniattn
