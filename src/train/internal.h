// Pieces of the trainer shared between its files: the data plan, the communicator and the
// bucketed gradient reducer.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "uniattn/data/records.h"
#include "uniattn/train/train.h"

namespace c10d {
class Backend;
class Store;
class Work;
}  // namespace c10d

namespace uniattn::train_detail {

// ---- data (data_plan.cpp) ----
// One training sequence: ids and the per-position target mask (mask[i]: ids[i] is scored).
using Sequence = TokenizedExample;

// Loads data.train (or data.eval when `eval`) per the config; packs when data.packing.
// `vocab_size` bounds token-format ids. Throws uniattn::Error naming the file.
std::vector<Sequence> load_sequences(const TrainConfig& c, bool eval, int64_t vocab_size,
                                     const std::string& model_path);

// The order of sequences in epoch `epoch` of stage `stage` (a pure function of the seed).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t stage, int64_t epoch,
                                 bool shuffle);

// Sequence indices of global batch `batch` (0-based within the stage).
std::vector<int64_t> batch_indices(int64_t n, int64_t global_batch, uint64_t seed, int64_t stage,
                                   int64_t batch, bool shuffle);

// [micro, L] int64 ids (right-padded with pad) and [micro, L] float target mask.
void collate(const std::vector<Sequence>& data, const std::vector<int64_t>& idx, int32_t pad,
             at::Tensor& ids, at::Tensor& mask);

// ---- communication (dist/comm.cpp, dist/grad_reducer.cpp) ----
// With more than one rank, a watcher thread polls the rendezvous store: when another rank reports
// a failure (report_failure), or the store itself goes away (rank 0 died), this process prints why
// and exits at once, rather than waiting in its next collective for distributed.timeout_s. What it
// leaves on disk is the last complete checkpoint: checkpoints are written to a temporary directory
// and renamed.
class Comm {
 public:
  // world_size 1: no process group; collectives are no-ops.
  Comm(const DistEnv& env, const std::string& backend, bool cuda, int64_t timeout_s);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  // This rank is failing with `what`: tell the others before unwinding. The first report wins;
  // when another rank's came first (this rank's error is then often only the broken connection
  // to it), that report is returned.
  std::optional<std::string> report_failure(const std::string& what);
  int rank() const { return rank_; }
  int world() const { return world_; }
  void allreduce_sum(at::Tensor& t);
  c10::intrusive_ptr<c10d::Work> allreduce_async(at::Tensor& t);
  void broadcast(at::Tensor& t, int root);
  // Returns on every rank only once all ranks have entered it, host-side included (an NCCL
  // all-reduce's wait() only orders streams, so the result is read back to the host).
  void barrier();
  static void wait(const c10::intrusive_ptr<c10d::Work>& w);

 private:
  int rank_ = 0, world_ = 1;
  bool cuda_ = false;
  int local_rank_ = 0;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> pg_;
  void watch_peers();
  void close_store(bool failing);
  std::thread watcher_;
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;
  bool reported_ = false;  // this rank reported its own failure (the watcher ignores it)
};

// Sums gradients over ranks in buckets of ~bucket_bytes, each launched (asynchronously, in a fixed
// order on every rank) as soon as all its parameters' gradients for the last micro-batch have been
// accumulated (a post-accumulate-grad hook per parameter); finish() launches the rest and waits.
//
// fp32 gradients are views into the buckets, as PyTorch DDP's gradient_as_bucket_view: autograd
// accumulates every micro-batch straight into the bucket, the all-reduce runs in place, and no
// second copy of the gradients exists (for an 8B model that copy alone is 32 GB). bf16 gradients
// (training.precision bf16_weights) are copied into fp32 buckets instead, so the sum over ranks is
// rounded to bf16 once, and copied back by finish().
class GradReducer {
 public:
  GradReducer(Comm& comm, const std::vector<at::Tensor>& params, double bucket_bytes);
  ~GradReducer();  // detaches the hooks; with views, drops the gradients too
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;
  // Starts a step: zeroes the buckets; with views, (re)points each .grad at its bucket slice, so
  // the trainer calls this instead of resetting the gradients.
  void zero_grad();
  void arm(bool on);  // on: the next backward is the last micro-batch of the step
  void finish();
  bool grads_are_views() const { return views_; }
  void on_accumulated(size_t param);  // called by the hooks

 private:
  struct Bucket {
    std::vector<size_t> params;
    std::vector<int64_t> offsets;
    at::Tensor flat;
    size_t pending = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  at::Tensor slot_of(size_t param);  // the bucket slice of a parameter, shaped like it
  void launch_ready();
  Comm& comm_;
  std::vector<at::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<int64_t> offset_of_;
  std::vector<Bucket> buckets_;
  std::vector<bool> seen_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  bool views_ = false;
  std::mutex mu_;
};

}  // namespace uniattn::train_detail
