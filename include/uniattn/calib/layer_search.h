// SuperBlock search under a budget (docs/layer_selection.md): which layers to make followers so
// that the held-out loss after closed-form W_c calibration (calibrate.h) is lowest.
//
// 1. One base pass stores the base model's residual stream before every layer and its W_c
//    target at every layer (ActivationStore: in memory up to a budget, then spilled to disk).
// 2. Every candidate SuperBlock (leader a and its next 1..max_group-1 chain layers) is scored
//    alone: starting from the stored stream at a, its followers are calibrated in depth order
//    (token statistics, fixed relative ridge) against the stored targets, and the held-out
//    examples continue through the rest of the model: delta = held-out loss - base loss.
//    Groups that share a leader share the work (a group's calibration is its prefix's).
// 3. An exact K-best dynamic programme over the chains picks disjoint groups with exactly the
//    budget's number of followers and the lowest sum of deltas.
// 4. The best `verify` specs of step 3 (and any `compare` specs) are calibrated in full with
//    calibrate() and ranked by their held-out loss with W_c.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "uniattn/calib/calibrate.h"
#include "uniattn/config/superblock.h"

namespace uniattn {

struct LayerSearchOptions {
  // The budget: exactly this many followers, or (when followers < 0) the fewest followers whose
  // KV cache holds at most kv_bytes_per_token bytes per token (in the model's dtype).
  int64_t followers = -1;
  int64_t kv_bytes_per_token = -1;
  int64_t max_group = 4;                     // largest SuperBlock: leader + max_group - 1 followers
  int64_t first_layer = 0, last_layer = -1;  // groups lie within [first, last] (-1: last layer)
  int64_t verify = 3;                        // specs from the search calibrated in full
  std::vector<UniAttnSpec> compare;  // calibrated and ranked with them (e.g. the fixed spec)
  double ridge = 1e-4;               // relative ridge of the candidate scores
  CalibOptions calib;                // the full calibrations (and batching, pad id, memory)
  std::function<void(const std::string&)> progress;
};

struct CandidateScore {
  std::vector<int64_t> layers;  // leader first
  double heldout_loss = 0.0;    // with only this group unified (and calibrated)
  double delta = 0.0;           // heldout_loss - base loss
  double rel_err = 0.0;         // ||x_uni - x_base|| / ||x_base|| after its last follower
};

struct SearchRow {
  std::string spec;    // UniAttnSpec::parse form (format_groups)
  std::string origin;  // "search" or "compare"
  int64_t followers = 0;
  int64_t kv_bytes_per_token = 0;
  double predicted_delta = 0.0;            // sum of the candidates' deltas (NaN for compare specs)
  double loss_no_wc = 0.0, loss_wc = 0.0;  // held-out, after calibrate()
  std::vector<FollowerReport> report;
};

struct SearchResult {
  double loss_base = 0.0;
  int64_t base_kv_bytes_per_token = 0;
  int64_t followers = 0;  // the budget, in followers
  std::vector<CandidateScore> candidates;
  std::vector<SearchRow> rows;  // ranked by loss_wc (best first)
  int64_t calib_tokens = 0, heldout_tokens = 0;
  double seconds_candidates = 0.0, seconds_verify = 0.0;
};

// Searches SuperBlocks for `base` (a standard model, variant none). Throws uniattn::Error when
// the model has SuperBlocks, no calibration or held-out example is given, the budget is missing
// or cannot be met (more followers than the chains within [first, last] allow, a KV target below
// what any spec reaches), max_group < 2, verify < 1, or the layer range is empty or outside the
// model.
SearchResult search_superblocks(CausalLM& base, const std::vector<TokenizedExample>& calib,
                                const std::vector<TokenizedExample>& heldout,
                                const LayerSearchOptions& options);

// KV-cache bytes per token of `config` with `spec` (variant UniAttn), in `dtype`.
int64_t kv_bytes_per_token(const ModelConfig& config, const UniAttnSpec& spec,
                           at::ScalarType dtype);

// Picks up to `k` sets of disjoint candidate groups with exactly `followers` followers in total
// and the lowest sum of deltas, best first (exact, by dynamic programming over `chains`; groups
// must be runs of consecutive chain entries). Fewer when fewer sets exist.
std::vector<std::vector<std::vector<int64_t>>> best_group_sets(
    const std::vector<CandidateScore>& candidates, const std::vector<std::vector<int64_t>>& chains,
    int64_t followers, int64_t k);

}  // namespace uniattn
