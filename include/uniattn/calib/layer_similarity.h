// Which layers to unify: how alike the attention probability maps of every pair of layers are
// over some records (the UniAttn paper's Figure 2 analysis, Xiong et al., arXiv 2502.00439),
// and where SuperBlocks may go at all. See docs/layer_selection.md.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "uniattn/config/model_config.h"
#include "uniattn/data/records.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn {

struct SimilarityOptions {
  // Probability maps held at once, in bytes (fp64 maps of one record: layers x heads x T^2 x 8).
  // Past it the heads are split into chunks and the record is run once per chunk.
  std::size_t max_map_bytes = std::size_t{1} << 30;
  std::function<void(int64_t done, int64_t total)> progress;  // after each record (and chunk)
};

struct LayerSimilarity {
  int64_t num_layers = 0, num_heads = 0, num_kv_heads = 0;
  // cos(P_i^h, P_j^h): the cosine similarity of layer i's and layer j's probability maps
  // softmax(q k^T * scale + mask) of query head h, flattened over the causal part (every
  // (query, key) pair with key <= query; entries outside it are exactly zero), computed per
  // record and averaged over records. fp64 [Hq, L, L], symmetric, ones on the diagonal.
  at::Tensor per_head;
  at::Tensor per_kv_group;  // fp64 [Hkv, L, L]: per_head averaged over each KV head's query heads
  at::Tensor mean;          // fp64 [L, L]: per_head averaged over all query heads
  int64_t records = 0, tokens = 0;
};

// Runs `model` (a standard model: variant none) over each example alone (no padding) and
// measures LayerSimilarity. Maps are computed in fp32 from the model's own q and k (after
// RoPE and Gemma-3's q/k norms, with soft-capping and sliding windows) as its reference
// attention path does. Throws uniattn::Error if the model has SuperBlocks, no example is given
// or an example is empty.
LayerSimilarity attention_similarity(CausalLM& model, const std::vector<TokenizedExample>& examples,
                                     const SimilarityOptions& options = {});

// Where SuperBlocks may go: each chain lists layers in order, and a SuperBlock is a run of
// consecutive entries of one chain. Chains are the maximal runs of consecutive layers of one
// attention kind (sliding window or global), so no group crosses a local/global boundary; on a
// model whose kinds strictly alternate (Gemma-2) every such run is one layer, and the chains are
// instead the layers of each kind (groups such as 2,4,6). Models without sliding layers have one
// chain of all layers.
std::vector<std::vector<int64_t>> superblock_chains(const ModelConfig& config);

// A candidate SuperBlock: layers whose neighbours' maps are alike.
struct CandidateGroup {
  std::vector<int64_t> layers;  // consecutive entries of one chain
  double min_adjacent = 0.0;    // lowest mean similarity of two neighbouring layers in it
  double mean_adjacent = 0.0;
};

// Maximal runs of a chain in which every neighbouring pair has mean similarity >= threshold
// (runs of one layer are dropped), best first (by mean_adjacent). `mean` is [L, L].
std::vector<CandidateGroup> candidate_groups(const at::Tensor& mean,
                                             const std::vector<std::vector<int64_t>>& chains,
                                             double threshold);

// Groups in the explicit form UniAttnSpec::parse (and --superblocks) takes: "16-19;22,24,26"
// (a range where the layers are consecutive, else a comma list). Empty for no groups.
std::string format_groups(const std::vector<std::vector<int64_t>>& groups);

}  // namespace uniattn
