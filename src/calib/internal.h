// Internals of the W_c calibration shared by its source files (and the SuperBlock search):
// batches, the activation store, the per-follower statistics, row selection and loss sums.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "uniattn/calib/calibrate.h"
#include "uniattn/model/causal_lm.h"

namespace uniattn::calib {

// Which statistics a batch's tokens feed.
enum class Part { Fit, Heldout };

struct Batch {
  Part part = Part::Fit;
  int64_t fold = 0;  // Fit: the cross-validation fold of its examples (CalibOptions::ridge_folds)
  at::Tensor ids;    // [B, T] int64, right-padded (pads never influence real tokens: causal)
  at::Tensor valid;  // [B, T] bool, real tokens
  at::Tensor loss_mask;  // [B, T] bool, target tokens
  int64_t real_tokens = 0;
};

// Groups examples of similar length (fewest pads) into batches of at most `batch_tokens` padded
// tokens. pad_to > 0 pads every row to that length instead (reference statistics).
std::vector<Batch> make_batches(const std::vector<const TokenizedExample*>& ex, Part part,
                                int64_t batch_tokens, int64_t pad_to, int32_t pad_id,
                                at::Device device);

// Tensors keyed by (name, batch): in memory up to a byte budget, then in files under `dir`.
class ActivationStore {
 public:
  ActivationStore(std::filesystem::path dir, std::size_t budget)
      : dir_(std::move(dir)), budget_(budget) {}
  ~ActivationStore();
  void put(const std::string& name, int64_t batch, const at::Tensor& t);
  at::Tensor get(const std::string& name, int64_t batch) const;
  bool has(const std::string& name, int64_t batch) const;
  void erase(const std::string& name);  // every batch of `name`
  std::size_t bytes_in_memory() const { return in_memory_; }
  std::size_t bytes_spilled() const { return spilled_; }

 private:
  struct Entry {
    at::Tensor t;  // in memory, or undefined when on disk
    std::filesystem::path file;
    std::vector<int64_t> shape;
    at::ScalarType dtype;
    at::Device device = at::kCPU;
  };
  void drop(Entry& e);
  std::filesystem::path dir_;
  std::size_t budget_, in_memory_ = 0, spilled_ = 0;
  std::map<std::pair<std::string, int64_t>, Entry> entries_;
};

// fp64 sufficient statistics of X W ~ D over some tokens.
struct Stats {
  at::Tensor xtx, xtd;  // [d, d], [d, k]
  double dtd = 0.0, yty = 0.0;
  int64_t tokens = 0;
  void add(const at::Tensor& x, const at::Tensor& d, const at::Tensor& y);  // [N, *] rows
  void add(const Stats& o);
  bool empty() const { return tokens == 0; }
};

// Seconds elapsed since t.
inline double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Rows of t [B, T, d] where `valid` [B, T] is true -> [N, d].
inline at::Tensor real_rows(const at::Tensor& t, const at::Tensor& valid) {
  return t.reshape({-1, t.size(-1)}).index({valid.reshape({-1})});
}

// Sum of next-token NLL (nats) over b's target tokens from m's final hidden states [B, T, d], and
// the count of those tokens; logits are computed 1024 rows at a time to bound memory.
std::pair<double, int64_t> loss_sums(CausalLM& m, const at::Tensor& hidden, const Batch& b);

}  // namespace uniattn::calib
