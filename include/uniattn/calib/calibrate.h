// Closed-form initialisation of the UniAttn compensation W_c (method.md section 4), in one pass:
// the calibration activations of the base and the unified model advance layer by layer, each
// follower's W_c is solved in depth order from statistics gathered at its own depth, and the
// unified stream then continues with that W_c active. See docs/calibration.md.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "uniattn/data/records.h"
#include "uniattn/io/tokenizer.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

enum class CalibMode {
  Tokens,     // token-level X^T X and X^T (Y - Y') over real tokens, fp64, ridge solve
  Reference,  // the paper's statistics: per-position means over samples padded to a fixed
              // length (pads included), SVD pseudo-inverse, no regulariser
};
const char* calib_mode_name(CalibMode);
CalibMode parse_calib_mode(const std::string& name);  // "tokens" | "reference"; throws

struct CalibProgress {
  int64_t layer = 0, num_layers = 0;
  int64_t batch = 0, num_batches = 0;  // within the current phase
  std::string phase;                   // "replay", "forward", "stats", "apply", "layer-done"
};

struct CalibOptions {
  CalibMode mode = CalibMode::Tokens;
  // Tokens mode: relative ridge r, lambda = r * trace(X^T X) / d. Unset: pick the candidate with
  // the lowest residual summed over ridge_folds-fold cross-validation of the calibration examples
  // (example i in fold i mod k; select_ridge_kfold), then solve on all. With fewer than 2 folds,
  // or fewer than 2 examples per fold, r = 1e-5.
  std::optional<double> ridge;
  std::vector<double> ridge_candidates = {0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  int64_t ridge_folds = 5;
  // Reference mode: the fixed length every calibration sample is padded to, and the pad id.
  int64_t pad_to = 1024;
  int32_t pad_id = 0;
  // Singular values below rcond * max(rows, cols) * eps * s_max are dropped (reference mode).
  double pinv_rcond = 1.0;
  int64_t batch_tokens = 8192;  // padded tokens per forward batch
  // Activations kept in memory (on the model's device); past this they spill to work_dir.
  std::size_t memory_budget_bytes = std::size_t{4} << 30;
  // Per-layer results (progress.json, wc_<layer>.safetensors) go here, so that a rerun with the
  // same fingerprint resumes after the last finished layer. Empty: no resume, spill to a temp dir.
  std::filesystem::path work_dir;
  std::string fingerprint;  // what the caller knows about its inputs (paths, options)
  std::function<void(const CalibProgress&)> progress;  // may throw to abort (after saving)
};

struct FollowerReport {
  int64_t layer = 0, leader = 0;
  double ridge = 0.0;   // relative ridge used (tokens mode)
  double lambda = 0.0;  // absolute ridge added to the diagonal
  int64_t calib_tokens = 0, heldout_tokens = 0;
  // ||Y - Y'|| / ||Y||: the size of the unification error at this layer.
  double calib_err = 0.0, heldout_err = 0.0;
  // ||Y - Y' - X W|| / ||Y - Y'|| with the solved W (1.0 before compensation, by definition).
  double calib_rel_residual = 0.0, heldout_rel_residual = 0.0;
  double solve_seconds = 0.0;
};

struct CalibResult {
  std::vector<FollowerReport> followers;
  // Held-out response loss (nats/token) as uniattn/eval/response_loss.h defines it, with the
  // held-out examples scored as given (max_len 0: uniattn-calib cuts them to --max-len when it
  // tokenises them); NaN without them.
  double loss_base = 0.0, loss_unified_no_wc = 0.0, loss_unified_wc = 0.0;
  int64_t heldout_target_tokens = 0;
  int64_t calib_tokens = 0;
  int64_t resumed_layers = 0;  // layers replayed from work_dir instead of solved
  double seconds = 0.0;
};

// Calibrates every W_c of `unified` (a UniAttn model whose leaders and ordinary layers equal
// `base`'s, e.g. both from load_model of one checkpoint) and leaves the solutions in it.
// `base` is the reference model (any CausalLM on the same device). `heldout` is only measured.
// Throws uniattn::Error if unified is not a UniAttn model, the models disagree in shape or
// device, calib is empty, or the work_dir holds progress of a different run (other fingerprint).
CalibResult calibrate(CausalLM& base, CausalLM& unified, const std::vector<TokenizedExample>& calib,
                      const std::vector<TokenizedExample>& heldout, const CalibOptions& options);

// Least squares with a ridge, in fp64: W = (X^T X + lambda I)^{-1} X^T D. xtx [d, d], xtd [d, k]
// -> W [d, k]. Falls back to a pseudo-inverse when the system is singular.
at::Tensor solve_ridge(const at::Tensor& xtx, const at::Tensor& xtd, double lambda);
// W = V Sigma^+ U^T D with X = U Sigma V^T, fp64; singular values <= rcond * max(n, d) * eps *
// s_max are dropped. x [n, d], d [n, k] -> W [d, k].
at::Tensor solve_pinv(const at::Tensor& x, const at::Tensor& d, double rcond = 1.0);
// The absolute ridge of a relative one: lambda = r * trace(X^T X) / d, so that r means the same
// whatever the scale of the inputs. xtx [d, d].
double ridge_lambda(const at::Tensor& xtx, double r);
// ||D - X W||^2 from the statistics: dtd - 2 <W, xtd> + <W, xtx W> (clamped at 0).
double residual_sq(const at::Tensor& xtx, const at::Tensor& xtd, double dtd, const at::Tensor& w);

// The fp64 statistics of X W ~ D over one fold of the calibration tokens: xtx [d, d] = X^T X,
// xtd [d, k] = X^T D, dtd = ||D||^2.
struct RidgeFold {
  at::Tensor xtx, xtd;
  double dtd = 0.0;
};
// k-fold cross-validation of the relative ridge (ESL 7.10): for each candidate r, the summed
// residual_sq on each fold of solve_ridge fitted on the other folds, with lambda = r *
// trace(X^T X of those folds) / d. Returns the candidate with the lowest sum (the first on ties).
// Throws uniattn::Error when fewer than 2 folds or no candidates are given, or shapes differ.
double select_ridge_kfold(const std::vector<RidgeFold>& folds,
                          const std::vector<double>& candidates);

// Makes `unified`'s parameters that `base` also has (same name, shape, dtype) share base's
// storage, so the two models cost one copy of the weights. Returns how many were shared.
int64_t share_weights(CausalLM& base, CausalLM& unified);

// A TextEncoder over a Tokenizer: no special tokens parsed from the text, bos when the tokenizer
// adds one, its eos. Throws uniattn::Error if it has no eos.
TextEncoder text_encoder(const Tokenizer& tok);

}  // namespace uniattn
