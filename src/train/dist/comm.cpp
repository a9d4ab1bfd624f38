// Data-parallel plumbing over c10d: a TCPStore rendezvous from the torchrun environment, a Gloo
// (CPU) or NCCL (CUDA) backend, and the watcher that stops every rank when one fails. The bucketed
// gradient all-reduce is in grad_reducer.cpp.
//
// The PyPI torch wheel ships ProcessGroupGloo.hpp but not the Gloo headers it includes; they come
// from Debian's libgloo-dev (the class layout we rely on holds only smart pointers to Gloo types,
// and every Gloo call happens inside libtorch_cpu). Without them, Gloo is reported as unavailable.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#if defined(USE_C10D_GLOO) && __has_include(<gloo/algorithm.h>)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define UNIATTN_HAVE_GLOO 1
#endif
#if defined(UNIATTN_WITH_CUDA) && defined(USE_C10D_NCCL) && __has_include(<nccl.h>)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define UNIATTN_HAVE_NCCL 1
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <thread>

#include "train/internal.h"
#include "uniattn/error.h"

namespace uniattn {

namespace {
int env_int(const char* name, int def, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  UNIATTN_CHECK(end && *end == 0 && x >= lo && x <= hi, "environment variable ", name, "='", v,
                "' must be an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(x);
}
}  // namespace

DistEnv DistEnv::from_env() {
  DistEnv e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 16);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, 1 << 16);
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  return e;
}

namespace train_detail {

Comm::Comm(const DistEnv& env, const std::string& backend, bool cuda, int64_t timeout_s)
    : rank_(env.rank), world_(env.world_size), cuda_(cuda), local_rank_(env.local_rank) {
  if (world_ == 1) return;
  const std::string be = backend == "auto" ? (cuda ? "nccl" : "gloo") : backend;
  const auto timeout = std::chrono::milliseconds(timeout_s * 1000);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = rank_ == 0;
  so.numWorkers = world_;
  so.waitWorkers = true;
  so.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    fail("distributed: TCPStore rendezvous at ", env.master_addr, ":", env.master_port,
         " failed (rank ", rank_, " of ", world_, "): ", e.what());
  }
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("uniattn-train", store);
  store_ = c10::make_intrusive<c10d::PrefixStore>("uniattn-watch", store);
  if (be == "gloo") {
#ifdef UNIATTN_HAVE_GLOO
    UNIATTN_CHECK(!cuda,
                  "distributed.backend gloo is used for CPU training here; use nccl on CUDA");
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
    pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank_, world_, opts);
#else
    fail(
        "distributed.backend gloo is unavailable: this build lacks the Gloo headers "
        "(install libgloo-dev and rebuild)");
#endif
  } else {
#ifdef UNIATTN_HAVE_NCCL
    UNIATTN_CHECK(cuda, "distributed.backend nccl needs a CUDA device (training.device)");
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank_, world_, opts);
#else
    fail("distributed.backend nccl is unavailable: this build has no CUDA/NCCL support");
#endif
  }
  watcher_ = std::thread([this] { watch_peers(); });
}

namespace {
std::vector<uint8_t> bytes_of(std::string_view s) { return {s.begin(), s.end()}; }

// The first line of an exception's text (c10's messages carry a C++ backtrace after it).
std::string first_line(const char* what) {
  std::string s(what);
  if (const auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

// Polls `done` every 50 ms until it holds or `limit` passes; store errors end the wait.
template <typename F>
void wait_until(F done, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  try {
    while (!done() && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } catch (const std::exception&) {
  }
}
}  // namespace

void Comm::watch_peers() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (
      !watch_cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return watch_stop_; })) {
    std::string why;
    try {
      if (!store_->check({"failed"})) continue;
      const auto v = store_->get("failed");
      why.assign(v.begin(), v.end());
      store_->add("failed_seen", 1);
    } catch (const std::exception& e) {
      why = "lost the rendezvous store (did rank 0 exit?): " + first_line(e.what());
    }
    if (reported_) return;  // this rank's own failure: it is unwinding already
    // The collective this rank may be blocked in will never complete; exiting here leaves the
    // last complete checkpoint as it is.
    std::fprintf(stderr, "uniattn-train: rank %d stops: %s\n", rank_, why.c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }
}

std::optional<std::string> Comm::report_failure(const std::string& what) {
  if (!store_) return std::nullopt;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    reported_ = true;
  }
  const std::string mine = "rank " + std::to_string(rank_) + " failed: " + first_line(what.c_str());
  try {
    const auto v = store_->compareSet("failed", {}, bytes_of(mine));
    std::string first(v.begin(), v.end());
    if (first != mine) return first;
  } catch (const std::exception&) {
    // The store is gone too (rank 0 died first): the others learn it from that.
  }
  return std::nullopt;
}

void Comm::close_store(bool failing) {
  if (!store_) return;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    watch_stop_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  // Rank 0 hosts the store: it stays up until the others no longer need it, so that their
  // watchers don't take a normal end for a lost rank 0 (or, when failing, until they have read
  // why). Both waits are bounded: a peer that never comes must not keep this process alive.
  try {
    if (failing) {
      if (rank_ == 0)
        wait_until([&] { return store_->add("failed_seen", 0) >= world_ - 1; },
                   std::chrono::seconds(3));
    } else {
      store_->add("closed", 1);
      if (rank_ == 0)
        wait_until([&] { return store_->add("closed", 0) >= world_; }, std::chrono::seconds(60));
    }
  } catch (const std::exception&) {
  }
  store_.reset();
}

Comm::~Comm() {
  if (!pg_) return;
  const bool failing = std::uncaught_exceptions() > 0;
  close_store(failing);
  // What destroy_process_group() does: NCCL flushes its work, destroys its communicators and
  // stops its watchdog (without it, ProcessGroupNCCL's destructor warns and aborts them); Gloo
  // has no shutdown of its own (a no-op). While an exception unwinds (this rank failed; peers may
  // sit in a collective it will never join), a clean shutdown could wait on them, so the group is
  // aborted instead. Destructors must not throw, and a failure here leaves nothing to recover:
  // it is reported, not raised.
  try {
    if (failing)
      pg_->abort();
    else
      pg_->shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[train] warning: rank %d: shutting down the process group: %s\n", rank_,
                 e.what());
  }
  pg_.reset();
}

void Comm::wait(const c10::intrusive_ptr<c10d::Work>& w) {
  if (w) w->wait();
}

void Comm::allreduce_sum(at::Tensor& t) {
  if (!pg_) return;
  wait(allreduce_async(t));
}

c10::intrusive_ptr<c10d::Work> Comm::allreduce_async(at::Tensor& t) {
  if (!pg_) return {};
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  return pg_->allreduce(v, o);
}

void Comm::broadcast(at::Tensor& t, int root) {
  if (!pg_) return;
  std::vector<at::Tensor> v{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  pg_->broadcast(v, o)->wait();
}

void Comm::barrier() {
  if (!pg_) return;
  // A tiny all-reduce is a barrier every backend implements the same way (Gloo's barrier and
  // NCCL's differ in which device they touch).
  auto opts = at::TensorOptions().dtype(at::kFloat);
  if (cuda_) opts = opts.device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank_)));
  auto t = at::zeros({1}, opts);
  allreduce_sum(t);
  (void)t.item<float>();
}

}  // namespace train_detail
}  // namespace uniattn
