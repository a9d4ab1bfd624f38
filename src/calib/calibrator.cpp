// The one-pass W_c calibration: base and unified activations advance layer by layer over the
// whole calibration set; each follower is solved at its own depth, then applied before the
// unified stream moves on (docs/calibration.md explains the design).
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include <unistd.h>

#include "internal.h"
#include "model/decoder_layer.h"
#include "model/forward_state.h"
#include "model/load/tensor_bytes.h"
#include "uniattn/error.h"
#include "uniattn/eval/response_loss.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/safetensors.h"
#include "uniattn/model/layer_role.h"

namespace uniattn {
using namespace calib;

std::pair<double, int64_t> calib::loss_sums(CausalLM& m, const at::Tensor& hidden, const Batch& b) {
  if (hidden.size(1) < 2) return {0.0, 0};
  const int64_t t = hidden.size(1);
  auto sel = b.loss_mask.narrow(1, 1, t - 1);
  auto h = real_rows(hidden.narrow(1, 0, t - 1), sel);
  auto target = b.ids.narrow(1, 1, t - 1).index({sel});
  double sum = 0.0;
  for (int64_t i = 0; i < h.size(0); i += 1024) {
    const int64_t n = std::min<int64_t>(1024, h.size(0) - i);
    auto logits = m->logits(h.narrow(0, i, n).unsqueeze(0), false).squeeze(0).to(at::kFloat);
    sum += at::cross_entropy_loss(logits, target.narrow(0, i, n), {}, at::Reduction::Sum)
               .item<double>();
  }
  return {sum, h.size(0)};
}

namespace {

using Clock = std::chrono::steady_clock;

// X with a column of ones when W_c has a bias (the bias is then the last row of W).
at::Tensor with_bias_column(const at::Tensor& x, bool bias) {
  return bias ? at::cat({x, at::ones({x.size(0), 1}, x.options())}, 1) : x;
}

uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
  const auto* c = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 1099511628211ull;
  return h;
}

uint64_t hash_examples(const std::vector<TokenizedExample>& a, uint64_t h) {
  for (const auto& e : a) {
    h = fnv1a(h, e.ids.data(), e.ids.size() * sizeof(int32_t));
    h = fnv1a(h, e.loss_mask.data(), e.loss_mask.size());
  }
  return h;
}

nlohmann::json to_json(const FollowerReport& r) {
  return {{"layer", r.layer},
          {"leader", r.leader},
          {"ridge", r.ridge},
          {"lambda", r.lambda},
          {"calib_tokens", r.calib_tokens},
          {"heldout_tokens", r.heldout_tokens},
          {"calib_err", r.calib_err},
          {"heldout_err", r.heldout_err},
          {"calib_rel_residual", r.calib_rel_residual},
          {"heldout_rel_residual", r.heldout_rel_residual},
          {"solve_seconds", r.solve_seconds}};
}

FollowerReport report_from_json(const nlohmann::json& j) {
  FollowerReport r;
  r.layer = j.at("layer");
  r.leader = j.at("leader");
  r.ridge = j.at("ridge");
  r.lambda = j.at("lambda");
  r.calib_tokens = j.at("calib_tokens");
  r.heldout_tokens = j.at("heldout_tokens");
  auto num = [](const nlohmann::json& v) {
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  r.calib_err = num(j.at("calib_err"));
  r.heldout_err = num(j.at("heldout_err"));
  r.calib_rel_residual = num(j.at("calib_rel_residual"));
  r.heldout_rel_residual = num(j.at("heldout_rel_residual"));
  r.solve_seconds = j.at("solve_seconds");
  return r;
}

double ratio(double num_sq, double den_sq) {
  return den_sq > 0 ? std::sqrt(num_sq / den_sq) : std::numeric_limits<double>::quiet_NaN();
}

// What W_c's output is fitted to at layer l, after run_layer captured into `s`
// (docs/calibration.md): the residual stream after the attention sub-layer, h = x + attn, in
// pre-norm layouts; with Gemma's sandwich norms, where h = x + post_attention_layernorm(attn +
// W_c xn), the attention output before that norm (the reference implementation's Gemma-2
// target, method.md section 4), recomputed from the captured xn with the same state (same
// masks, rotary tables and leader q/k; W_c of l is zero while statistics are taken).
at::Tensor wc_target(CausalLM& m, int64_t l, ForwardState& s) {
  if (!m->config().sandwich_norms) return s.captured_attn_residual[l];
  return m->layer(l)->self_attn->forward(s.captured_normed_input[l], s);
}

// The calibration run: models, batches, stored activations and the progress files.
class Calibrator {
 public:
  Calibrator(CausalLM& base, CausalLM& unified, const CalibOptions& o)
      : base_(base), uni_(unified), o_(o), spec_(unified->config().uniattn) {}

  CalibResult run(const std::vector<TokenizedExample>& calib,
                  const std::vector<TokenizedExample>& heldout);

 private:
  std::shared_ptr<ForwardState> state(CausalLM& m, const Batch& b) {
    auto s = m->begin(b.ids, nullptr, ForwardOptions{});
    s->captured_attn_residual.resize(nlayers_);
    s->captured_normed_input.resize(nlayers_);
    return s;
  }
  // Runs unified layer l on batch i from stream `in`; installs the leader's q/k for a follower
  // and keeps them when l leads followers. Returns the layer output (capture optional). The
  // store keys name the leader: SuperBlocks may interleave (Gemma-2: "2,4;3,5"), so several
  // leaders' q/k can be open at once.
  at::Tensor run_unified(int64_t l, int64_t i, const at::Tensor& x, ForwardState& s) {
    const LayerRole& r = roles_[l];
    if (r.is_follower())
      s.shared[r.leader] = SharedAttention{
          store_->get(qk_key("q", r.leader), i), store_->get(qk_key("k", r.leader), i), {}, {}, {}};
    auto out = uni_->run_layer(l, x, s);
    if (r.has_followers()) {
      store_->put(qk_key("q", l), i, s.shared[l].q);
      store_->put(qk_key("k", l), i, s.shared[l].k);
    }
    return out;
  }
  // The same for the base model, which may itself be a unified model (e.g. planted tests).
  at::Tensor run_base(int64_t l, int64_t i, const at::Tensor& x, ForwardState& s) {
    const LayerRole& r = base_roles_[l];
    if (r.is_follower())
      s.shared[r.leader] = SharedAttention{store_->get(qk_key("bq", r.leader), i),
                                           store_->get(qk_key("bk", r.leader), i),
                                           {},
                                           {},
                                           {}};
    auto out = base_->run_layer(l, x, s);
    if (r.has_followers()) {
      store_->put(qk_key("bq", l), i, s.shared[l].q);
      store_->put(qk_key("bk", l), i, s.shared[l].k);
    }
    return out;
  }
  static std::string qk_key(const char* what, int64_t leader) {
    return what + std::to_string(leader);
  }
  // The steps of run(), in order.
  void check_models(const std::vector<TokenizedExample>& calib) const;
  void prepare_layers();  // roles, the shared-stream split, W_c zeroed
  void make_all_batches(const std::vector<TokenizedExample>& calib,
                        const std::vector<TokenizedExample>& heldout);
  std::string make_fingerprint(const std::vector<TokenizedExample>& calib,
                               const std::vector<TokenizedExample>& heldout) const;
  int64_t load_progress();  // layers done by an earlier run with this fingerprint (0: none)
  void load_finished_wc(int64_t done);
  void calibrate_layers(int64_t done);
  void measure_heldout();  // base and unified losses from the final streams

  // Reference statistics pad every fit row to o_.pad_to; the token statistics pad nothing.
  int64_t pad_to() const { return o_.mode == CalibMode::Reference ? o_.pad_to : 0; }
  // A layer without a solve: both streams advance (or the shared one, before the first follower).
  void advance(int64_t l, const std::string& phase, bool with_base = true);
  void collect(int64_t l);  // follower: statistics with W_c off at l
  void solve(int64_t l);
  bool cross_validating() const;  // every fold has tokens (CalibOptions::ridge_folds)
  std::vector<RidgeFold> ridge_folds() const;
  void set_wc(int64_t l, const at::Tensor& w);  // w [d(+1), d] in fp64 (or loaded fp32)
  void save_progress(int64_t layers_done);
  void tick(int64_t l, const std::string& phase, int64_t batch) {
    if (o_.progress)
      o_.progress(CalibProgress{l, nlayers_, batch, static_cast<int64_t>(batches_.size()), phase});
  }
  // Until `split_` both models compute the same thing and one stream serves both.
  std::string base_in(int64_t l) const { return l <= split_ ? "uni" : "base"; }

  CausalLM& base_;
  CausalLM& uni_;
  const CalibOptions& o_;
  const UniAttnSpec& spec_;
  int64_t nlayers_ = 0, hidden_ = 0, split_ = 0;
  bool bias_ = false;
  std::vector<LayerRole> roles_, base_roles_;  // of the unified and the base model
  std::vector<Batch> batches_;
  std::unique_ptr<ActivationStore> store_;
  std::string fingerprint_;
  std::filesystem::path spill_dir_;
  // Statistics of the follower being solved.
  std::vector<Stats> folds_;  // calibration statistics, one per cross-validation fold
  Stats held_;
  at::Tensor pos_x_, pos_d_;  // reference mode: per-position sums [L, d(+1)], [L, d]
  int64_t pos_n_ = 0;
  CalibResult result_;
};

void Calibrator::advance(int64_t l, const std::string& phase, bool with_base) {
  for (size_t i = 0; i < batches_.size(); ++i) {
    tick(l, phase, static_cast<int64_t>(i));
    const auto& b = batches_[i];
    auto su = state(uni_, b);
    auto xu = run_unified(l, i, store_->get("uni", i), *su);
    if (with_base && l >= split_) {
      auto sb = state(base_, b);
      store_->put("base", i, run_base(l, i, store_->get(base_in(l), i), *sb));
    }
    store_->put("uni", i, xu);
  }
}

void Calibrator::collect(int64_t l) {
  folds_.assign(folds_.size(), Stats{});
  held_ = Stats{};
  pos_x_ = pos_d_ = at::Tensor();
  pos_n_ = 0;
  for (size_t i = 0; i < batches_.size(); ++i) {
    tick(l, "stats", static_cast<int64_t>(i));
    const auto& b = batches_[i];
    auto sb = state(base_, b);
    sb->capture = true;
    store_->put("base", i, run_base(l, i, store_->get(base_in(l), i), *sb));
    auto su = state(uni_, b);
    su->capture = true;
    run_unified(l, i, store_->get("uni", i), *su);  // W_c of l is still zero here
    const auto y = wc_target(base_, l, *sb);
    auto d = (y - wc_target(uni_, l, *su)).to(at::kDouble);
    auto x = with_bias_column(su->captured_normed_input[l].to(at::kDouble), bias_);
    Stats& st = b.part == Part::Fit ? folds_[b.fold] : held_;
    st.add(real_rows(x, b.valid), real_rows(d, b.valid), real_rows(y, b.valid));
    if (o_.mode == CalibMode::Reference && b.part == Part::Fit) {
      // Pads included, as in the reference statistics.
      auto sx = x.sum(0), sd = d.sum(0);
      if (!pos_x_.defined()) {
        pos_x_ = sx;
        pos_d_ = sd;
      } else {
        pos_x_.add_(sx);
        pos_d_.add_(sd);
      }
      pos_n_ += b.ids.size(0);
    }
  }
}

void Calibrator::solve(int64_t l) {
  const auto t0 = Clock::now();
  Stats all;
  for (const auto& f : folds_) all.add(f);
  UNIATTN_CHECK(!all.empty(), "calibration: no calibration tokens at layer ", l);
  FollowerReport rep;
  rep.layer = l;
  rep.leader = roles_[l].leader;
  at::Tensor w;
  if (o_.mode == CalibMode::Reference) {
    w = solve_pinv(pos_x_ / static_cast<double>(pos_n_), pos_d_ / static_cast<double>(pos_n_),
                   o_.pinv_rcond);
  } else {
    double r = o_.ridge.value_or(1e-5);  // 1e-5: too few examples to cross-validate
    if (!o_.ridge && cross_validating()) r = select_ridge_kfold(ridge_folds(), o_.ridge_candidates);
    rep.ridge = r;
    rep.lambda = ridge_lambda(all.xtx, r);
    w = solve_ridge(all.xtx, all.xtd, rep.lambda);
  }
  rep.solve_seconds = since(t0);
  rep.calib_tokens = all.tokens;
  rep.heldout_tokens = held_.tokens;
  rep.calib_err = ratio(all.dtd, all.yty);
  rep.calib_rel_residual = ratio(residual_sq(all.xtx, all.xtd, all.dtd, w), all.dtd);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  rep.heldout_err = held_.empty() ? nan : ratio(held_.dtd, held_.yty);
  rep.heldout_rel_residual =
      held_.empty() ? nan : ratio(residual_sq(held_.xtx, held_.xtd, held_.dtd, w), held_.dtd);
  result_.followers.push_back(rep);
  set_wc(l, w);
  // Saved before the layer counts as done, so a resume always finds it.
  if (!o_.work_dir.empty()) {
    auto wf = w.to(at::kFloat).contiguous();
    at::Tensor keep;
    write_safetensors(o_.work_dir / ("wc_" + std::to_string(l) + ".safetensors"),
                      {tensor_to_write("w", wf, keep)}, {{"fingerprint", fingerprint_}});
  }
  folds_.assign(folds_.size(), Stats{});
  held_ = Stats{};
}

void Calibrator::set_wc(int64_t l, const at::Tensor& w) {
  auto lin = uni_->layer(l)->self_attn->w_c;
  at::NoGradGuard ng;
  lin->weight.copy_(w.narrow(0, 0, hidden_).t());
  if (bias_) lin->bias.copy_(w[hidden_]);
}

void Calibrator::save_progress(int64_t layers_done) {
  if (o_.work_dir.empty()) return;
  nlohmann::json j;
  j["fingerprint"] = fingerprint_;
  j["layers_done"] = layers_done;
  j["mode"] = calib_mode_name(o_.mode);
  auto& f = j["followers"] = nlohmann::json::array();
  for (const auto& r : result_.followers) f.push_back(to_json(r));
  write_text_atomic(o_.work_dir / "progress.json", j.dump(1));
}

void Calibrator::check_models(const std::vector<TokenizedExample>& calib) const {
  const auto& uc = uni_->config();
  const auto& bc = base_->config();
  UNIATTN_CHECK(spec_.variant == Variant::UniAttn && spec_.enabled(),
                "calibrate: the unified model must be a UniAttn model, got ", spec_.describe());
  UNIATTN_CHECK(bc.num_layers == uc.num_layers && bc.hidden_size == uc.hidden_size &&
                    bc.vocab_size == uc.vocab_size,
                "calibrate: base and unified models differ in shape");
  UNIATTN_CHECK(base_->device() == uni_->device(), "calibrate: models on different devices");
  UNIATTN_CHECK(!calib.empty(), "calibrate: no calibration examples");
}

void Calibrator::prepare_layers() {
  const auto& uc = uni_->config();
  nlayers_ = uc.num_layers;
  hidden_ = uc.hidden_size;
  bias_ = uc.attention_bias;
  roles_ = layer_roles(uc);
  base_roles_ = layer_roles(base_->config());
  auto follows = [](const LayerRole& r) { return r.is_follower(); };
  // Both models compute the same thing up to the first follower, so one stream serves both
  // until there; a base with SuperBlocks of its own runs its own stream from the start.
  const auto first = std::find_if(roles_.begin(), roles_.end(), follows);
  const bool base_shares = std::any_of(base_roles_.begin(), base_roles_.end(), follows);
  split_ = base_shares ? 0 : first - roles_.begin();
  at::NoGradGuard ng;  // W_c may require grad
  for (const LayerRole& r : roles_)
    if (r.owns_wc) {
      auto lin = uni_->layer(r.layer)->self_attn->w_c;
      lin->weight.zero_();
      if (bias_) lin->bias.zero_();
    }
}

// Without a fixed ridge, example i of the calibration set goes to cross-validation fold i mod k
// (CalibOptions::ridge_folds), each fold batched apart so that its statistics stay separate.
void Calibrator::make_all_batches(const std::vector<TokenizedExample>& calib,
                                  const std::vector<TokenizedExample>& heldout) {
  const auto dev = uni_->device();
  const bool cv = o_.mode == CalibMode::Tokens && !o_.ridge && o_.ridge_folds >= 2 &&
                  int64_t(calib.size()) >= 2 * o_.ridge_folds;
  const int64_t k = cv ? o_.ridge_folds : 1;
  std::vector<std::vector<const TokenizedExample*>> fit(k);
  std::vector<const TokenizedExample*> held;
  for (size_t i = 0; i < calib.size(); ++i) fit[int64_t(i) % k].push_back(&calib[i]);
  for (const auto& e : heldout) held.push_back(&e);
  folds_.assign(k, Stats{});
  for (int64_t f = 0; f < k; ++f)
    for (auto& b : make_batches(fit[f], Part::Fit, o_.batch_tokens, pad_to(), o_.pad_id, dev)) {
      b.fold = f;
      batches_.push_back(std::move(b));
    }
  for (auto& b : make_batches(held, Part::Heldout, o_.batch_tokens, 0, o_.pad_id, dev))
    batches_.push_back(std::move(b));
  for (const auto& b : batches_)
    if (b.part != Part::Heldout) result_.calib_tokens += b.real_tokens;
}

bool Calibrator::cross_validating() const {
  return folds_.size() >= 2 &&
         std::none_of(folds_.begin(), folds_.end(), [](const Stats& f) { return f.empty(); });
}

std::vector<RidgeFold> Calibrator::ridge_folds() const {
  std::vector<RidgeFold> out;
  for (const auto& f : folds_) out.push_back({f.xtx, f.xtd, f.dtd});
  return out;
}

// What makes two runs the same: inputs, options that change results, batching.
std::string Calibrator::make_fingerprint(const std::vector<TokenizedExample>& calib,
                                         const std::vector<TokenizedExample>& heldout) const {
  nlohmann::json fp = {{"caller", o_.fingerprint},
                       {"mode", calib_mode_name(o_.mode)},
                       {"ridge", o_.ridge ? nlohmann::json(*o_.ridge) : nlohmann::json()},
                       {"candidates", o_.ridge_candidates},
                       {"folds", o_.ridge_folds},
                       {"pad_to", pad_to()},
                       {"pad_id", o_.pad_id},
                       {"rcond", o_.pinv_rcond},
                       {"batch_tokens", o_.batch_tokens},
                       {"spec", spec_.describe()},
                       {"layers", nlayers_},
                       {"data", std::to_string(hash_examples(
                                    heldout, hash_examples(calib, 1469598103934665603ull)))}};
  return fp.dump();
}

int64_t Calibrator::load_progress() {
  if (o_.work_dir.empty()) return 0;
  std::filesystem::create_directories(o_.work_dir);
  const auto pf = o_.work_dir / "progress.json";
  if (!std::filesystem::exists(pf)) return 0;
  int64_t done = 0;
  try {
    const auto j = nlohmann::json::parse(read_text_file(pf));
    UNIATTN_CHECK(j.at("fingerprint").get<std::string>() == fingerprint_, pf.string(),
                  ": holds the progress of a different calibration run (other data, model "
                  "or options); remove it or use another directory");
    done = j.at("layers_done");
    UNIATTN_CHECK(done >= 0 && done <= nlayers_, pf.string(), ": layers_done out of range");
    for (const auto& r : j.at("followers")) result_.followers.push_back(report_from_json(r));
  } catch (const nlohmann::json::exception& e) {
    fail(pf.string(), ": malformed progress file: ", e.what());
  }
  return done;
}

void Calibrator::load_finished_wc(int64_t done) {
  for (int64_t l = 0; l < done; ++l) {
    if (!roles_[l].owns_wc) continue;
    const auto f = o_.work_dir / ("wc_" + std::to_string(l) + ".safetensors");
    auto sf = SafetensorsFile::open(f);
    UNIATTN_CHECK(
        sf.metadata().count("fingerprint") && sf.metadata().at("fingerprint") == fingerprint_,
        f.string(), ": belongs to another run");
    const auto* v = sf.find("w");
    UNIATTN_CHECK(v, f.string(), ": no tensor 'w'");
    auto w = tensor_from_view(*v).to(uni_->device());
    UNIATTN_CHECK(w.dim() == 2 && w.size(0) == hidden_ + (bias_ ? 1 : 0) && w.size(1) == hidden_,
                  f.string(), ": tensor 'w' has shape ", w.sizes());
    set_wc(l, w);
  }
  result_.resumed_layers = done;
}

// Layers before `done` are replayed with their saved W_c; each later follower is solved at its
// own depth and applied before the unified stream moves on.
void Calibrator::calibrate_layers(int64_t done) {
  for (size_t i = 0; i < batches_.size(); ++i) store_->put("uni", i, uni_->embed(batches_[i].ids));
  for (int64_t l = 0; l < nlayers_; ++l) {
    const LayerRole& r = roles_[l];
    if (l < done) {
      advance(l, "replay");
    } else if (r.owns_wc) {
      collect(l);
      solve(l);
      advance(l, "apply", /*with_base=*/false);  // collect advanced the base stream
    } else {
      advance(l, "forward");
    }
    // q/k of a leader are dropped once its last follower is done.
    if (r.is_follower() && roles_[r.leader].last_follower == l) {
      store_->erase(qk_key("q", r.leader));
      store_->erase(qk_key("k", r.leader));
    }
    const LayerRole& br = base_roles_[l];
    if (br.is_follower() && base_roles_[br.leader].last_follower == l) {
      store_->erase(qk_key("bq", br.leader));
      store_->erase(qk_key("bk", br.leader));
    }
    if (l >= done) save_progress(l + 1);
    tick(l, "layer-done", static_cast<int64_t>(batches_.size()));
  }
}

void Calibrator::measure_heldout() {
  double sb = 0, su = 0;
  int64_t n = 0;
  for (size_t i = 0; i < batches_.size(); ++i) {
    if (batches_[i].part != Part::Heldout) continue;
    auto [lb, cnt] = loss_sums(base_, store_->get(base_in(nlayers_), i), batches_[i]);
    auto [lu, cnt2] = loss_sums(uni_, store_->get("uni", i), batches_[i]);
    sb += lb;
    su += lu;
    n += cnt;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  result_.heldout_target_tokens = n;
  result_.loss_base = n ? sb / n : nan;
  result_.loss_unified_wc = n ? su / n : nan;
}

CalibResult Calibrator::run(const std::vector<TokenizedExample>& calib,
                            const std::vector<TokenizedExample>& heldout) {
  const auto t0 = Clock::now();
  at::NoGradGuard ng;  // closed-form solves: nothing here is differentiated
  check_models(calib);
  prepare_layers();
  make_all_batches(calib, heldout);
  fingerprint_ = make_fingerprint(calib, heldout);
  const int64_t done = load_progress();
  spill_dir_ = !o_.work_dir.empty() ? o_.work_dir / "spill"
                                    : std::filesystem::temp_directory_path() /
                                          ("uniattn-calib-" + std::to_string(::getpid()));
  store_ = std::make_unique<ActivationStore>(spill_dir_, o_.memory_budget_bytes);

  // Held-out loss of the unified model without compensation (all W_c are zero now).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  result_.loss_unified_no_wc =
      heldout.empty()
          ? nan
          : response_loss(uni_, heldout,
                          {.max_len = 0, .batch_tokens = o_.batch_tokens, .pad_id = o_.pad_id})
                .loss;
  if (done > 0) load_finished_wc(done);
  calibrate_layers(done);
  measure_heldout();
  store_.reset();
  remove_tree(spill_dir_);
  result_.seconds = since(t0);
  return result_;
}

}  // namespace

CalibResult calibrate(CausalLM& base, CausalLM& unified, const std::vector<TokenizedExample>& calib,
                      const std::vector<TokenizedExample>& heldout, const CalibOptions& options) {
  Calibrator c(base, unified, options);
  return c.run(calib, heldout);
}

int64_t share_weights(CausalLM& base, CausalLM& unified) {
  auto bp = base->named_parameters(true);
  int64_t n = 0;
  at::NoGradGuard ng;
  for (auto& item : unified->named_parameters(true)) {
    const auto* src = bp.find(item.key());
    if (!src || !src->sizes().equals(item.value().sizes()) ||
        src->scalar_type() != item.value().scalar_type() || src->device() != item.value().device())
      continue;
    item.value().set_data(*src);
    ++n;
  }
  return n;
}

TextEncoder text_encoder(const Tokenizer& tok) {
  TextEncoder e;
  e.encode = [&tok](std::string_view s) { return tok.encode(s, false, false); };
  if (tok.adds_bos()) e.bos = tok.bos_id();
  e.eos = tok.eos_id();
  UNIATTN_CHECK(e.eos.has_value(), "the tokenizer has no end-of-sequence token");
  return e;
}

}  // namespace uniattn
