// SuperBlock search (include/uniattn/calib/layer_search.h, docs/layer_selection.md): candidate
// groups scored alone from the stored base activations, an exact K-best selection under the
// follower budget, and full calibrations of the best few.
#include "uniattn/calib/layer_search.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>

#include <unistd.h>

#include "internal.h"
#include "model/decoder_layer.h"
#include "model/forward_state.h"
#include "uniattn/calib/layer_similarity.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/kv_cache.h"

namespace uniattn {
using namespace calib;

namespace {

using Clock = std::chrono::steady_clock;

// A unified model with `spec` sharing every weight but W_c with `base`.
CausalLM make_unified(CausalLM& base, const UniAttnSpec& spec) {
  ModelConfig c = base->config();
  c.uniattn = spec;
  c.validate();
  CausalLM u(c, at::TensorOptions().dtype(base->dtype()).device(base->device()));
  share_weights(base, u);
  return u;
}

std::shared_ptr<ForwardState> state(CausalLM& m, const Batch& b) {
  auto s = m->begin(b.ids, nullptr, ForwardOptions{});
  const auto n = static_cast<size_t>(m->config().num_layers);
  s->captured_attn_residual.resize(n);
  s->captured_normed_input.resize(n);
  return s;
}

// What W_c's output is fitted to at layer l after run_layer captured into `s`, as calibrate()
// defines it (docs/calibration.md): h = x + attn in pre-norm layouts; with sandwich norms
// (Gemma) the attention output before the post-attention norm, recomputed from the captured xn
// with the same state.
at::Tensor wc_target(CausalLM& m, int64_t l, ForwardState& s) {
  if (!m->config().sandwich_norms) return s.captured_attn_residual[l];
  return m->layer(l)->self_attn->forward(s.captured_normed_input[l], s);
}

std::string key(const char* what, int64_t layer) { return what + std::to_string(layer); }

// Scores every candidate group from one stored base pass.
class CandidateScorer {
 public:
  CandidateScorer(CausalLM& base, const LayerSearchOptions& o) : base_(base), o_(o) {}
  std::vector<CandidateScore> run(const std::vector<TokenizedExample>& calib,
                                  const std::vector<TokenizedExample>& heldout,
                                  const std::vector<std::vector<int64_t>>& chains);
  double loss_base() const { return loss_base_; }
  int64_t calib_tokens() const { return calib_tokens_; }
  int64_t heldout_tokens() const { return heldout_tokens_; }

 private:
  void base_pass(int64_t first, int64_t last);
  // Calibrates `group`'s followers in order in `u` (where `group` is a SuperBlock); appends one
  // score per prefix of two or more layers.
  void score_leader(CausalLM& u, const std::vector<int64_t>& group,
                    std::vector<CandidateScore>& out);
  void solve_follower(CausalLM& u, int64_t f, std::vector<at::Tensor>& xu,
                      std::vector<std::shared_ptr<ForwardState>>& st);
  CandidateScore score_prefix(const std::vector<int64_t>& layers,
                              const std::vector<at::Tensor>& xu);
  void say(const std::string& s) const {
    if (o_.progress) o_.progress(s);
  }

  CausalLM& base_;
  const LayerSearchOptions& o_;
  std::vector<Batch> batches_;
  std::unique_ptr<ActivationStore> store_;
  std::filesystem::path spill_dir_;
  double loss_base_ = 0.0;
  int64_t calib_tokens_ = 0, heldout_tokens_ = 0;
};

// Stores, for every batch, the base stream x<l> before each layer l in [first, last + 1] and the
// W_c target y<l> of each layer in (first, last].
void CandidateScorer::base_pass(int64_t first, int64_t last) {
  const int64_t L = base_->config().num_layers;
  double sum = 0.0;
  int64_t n = 0;
  for (size_t i = 0; i < batches_.size(); ++i) {
    const auto& b = batches_[i];
    auto s = state(base_, b);
    auto x = base_->embed(b.ids);
    for (int64_t l = 0; l < L; ++l) {
      if (l >= first && l <= last + 1) store_->put(key("x", l), i, x);
      s->capture = l > first && l <= last;
      x = base_->run_layer(l, x, *s);
      if (s->capture) store_->put(key("y", l), i, wc_target(base_, l, *s));
    }
    if (last + 1 == L) store_->put(key("x", L), i, x);
    if (b.part == Part::Heldout) {
      auto [ls, cnt] = loss_sums(base_, x, b);
      sum += ls;
      n += cnt;
    }
  }
  UNIATTN_CHECK(n > 0, "layer search: the held-out examples have no target tokens");
  loss_base_ = sum / static_cast<double>(n);
  heldout_tokens_ = n;
}

void CandidateScorer::solve_follower(CausalLM& u, int64_t f, std::vector<at::Tensor>& xu,
                                     std::vector<std::shared_ptr<ForwardState>>& st) {
  const auto& c = base_->config();
  const bool bias = c.attention_bias;
  Stats fit;
  for (size_t i = 0; i < batches_.size(); ++i) {
    if (batches_[i].part != Part::Fit) continue;
    st[i]->capture = true;
    u->run_layer(f, xu[i], *st[i]);  // W_c of f is still zero
    st[i]->capture = false;
    const auto& valid = batches_[i].valid;
    auto y = store_->get(key("y", f), i);
    auto x = st[i]->captured_normed_input[f].to(at::kDouble);
    if (bias) x = at::cat({x, at::ones({x.size(0), x.size(1), 1}, x.options())}, 2);
    auto d = (y - wc_target(u, f, *st[i])).to(at::kDouble);
    fit.add(real_rows(x, valid), real_rows(d, valid), real_rows(y, valid));
    st[i]->captured_attn_residual[f] = st[i]->captured_normed_input[f] = at::Tensor();
  }
  UNIATTN_CHECK(!fit.empty(), "layer search: no calibration tokens");
  auto w = solve_ridge(fit.xtx, fit.xtd, ridge_lambda(fit.xtx, o_.ridge));
  auto lin = u->layer(f)->self_attn->w_c;
  lin->weight.copy_(w.narrow(0, 0, c.hidden_size).t());
  if (bias) lin->bias.copy_(w[c.hidden_size]);
  for (size_t i = 0; i < batches_.size(); ++i) xu[i] = u->run_layer(f, xu[i], *st[i]);
}

// The held-out examples continue from the group's last follower through base layers.
CandidateScore CandidateScorer::score_prefix(const std::vector<int64_t>& layers,
                                             const std::vector<at::Tensor>& xu) {
  const int64_t L = base_->config().num_layers, f = layers.back();
  double sum = 0.0, err = 0.0, ref = 0.0;
  int64_t n = 0;
  for (size_t i = 0; i < batches_.size(); ++i) {
    const auto& b = batches_[i];
    if (b.part != Part::Heldout) continue;
    auto xb = store_->get(key("x", f + 1), i);
    err += (real_rows(xu[i], b.valid) - real_rows(xb, b.valid))
               .to(at::kDouble)
               .square()
               .sum()
               .item<double>();
    ref += real_rows(xb, b.valid).to(at::kDouble).square().sum().item<double>();
    auto s = state(base_, b);
    auto z = xu[i];
    for (int64_t l = f + 1; l < L; ++l) z = base_->run_layer(l, z, *s);
    auto [ls, cnt] = loss_sums(base_, z, b);
    sum += ls;
    n += cnt;
  }
  CandidateScore sc;
  sc.layers = layers;
  sc.heldout_loss = sum / static_cast<double>(std::max<int64_t>(n, 1));
  sc.delta = sc.heldout_loss - loss_base_;
  sc.rel_err = ref > 0 ? std::sqrt(err / ref) : 0.0;
  return sc;
}

void CandidateScorer::score_leader(CausalLM& u, const std::vector<int64_t>& group,
                                   std::vector<CandidateScore>& out) {
  const int64_t a = group.front();
  std::vector<std::shared_ptr<ForwardState>> st;
  std::vector<at::Tensor> xu;
  for (size_t i = 0; i < batches_.size(); ++i) {
    st.push_back(state(u, batches_[i]));
    xu.push_back(u->run_layer(a, store_->get(key("x", a), i), *st[i]));  // keeps q/k in st[i]
  }
  for (size_t j = 1; j < group.size(); ++j) {
    const int64_t f = group[j];
    // Interleaved chains: the layers in between are ordinary here (in `u` they may belong to
    // another SuperBlock).
    for (int64_t l = group[j - 1] + 1; l < f; ++l)
      for (size_t i = 0; i < batches_.size(); ++i) xu[i] = base_->run_layer(l, xu[i], *st[i]);
    solve_follower(u, f, xu, st);
    out.push_back(score_prefix({group.begin(), group.begin() + j + 1}, xu));
    say("candidate " + format_groups({out.back().layers}) + ": held-out loss " +
        std::to_string(out.back().heldout_loss));
  }
}

std::vector<CandidateScore> CandidateScorer::run(const std::vector<TokenizedExample>& calib,
                                                 const std::vector<TokenizedExample>& heldout,
                                                 const std::vector<std::vector<int64_t>>& chains) {
  at::NoGradGuard ng;
  std::vector<const TokenizedExample*> fit, held;
  for (const auto& e : calib) fit.push_back(&e);
  for (const auto& e : heldout) held.push_back(&e);
  const auto& co = o_.calib;
  const auto dev = base_->device();
  batches_ = make_batches(fit, Part::Fit, co.batch_tokens, 0, co.pad_id, dev);
  for (auto& b : make_batches(held, Part::Heldout, co.batch_tokens, 0, co.pad_id, dev))
    batches_.push_back(std::move(b));
  for (const auto& b : batches_)
    if (b.part == Part::Fit) calib_tokens_ += b.real_tokens;
  spill_dir_ = std::filesystem::temp_directory_path() /
               ("uniattn-layer-search-" + std::to_string(::getpid()));
  store_ = std::make_unique<ActivationStore>(spill_dir_, co.memory_budget_bytes);
  int64_t first = std::numeric_limits<int64_t>::max(), last = -1;
  for (const auto& ch : chains)
    for (auto l : ch) first = std::min(first, l), last = std::max(last, l);
  say("base pass");
  base_pass(first, last);
  // The groups of largest size tile each chain; offset k holds the groups whose leader sits at a
  // chain position = k (mod max_group), so max_group unified models cover every leader.
  std::vector<CandidateScore> out;
  const auto g = static_cast<size_t>(o_.max_group);
  for (size_t k = 0; k < g; ++k) {
    UniAttnSpec tiles{Variant::UniAttn, {}};
    for (const auto& ch : chains)
      for (size_t p = k; p + 1 < ch.size(); p += g)
        tiles.groups.emplace_back(ch.begin() + p, ch.begin() + std::min(ch.size(), p + g));
    if (tiles.groups.empty()) continue;
    std::sort(tiles.groups.begin(), tiles.groups.end());
    auto u = make_unified(base_, tiles);
    for (const auto& group : tiles.groups) score_leader(u, group, out);
  }
  store_.reset();
  remove_tree(spill_dir_);
  return out;
}

// The chains restricted to [first, last].
std::vector<std::vector<int64_t>> chains_within(const ModelConfig& c, int64_t first, int64_t last) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& ch : superblock_chains(c)) {
    std::vector<int64_t> kept;
    for (auto l : ch)
      if (l >= first && l <= last) kept.push_back(l);
    if (kept.size() >= 2) out.push_back(std::move(kept));
  }
  return out;
}

void check_options(const ModelConfig& c, const LayerSearchOptions& o,
                   const std::vector<TokenizedExample>& calib,
                   const std::vector<TokenizedExample>& heldout) {
  UNIATTN_CHECK(!c.uniattn.enabled(), "layer search: the base model must be a standard model; ",
                "it has SuperBlocks (", c.uniattn.describe(), ")");
  UNIATTN_CHECK(!calib.empty(), "layer search: no calibration examples");
  UNIATTN_CHECK(!heldout.empty(),
                "layer search: no held-out examples (the search minimises "
                "the held-out loss)");
  UNIATTN_CHECK(o.followers >= 0 || o.kv_bytes_per_token >= 0,
                "layer search: give a follower budget or a KV bytes-per-token target");
  UNIATTN_CHECK(o.max_group >= 2, "layer search: max_group ", o.max_group, " < 2");
  const int64_t last = o.last_layer < 0 ? c.num_layers - 1 : o.last_layer;
  UNIATTN_CHECK(o.first_layer >= 0 && o.first_layer < last && last < c.num_layers,
                "layer search: layer range [", o.first_layer, ", ", last,
                "] is empty or outside the model's ", c.num_layers, " layers");
  UNIATTN_CHECK(o.verify >= 1, "layer search: verify must be >= 1");
}

// The follower budget a KV target asks for: the fewest followers that reach it.
int64_t budget_followers(const ModelConfig& c, const LayerSearchOptions& o, at::ScalarType dt,
                         const std::vector<std::vector<int64_t>>& chains, int64_t base_bytes) {
  if (o.followers >= 0) return o.followers;
  UNIATTN_CHECK(!chains.empty(), "layer search: no two layers in range can form a SuperBlock");
  const UniAttnSpec one{Variant::UniAttn, {{chains[0][0], chains[0][1]}}};
  const int64_t saved = base_bytes - kv_bytes_per_token(c, one, dt);
  UNIATTN_CHECK(saved > 0, "layer search: a follower saves no KV bytes on this model");
  const int64_t need = std::max<int64_t>(0, base_bytes - o.kv_bytes_per_token);
  return (need + saved - 1) / saved;
}

SearchRow verify_spec(CausalLM& base, const UniAttnSpec& spec, const std::string& origin,
                      double predicted, const std::vector<TokenizedExample>& calib,
                      const std::vector<TokenizedExample>& heldout, const LayerSearchOptions& o) {
  auto u = make_unified(base, spec);
  const auto res = calibrate(base, u, calib, heldout, o.calib);
  SearchRow row;
  row.spec = format_groups(spec.groups);
  row.origin = origin;
  row.followers = spec.num_followers();
  row.kv_bytes_per_token = kv_bytes_per_token(base->config(), spec, base->dtype());
  row.predicted_delta = predicted;
  row.loss_no_wc = res.loss_unified_no_wc;
  row.loss_wc = res.loss_unified_wc;
  row.report = res.followers;
  return row;
}

}  // namespace

int64_t kv_bytes_per_token(const ModelConfig& config, const UniAttnSpec& spec,
                           at::ScalarType dtype) {
  ModelConfig c = config;
  c.uniattn = spec;
  return KVCache(c, 1, 1, dtype, at::kCPU).bytes_per_token();
}

std::vector<std::vector<std::vector<int64_t>>> best_group_sets(
    const std::vector<CandidateScore>& candidates, const std::vector<std::vector<int64_t>>& chains,
    int64_t followers, int64_t k) {
  std::map<std::vector<int64_t>, size_t> index;
  for (size_t i = 0; i < candidates.size(); ++i) index[candidates[i].layers] = i;
  // Chain entries laid end to end; a group is a run inside one chain.
  std::vector<std::pair<size_t, size_t>> pos;  // (chain, index in chain)
  for (size_t c = 0; c < chains.size(); ++c)
    for (size_t i = 0; i < chains[c].size(); ++i) pos.emplace_back(c, i);
  using Partial = std::pair<double, std::vector<size_t>>;  // (sum of deltas, candidates)
  const size_t n = pos.size(), F = static_cast<size_t>(std::max<int64_t>(followers, 0));
  std::vector<std::vector<std::vector<Partial>>> dp(n + 1,
                                                    std::vector<std::vector<Partial>>(F + 1));
  dp[0][0].push_back({0.0, {}});
  auto offer = [&](std::vector<Partial>& to, Partial p) {
    to.push_back(std::move(p));
    std::stable_sort(to.begin(), to.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    if (static_cast<int64_t>(to.size()) > k) to.pop_back();
  };
  for (size_t i = 0; i < n; ++i)
    for (size_t u = 0; u <= F; ++u)
      for (const auto& p : dp[i][u]) {
        offer(dp[i + 1][u], p);
        const auto& ch = chains[pos[i].first];
        std::vector<int64_t> g = {ch[pos[i].second]};
        for (size_t j = pos[i].second + 1; j < ch.size() && u + g.size() <= F; ++j) {
          g.push_back(ch[j]);
          auto it = index.find(g);
          if (it == index.end()) continue;
          Partial q = p;
          q.first += candidates[it->second].delta;
          q.second.push_back(it->second);
          offer(dp[i + g.size()][u + g.size() - 1], std::move(q));
        }
      }
  std::vector<std::vector<std::vector<int64_t>>> out;
  for (const auto& p : dp[n][F]) {
    std::vector<std::vector<int64_t>> groups;
    for (auto c : p.second) groups.push_back(candidates[c].layers);
    std::sort(groups.begin(), groups.end());
    out.push_back(std::move(groups));
  }
  return out;
}

SearchResult search_superblocks(CausalLM& base, const std::vector<TokenizedExample>& calib,
                                const std::vector<TokenizedExample>& heldout,
                                const LayerSearchOptions& o) {
  const auto& c = base->config();
  check_options(c, o, calib, heldout);
  const int64_t last = o.last_layer < 0 ? c.num_layers - 1 : o.last_layer;
  const auto chains = chains_within(c, o.first_layer, last);
  SearchResult r;
  r.base_kv_bytes_per_token = kv_bytes_per_token(c, UniAttnSpec{}, base->dtype());
  r.followers = budget_followers(c, o, base->dtype(), chains, r.base_kv_bytes_per_token);
  UNIATTN_CHECK(r.followers > 0, "layer search: the budget asks for no followers");
  const auto t0 = Clock::now();
  CandidateScorer scorer(base, o);
  r.candidates = scorer.run(calib, heldout, chains);
  r.loss_base = scorer.loss_base();
  r.calib_tokens = scorer.calib_tokens();
  r.heldout_tokens = scorer.heldout_tokens();
  r.seconds_candidates = since(t0);
  const auto sets =
      best_group_sets(r.candidates, chains, r.followers, std::max<int64_t>(o.verify, 1));
  UNIATTN_CHECK(!sets.empty(), "layer search: no SuperBlocks with ", r.followers,
                " followers fit in layers [", o.first_layer, ", ", last,
                "] with groups of at most ", o.max_group, " layers");
  const auto t1 = Clock::now();
  std::map<std::vector<int64_t>, double> delta;
  for (const auto& cand : r.candidates) delta[cand.layers] = cand.delta;
  for (int64_t i = 0; i < std::min<int64_t>(o.verify, sets.size()); ++i) {
    double pred = 0.0;
    for (const auto& g : sets[i]) pred += delta[g];
    if (o.progress) o.progress("calibrating " + format_groups(sets[i]));
    r.rows.push_back(verify_spec(base, UniAttnSpec{Variant::UniAttn, sets[i]}, "search", pred,
                                 calib, heldout, o));
  }
  for (const auto& spec : o.compare) {
    if (o.progress) o.progress("calibrating " + format_groups(spec.groups) + " (compare)");
    r.rows.push_back(verify_spec(base, UniAttnSpec{Variant::UniAttn, spec.groups}, "compare",
                                 std::numeric_limits<double>::quiet_NaN(), calib, heldout, o));
  }
  std::stable_sort(r.rows.begin(), r.rows.end(),
                   [](const auto& a, const auto& b) { return a.loss_wc < b.loss_wc; });
  r.seconds_verify = since(t1);
  return r;
}

}  // namespace uniattn
