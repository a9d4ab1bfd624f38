// uniattn-train on a tiny random LLaMA (vocab 97) with random token data: resumption gives the
// same loss curve as an uninterrupted run, activation checkpointing, the unfused AdamW and the
// chunked LM head + cross-entropy (training.fused_linear_cross_entropy true) keep the curve, SIGTERM checkpoints
// and resumes, non-finite losses stop (naming the step) or are skipped, two Gloo processes match
// one process on the same global batch (also with checkpointing), bf16 autocast runs on CPU, and
// bf16 weights (training.precision bf16_weights) train and resume.
#include <gtest/gtest.h>
#include <torch/serialize/input-archive.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <map>
#include <numbers>
#include <random>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"
#include "train/train_test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/safetensors.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/train/train.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using namespace train_test;

// The shipped tiny config pointed at the fixture model and fresh data in `dir`.
std::vector<std::string> base_overrides(const fs::path& dir, const std::string& out) {
  write_tokens(dir / "train.jsonl", 16, 11);
  write_tokens(dir / "eval.jsonl", 4, 12);
  return {"model.path=" + (test::data_dir() / "models" / "llama").string(),
          "data.train=" + (dir / "train.jsonl").string(),
          "data.eval=" + (dir / "eval.jsonl").string(), "output_dir=" + (dir / out).string()};
}

TrainConfig tiny_config(const fs::path& dir, const std::string& out,
                        std::vector<std::string> extra = {}) {
  auto ov = base_overrides(dir, out);
  ov.insert(ov.end(), extra.begin(), extra.end());
  return TrainConfig::load((test::source_dir() / "configs" / "tiny-cpu-smoke.yaml").string(), ov);
}

void expect_same_curve(const std::vector<nlohmann::json>& a, const std::vector<nlohmann::json>& b,
                       double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), tol);
    EXPECT_NEAR(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>(), tol * 10);
    EXPECT_DOUBLE_EQ(a[i]["lr"].get<double>(), b[i]["lr"].get<double>());
    if (!a[i]["eval_loss"].is_null()) {
      EXPECT_NEAR(a[i]["eval_loss"].get<double>(), b[i]["eval_loss"].get<double>(), tol);
    }
  }
}

// Max |a - b| over the tensors of two saved models.
double model_diff(const fs::path& a, const fs::path& b) {
  LoadOptions lo;
  auto ma = load_model(a, lo), mb = load_model(b, lo);
  auto pb = mb->named_parameters();
  double d = 0;
  for (auto& kv : ma->named_parameters())
    d = std::max(d, (kv.value() - pb[kv.key()]).abs().max().item<double>());
  return d;
}

std::vector<std::string> cli_args(const fs::path& dir, const std::string& out,
                                  const std::vector<std::string>& extra) {
  std::vector<std::string> a{cli().string(), "--config",
                             (test::source_dir() / "configs" / "tiny-cpu-smoke.yaml").string()};
  auto ov = base_overrides(dir, out);
  ov.insert(ov.end(), extra.begin(), extra.end());
  for (const auto& o : ov) {
    a.push_back("--set");
    a.push_back(o);
  }
  return a;
}

// Starts ranks 0 and 1 of a 2-process Gloo run of `args` (built once, before spawning: cli_args
// writes the data files the ranks read). With `log_dir`, rank R's stderr goes to
// log_dir/rankR-<port>.log.
std::vector<pid_t> spawn_two_ranks(const std::vector<std::string>& args, int port,
                                   const fs::path& log_dir = {}) {
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn(args,
                         {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                          "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"},
                         log_dir.empty() ? fs::path()
                                         : log_dir / ("rank" + std::to_string(r) + "-" +
                                                      std::to_string(port) + ".log")));
  return pids;
}

TEST(Train, CosineScheduleWithWarmup) {
  // total 10, warm-up ceil(0.25 * 10) = 3: 0, 1/3, 2/3, then 0.5 (1 + cos(pi (s - 3) / 7)).
  EXPECT_DOUBLE_EQ(cosine_lr_factor(0, 10, 0.25, 0.0), 0.0);
  EXPECT_NEAR(cosine_lr_factor(2, 10, 0.25, 0.0), 2.0 / 3.0, 1e-15);
  EXPECT_DOUBLE_EQ(cosine_lr_factor(3, 10, 0.25, 0.0), 1.0);
  EXPECT_NEAR(cosine_lr_factor(9, 10, 0.25, 0.0),
              0.5 * (1 + std::cos(std::numbers::pi * 6.0 / 7.0)), 1e-15);
  EXPECT_NEAR(cosine_lr_factor(9, 10, 0.25, 0.1),
              0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 6.0 / 7.0)), 1e-15);
}

TEST(Train, ResumeGivesTheUninterruptedCurve) {
  const auto dir = test::scratch_dir();
  const auto full = tiny_config(dir, "full");
  const auto r = train(full);
  EXPECT_FALSE(r.interrupted);
  EXPECT_EQ(r.steps, 7);
  const auto ref = read_metrics(full.output_dir);
  ASSERT_EQ(ref.size(), 7u);
  EXPECT_LT(ref.back()["eval_loss"].get<double>(), ref[0]["loss"].get<double>());

  // Stop mid stage 2 (step 5, after the stage-1 checkpoint and the step-4 one), then resume.
  auto part = tiny_config(dir, "part", {"debug.stop_after_steps=5"});
  const auto r1 = train(part);
  EXPECT_TRUE(r1.interrupted);
  EXPECT_EQ(r1.steps, 5);
  EXPECT_TRUE(fs::exists(fs::path(part.output_dir) / "checkpoints" / "step-00000005"));
  part.debug.stop_after_steps = 0;
  const auto r2 = train(part);
  EXPECT_EQ(r2.resumed_from, 5);
  EXPECT_EQ(r2.steps, 7);
  expect_same_curve(read_metrics(part.output_dir), ref, 1e-6);
  EXPECT_LT(model_diff(fs::path(full.output_dir) / "final", fs::path(part.output_dir) / "final"),
            1e-6);
}

// Every floating tensor of the optimiser state (exp_avg, exp_avg_sq) in a checkpoint's archive;
// the step counts are integers.
std::vector<at::Tensor> optimizer_moments(const fs::path& file) {
  torch::serialize::InputArchive ar, state;
  ar.load_from(file.string());
  ar.read("state", state);
  std::vector<at::Tensor> v;
  for (const auto& key : state.keys()) {
    torch::serialize::InputArchive ps;
    if (!state.try_read(key, ps)) continue;
    for (const char* name : {"exp_avg", "exp_avg_sq"}) {
      at::Tensor t;
      if (ps.try_read(name, t)) v.push_back(t);
    }
  }
  return v;
}

// training.precision bf16_weights: bf16 weights, gradients and AdamW state without autocast. The
// loss falls, an interrupted run resumes onto the uninterrupted curve, checkpoints hold bf16
// weights and bf16 optimiser state, the final model is stored as checkpoint.save_dtype says, and
// a resume under another precision is refused.
TEST(Train, Bf16WeightsTrainsAndResumes) {
  const auto dir = test::scratch_dir();
  const std::string bw = "training.precision=bf16_weights";
  const auto full = tiny_config(dir, "full", {bw});
  EXPECT_EQ(train(full).steps, 7);
  const auto ref = read_metrics(full.output_dir);
  ASSERT_EQ(ref.size(), 7u);
  // Held-out loss falls: below the first evaluation (step 2) and below the untrained model's
  // (an fp32 run whose only steps have lr 0, the warm-up's first step).
  const auto fp32 = tiny_config(dir, "fp32", {"stages[0].steps=1", "stages[1].steps=1"});
  train(fp32);
  const auto mf = read_metrics(fp32.output_dir);
  ASSERT_EQ(mf.size(), 2u);
  EXPECT_DOUBLE_EQ(mf[1]["lr"].get<double>(), 0.0);
  EXPECT_LT(ref.back()["eval_loss"].get<double>(), ref[1]["eval_loss"].get<double>());
  EXPECT_LT(ref.back()["eval_loss"].get<double>(), mf[1]["eval_loss"].get<double>());
  // The first step runs on the initial weights: rounding them (and every activation) to bf16
  // moves the fp32 loss a little.
  EXPECT_NEAR(mf[0]["loss"].get<double>(), ref[0]["loss"].get<double>(), 0.05);
  EXPECT_NE(mf[0]["loss"].get<double>(), ref[0]["loss"].get<double>());

  auto part = tiny_config(dir, "part", {bw, "debug.stop_after_steps=5"});
  EXPECT_TRUE(train(part).interrupted);
  const fs::path ck = fs::path(part.output_dir) / "checkpoints" / "step-00000005";
  auto st = nlohmann::json::parse(std::ifstream(ck / "state.json"));
  EXPECT_EQ(st["weights_dtype"], "bf16");
  const auto weights = SafetensorsFile::open(ck / "model.safetensors");
  ASSERT_FALSE(weights.tensors().empty());
  for (const auto& t : weights.tensors()) EXPECT_EQ(t.dtype, DType::BF16) << t.name;
  const auto moments = optimizer_moments(ck / "optimizer-rank0.pt");
  ASSERT_FALSE(moments.empty());
  for (const auto& t : moments) EXPECT_EQ(t.scalar_type(), at::kBFloat16);

  part.debug.stop_after_steps = 0;
  auto other = part;
  other.training.precision = "fp32";
  try {
    train(other);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("training.precision fp32"), std::string::npos) << e.what();
  }
  const auto r2 = train(part);
  EXPECT_EQ(r2.resumed_from, 5);
  EXPECT_EQ(r2.steps, 7);
  expect_same_curve(read_metrics(part.output_dir), ref, 1e-6);
  EXPECT_EQ(model_diff(fs::path(full.output_dir) / "final", fs::path(part.output_dir) / "final"),
            0.0);
  // checkpoint.save_dtype f32 (the tiny config's) for the final model.
  const auto fin = SafetensorsFile::open(fs::path(full.output_dir) / "final" / "model.safetensors");
  for (const auto& t : fin.tensors()) EXPECT_EQ(t.dtype, DType::F32) << t.name;
}

// Recomputing each SuperBlock / layer in backward and the per-tensor (unfused) AdamW give the
// default run's curve and weights.
TEST(Train, ActivationCheckpointingAndUnfusedAdamWKeepTheCurve) {
  const auto dir = test::scratch_dir();
  const auto base = tiny_config(dir, "base");
  train(base);
  const auto ref = read_metrics(base.output_dir);
  ASSERT_EQ(ref.size(), 7u);
  for (const std::string ov : {"training.activation_checkpointing=true", "optimizer.fused=false"}) {
    SCOPED_TRACE(ov);
    const std::string name = ov.substr(0, ov.find('.'));
    auto c = tiny_config(dir, name, {ov});
    train(c);
    expect_same_curve(read_metrics(c.output_dir), ref, 1e-6);
    EXPECT_LT(model_diff(fs::path(base.output_dir) / "final", fs::path(c.output_dir) / "final"),
              1e-6);
  }
}

// The chunked LM head + cross-entropy (training.fused_linear_cross_entropy=true) gives
// the curve and weights of the full-logit loss: LLaMA (untied head) and Gemma-2 (tied embeddings,
// final soft-cap) in fp32, where stage 1 (W_c only) leaves the head frozen; the same under CPU bf16
// autocast and on bf16 weights within bf16's resolution. The key is operational: a run resumes
// across a change of it.
TEST(Train, ChunkedLinearCrossEntropyKeepsTheCurve) {
  const auto dir = test::scratch_dir();
  // Gemma-2's layers alternate sliding and global attention: no SuperBlocks of the tiny config.
  const std::vector<std::string> gemma = {
      "model.path=" + (test::data_dir() / "models" / "gemma2").string(), "model.variant=none",
      "model.wc_init=zero", "stages=[{params: all, steps: 5, lr: 1.0e-3}]"};
  const auto with = [](std::vector<std::string> v, const std::string& s) {
    v.push_back(s);
    return v;
  };
  struct Case {
    std::string name;
    std::vector<std::string> sets;
    double loss_tol, weight_tol;  // weight_tol 0: weights not compared (bf16 rounding flips)
    // The chunked path soft-caps in fp32, the full logits are soft-capped in bf16 under
    // autocast: the losses must differ a little, which shows that the key takes effect.
    bool must_differ = false;
  };
  const std::vector<Case> cases = {
      {"llama-fp32", {}, 1e-5, 1e-5},
      {"gemma2-fp32", gemma, 1e-5, 1e-5},
      {"gemma2-bf16", with(gemma, "training.precision=bf16"), 2e-3, 0, true},
      {"llama-bf16-weights", {"training.precision=bf16_weights"}, 2e-3, 0}};
  for (const auto& k : cases) {
    SCOPED_TRACE(k.name);
    auto on_sets = k.sets, off_sets = k.sets;
    on_sets.push_back("training.fused_linear_cross_entropy=true");
    off_sets.push_back("training.fused_linear_cross_entropy=false");
    const auto on = tiny_config(dir, k.name + "-on", on_sets);
    const auto off = tiny_config(dir, k.name + "-off", off_sets);
    ASSERT_TRUE(on.training.fused_linear_cross_entropy);
    train(on);
    train(off);
    const auto a = read_metrics(on.output_dir), b = read_metrics(off.output_dir);
    expect_same_curve(a, b, k.loss_tol);
    double worst = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i)
      worst = std::max(worst, std::abs(a[i]["loss"].get<double>() - b[i]["loss"].get<double>()));
    const double dw =
        model_diff(fs::path(on.output_dir) / "final", fs::path(off.output_dir) / "final");
    std::printf("  %s: max loss diff %.3g, max weight diff %.3g\n", k.name.c_str(), worst, dw);
    if (k.weight_tol > 0) {
      EXPECT_LT(dw, k.weight_tol);
    }
    if (k.must_differ) {
      EXPECT_GT(worst, 0.0);
    }
  }
  // Switching it on a resume needs no --allow-changed-config.
  EXPECT_TRUE(
      train(tiny_config(dir, "switch",
                        {"debug.stop_after_steps=4", "training.fused_linear_cross_entropy=true"}))
          .interrupted);
  const auto r = train(tiny_config(dir, "switch"));
  EXPECT_EQ(r.resumed_from, 4);
  EXPECT_TRUE(r.config_changes.empty());
}

TEST(Train, NonFiniteLossStopsNamingTheStep) {
  const auto dir = test::scratch_dir();
  auto c = tiny_config(dir, "nan", {"debug.inject_nan_at_step=2"});
  try {
    train(c);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite loss"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("at step 2"), std::string::npos) << e.what();
  }
  c.training.nan_policy = "skip";
  TrainOptions fresh;
  fresh.resume = false;
  const auto r = train(c, fresh);
  EXPECT_EQ(r.steps, 7);
  const auto m = read_metrics(c.output_dir);
  ASSERT_EQ(m.size(), 7u);
  EXPECT_TRUE(m[1]["skipped"].get<bool>());
  EXPECT_TRUE(m[1]["loss"].is_null());
  EXPECT_FALSE(m[2]["skipped"].get<bool>());
  EXPECT_TRUE(std::isfinite(m.back()["loss"].get<double>()));
}

TEST(Train, BadParameterGlobIsNamed) {
  const auto dir = test::scratch_dir();
  auto c = tiny_config(dir, "bad", {"stages[1].params=[\"*.q_proj.weight\", \"nothing.*\"]"});
  try {
    train(c);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stages[1].params: 'nothing.*'"), std::string::npos)
        << e.what();
  }
}

TEST(Train, BaselineVariantsAndBf16Autocast) {
  const auto dir = test::scratch_dir();
  const auto fp32 = train(tiny_config(dir, "fp32", {"stages[0].steps=1", "stages[1].steps=1"}));
  const auto bf = train(tiny_config(
      dir, "bf16", {"stages[0].steps=1", "stages[1].steps=1", "training.precision=bf16"}));
  // bf16 matmuls change the first loss (same weights, same batch) only slightly.
  EXPECT_TRUE(std::isfinite(bf.last_loss));
  const auto mf = read_metrics(dir / "fp32"), mb = read_metrics(dir / "bf16");
  EXPECT_NEAR(mf[0]["loss"].get<double>(), mb[0]["loss"].get<double>(), 0.05);
  EXPECT_NE(mf[0]["loss"].get<double>(), mb[0]["loss"].get<double>());
  for (const std::string v : {"none", "softmax", "cla"}) {
    SCOPED_TRACE(v);
    const auto r = train(tiny_config(dir, v,
                                     {"model.variant=" + v, "model.wc_init=zero",
                                      "stages=[{params: all, steps: 2, lr: 1.0e-3}]"}));
    EXPECT_EQ(r.steps, 2);
    EXPECT_TRUE(std::isfinite(r.last_loss));
  }
  (void)fp32;
}

TEST(Train, SigtermCheckpointsAndResumes) {
  ASSERT_TRUE(fs::exists(cli())) << cli() << " missing: build the uniattn-train target";
  const auto dir = test::scratch_dir();
  const std::vector<std::string> longer{"stages[1].steps=400", "checkpoint.every_steps=0",
                                        "eval.every_steps=0"};
  const pid_t pid = spawn(cli_args(dir, "sig", longer), {});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (read_metrics(dir / "sig").size() < 5 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(read_metrics(dir / "sig").size(), 5u);
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 75);
  const auto stopped = read_metrics(dir / "sig");
  const int64_t k = stopped.back()["step"].get<int64_t>();
  ASSERT_LT(k, 403);
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(k));
  EXPECT_TRUE(fs::exists(dir / "sig" / "checkpoints" / name / "model.safetensors"));
  // Resume to k + 3 and compare with an uninterrupted run to the same step.
  const int64_t until = k + 3;
  auto more = longer;
  more.push_back("debug.stop_after_steps=" + std::to_string(until));
  auto c = tiny_config(dir, "sig", more);
  EXPECT_EQ(train(c).resumed_from, k);
  auto ref = tiny_config(dir, "ref", more);
  train(ref);
  expect_same_curve(read_metrics(dir / "sig"), read_metrics(dir / "ref"), 1e-6);
}

TEST(Train, TwoGlooProcessesMatchOneProcess) {
#if !__has_include(<gloo/algorithm.h>)
  GTEST_SKIP() << "Gloo headers (Debian libgloo-dev) missing: the library was built without Gloo";
#endif
  ASSERT_TRUE(fs::exists(cli())) << cli() << " missing: build the uniattn-train target";
  const auto dir = test::scratch_dir();
  // Same global batch (4): one process with micro-batches of 2, two ranks with micro-batches of
  // 1 (so each rank accumulates 2), ZeRO-1 on, small buckets so several overlap with backward.
  const std::vector<std::string> common{"distributed.bucket_mb=0.01", "checkpoint.every_steps=0"};
  auto one = common;
  one.push_back("training.micro_batch=2");
  train(tiny_config(dir, "one", one));
  auto two = common;
  two.push_back("training.micro_batch=1");
  auto pids = spawn_two_ranks(cli_args(dir, "two", two), free_port());
  for (auto p : pids) EXPECT_EQ(wait_exit(p), 0);
  expect_same_curve(read_metrics(dir / "two"), read_metrics(dir / "one"), 1e-5);
  EXPECT_LT(model_diff(dir / "one" / "final", dir / "two" / "final"), 1e-5);
  // With activation checkpointing, parameter gradients arrive inside the recomputing backward;
  // the reducer's hooks must still see each one once per step. Checkpoints by time here: the
  // ranks agree on each one through the loss all-reduce (a save only one rank entered would
  // hang in its barrier).
  two.push_back("training.activation_checkpointing=true");
  two.push_back("checkpoint.every_minutes=1.0e-5");
  pids = spawn_two_ranks(cli_args(dir, "two-rc", two), free_port());
  for (auto p : pids) EXPECT_EQ(wait_exit(p), 0);
  expect_same_curve(read_metrics(dir / "two-rc"), read_metrics(dir / "one"), 1e-5);
  EXPECT_LT(model_diff(dir / "one" / "final", dir / "two-rc" / "final"), 1e-5);
  EXPECT_TRUE(fs::exists(dir / "two-rc" / "checkpoints" / "step-00000006" / "optimizer-rank1.pt"));
}

// A rank that fails stops the others at once (they would otherwise wait in their next collective
// for distributed.timeout_s, 600 s by default), and what it leaves resumes to the same curve.
TEST(Train, AFailingRankStopsTheOthersAndTheRunResumes) {
#if !__has_include(<gloo/algorithm.h>)
  GTEST_SKIP() << "Gloo headers (Debian libgloo-dev) missing: the library was built without Gloo";
#endif
  ASSERT_TRUE(fs::exists(cli())) << cli() << " missing: build the uniattn-train target";
  const auto dir = test::scratch_dir();
  const std::vector<std::string> common{"distributed.bucket_mb=0.01", "training.micro_batch=1",
                                        "checkpoint.every_steps=2"};
  const auto launch = [&](const std::vector<std::string>& extra, int port) {
    auto ov = common;
    ov.insert(ov.end(), extra.begin(), extra.end());
    const auto pids = spawn_two_ranks(cli_args(dir, "run", ov), port, dir);
    std::vector<int> codes;
    for (auto p : pids) codes.push_back(wait_exit_within(p, std::chrono::seconds(120)));
    return codes;
  };
  const auto t0 = std::chrono::steady_clock::now();
  const int port = free_port();
  const auto failed = launch({"debug.fail_at_step=5", "debug.fail_rank=1"}, port);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(failed[1], 1);  // the failing rank reports its error
  EXPECT_EQ(failed[0], 1);  // the other one stops too, not killed by the 120 s limit (-1)
  EXPECT_LT(took, 60.0);
  EXPECT_NE(read_file(dir / ("rank1-" + std::to_string(port) + ".log"))
                .find("injected failure at step 5"),
            std::string::npos);
  EXPECT_NE(read_file(dir / ("rank0-" + std::to_string(port) + ".log")).find("rank 1 failed: "),
            std::string::npos)
      << read_file(dir / ("rank0-" + std::to_string(port) + ".log"));
  // The checkpoint of step 4 (optimiser state sharded over the ranks) is intact; both ranks resume
  // from it and finish.
  const int port2 = free_port();
  const auto resumed = launch({}, port2);
  EXPECT_EQ(resumed[0], 0);
  EXPECT_EQ(resumed[1], 0);
  EXPECT_NE(
      read_file(dir / ("rank0-" + std::to_string(port2) + ".log")).find("resumed from step 4"),
      std::string::npos);
  train(tiny_config(dir, "ref", {"training.micro_batch=2"}));
  expect_same_curve(read_metrics(dir / "run"), read_metrics(dir / "ref"), 1e-5);
}

// Every file under `dir`: relative path -> contents.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[fs::relative(e.path(), dir).string()] = read_file(e.path());
  return m;
}

std::vector<nlohmann::json> read_jsonl(const fs::path& p) {
  std::vector<nlohmann::json> v;
  std::ifstream f(p);
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

// A resume whose learning rate, global batch, seed, data contents or model differ from the
// checkpoint's is refused, naming each difference, before anything in output_dir changes.
TEST(Train, ResumeWithChangedInputsIsRefusedAndWritesNothing) {
  const auto dir = test::scratch_dir();
  EXPECT_TRUE(train(tiny_config(dir, "run", {"debug.stop_after_steps=4"})).interrupted);
  const fs::path out = dir / "run";
  const auto before = snapshot(out);
  ASSERT_TRUE(before.count("config.yaml"));
  ASSERT_TRUE(before.count("config_history.jsonl"));
  ASSERT_TRUE(before.count("checkpoints/step-00000004/state.json"));
  const auto refused = [&](const TrainConfig& c, const std::vector<std::string>& needles) {
    for (const auto& n : needles) test::expect_error([&] { train(c); }, n);
    EXPECT_TRUE(snapshot(out) == before) << "output_dir changed";
  };
  refused(tiny_config(dir, "run", {"stages[1].lr=2.0e-3"}), {"stages[1].lr: 0.001 -> 0.002"});
  refused(tiny_config(dir, "run", {"training.global_batch=8"}), {"training.global_batch: 4 -> 8"});
  refused(tiny_config(dir, "run", {"training.seed=8", "data.shuffle=false"}),
          {"training.seed: 7 -> 8", "data.shuffle: true -> false", "--allow-changed-config"});
  // Other contents under the same path.
  const auto c = tiny_config(dir, "run");
  write_tokens(dir / "train.jsonl", 16, 99);
  refused(c, {"data.train (contents)"});
  // A copy of the model with one weight byte changed.
  const fs::path src = test::data_dir() / "models" / "llama", copy = dir / "llama-copy";
  fs::create_directories(copy);
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_regular_file()) write_file(copy / e.path().filename(), read_file(e.path()));
  auto weights = read_file(copy / "model.safetensors");
  weights[weights.size() / 2] ^= 0x10;
  write_file(copy / "model.safetensors", weights);
  refused(tiny_config(dir, "run", {"model.path=" + copy.string()}), {"model.path (contents)"});
  // The model's path alone does not matter: an unchanged copy resumes.
  write_file(copy / "model.safetensors", read_file(src / "model.safetensors"));
  const auto r = train(tiny_config(dir, "run", {"model.path=" + copy.string()}));
  EXPECT_EQ(r.resumed_from, 4);
  EXPECT_TRUE(r.config_changes.empty());
}

// With allow_changed_config (uniattn-train --allow-changed-config) the run continues under the new
// config, and config_history.jsonl keeps the old and the new one; config.yaml is the one in force.
// Settings that do not change the result need no flag and are recorded the same way.
TEST(Train, AllowChangedConfigContinuesAndRecordsTheChange) {
  const auto dir = test::scratch_dir();
  EXPECT_TRUE(train(tiny_config(dir, "run", {"debug.stop_after_steps=4"})).interrupted);
  const fs::path out = dir / "run";
  const auto first_yaml = read_file(out / "config.yaml");
  TrainOptions allow;
  allow.allow_changed_config = true;
  const auto r = train(tiny_config(dir, "run", {"stages[1].lr=2.0e-3"}), allow);
  EXPECT_EQ(r.resumed_from, 4);
  EXPECT_EQ(r.steps, 7);
  ASSERT_EQ(r.config_changes.size(), 1u);
  EXPECT_EQ(r.config_changes[0], "stages[1].lr: 0.001 -> 0.002");
  // Step 5 is step 2 of stage 2 (4 steps, 1 warm-up step): the full new learning rate.
  const auto m = read_metrics(out);
  ASSERT_EQ(m.size(), 7u);
  EXPECT_DOUBLE_EQ(m[4]["lr"].get<double>(), 2e-3 * cosine_lr_factor(1, 4, 0.25, 0.0));
  EXPECT_DOUBLE_EQ(m[5]["lr"].get<double>(), 2e-3 * cosine_lr_factor(2, 4, 0.25, 0.0));
  const auto now_yaml = read_file(out / "config.yaml");
  EXPECT_NE(now_yaml, first_yaml);
  EXPECT_EQ(TrainConfig::parse(now_yaml).stages[1].lr, 2e-3);
  auto h = read_jsonl(out / "config_history.jsonl");
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0]["event"], "start");
  EXPECT_EQ(h[0]["config"], first_yaml);
  EXPECT_EQ(h[1]["event"], "resume");
  EXPECT_EQ(h[1]["step"], 4);
  EXPECT_EQ(h[1]["changes"], nlohmann::json({"stages[1].lr: 0.001 -> 0.002"}));
  EXPECT_EQ(h[1]["config"], now_yaml);

  const auto r2 = train(tiny_config(dir, "run", {"stages[1].lr=2.0e-3", "checkpoint.keep_last=3"}));
  EXPECT_EQ(r2.resumed_from, 7);
  EXPECT_TRUE(r2.config_changes.empty());
  h = read_jsonl(out / "config_history.jsonl");
  ASSERT_EQ(h.size(), 3u);
  EXPECT_TRUE(h[2]["changes"].empty());
  EXPECT_EQ(h[2]["config_changes"], nlohmann::json({"checkpoint.keep_last: 2 -> 3"}));

  // Other data under the same path: the config text is unchanged, the change is still recorded.
  const auto same = tiny_config(dir, "run", {"stages[1].lr=2.0e-3", "checkpoint.keep_last=3"});
  write_tokens(dir / "train.jsonl", 16, 99);
  const auto r3 = train(same, allow);
  ASSERT_EQ(r3.config_changes.size(), 1u);
  EXPECT_EQ(r3.config_changes[0].rfind("data.train (contents): ", 0), 0u) << r3.config_changes[0];
  h = read_jsonl(out / "config_history.jsonl");
  ASSERT_EQ(h.size(), 4u);
  EXPECT_EQ(h[3]["changes"], nlohmann::json(r3.config_changes));
  EXPECT_TRUE(h[3]["config_changes"].empty());
}

// checkpoint.every_minutes (30 by default) checkpoints mid-stage without a step cadence, so a run
// that dies mid-stage (an injected failure saves nothing) resumes from its last step, where
// without it the run goes back to the end of the previous stage.
TEST(Train, TimedCheckpointsBoundTheWorkLost) {
  const auto dir = test::scratch_dir();
  EXPECT_EQ(tiny_config(dir, "defaults").checkpoint.every_minutes, 30.0);
  for (const std::string minutes : {"1.0e-5", "0"}) {
    SCOPED_TRACE(minutes);
    auto c = tiny_config(dir, "m" + minutes,
                         {"checkpoint.every_steps=0", "checkpoint.every_minutes=" + minutes,
                          "debug.fail_at_step=6"});
    test::expect_error([&] { train(c); }, "injected failure at step 6");
    c.debug.fail_at_step = 0;
    const auto r = train(c);
    EXPECT_EQ(r.resumed_from, minutes == "0" ? 3 : 5);  // stage 1 ends at step 3
    EXPECT_EQ(r.steps, 7);
  }
}

// A fresh start (--fresh) in an output_dir that holds a longer run's checkpoints removes them:
// with checkpoint.keep_last 1, pruning by name used to delete the new run's checkpoint instead
// (step-00000002 sorted before the old step-00000007), leaving `latest` naming nothing and the
// next resume falling back to the old run's step 7.
TEST(Train, FreshStartDoesNotMixWithTheEarlierRun) {
  const auto dir = test::scratch_dir();
  EXPECT_EQ(train(tiny_config(dir, "run")).steps, 7);
  ASSERT_TRUE(fs::exists(dir / "run" / "checkpoints" / "step-00000007"));
  TrainOptions fresh;
  fresh.resume = false;
  auto c = tiny_config(dir, "run", {"checkpoint.keep_last=1", "debug.stop_after_steps=2"});
  EXPECT_TRUE(train(c, fresh).interrupted);
  EXPECT_TRUE(fs::exists(dir / "run" / "checkpoints" / "step-00000002" / "state.json"));
  EXPECT_FALSE(fs::exists(dir / "run" / "checkpoints" / "step-00000007"));
  c.debug.stop_after_steps = 0;
  EXPECT_EQ(train(c).resumed_from, 2);
}

// Lines of a metrics file that a kill may have cut (the last one then does not parse).
std::vector<nlohmann::json> read_metrics_cut(const fs::path& out) {
  std::vector<nlohmann::json> v;
  std::ifstream f(out / "metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    try {
      v.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
    }
  }
  return v;
}

// SIGKILL at arbitrary moments of a run that checkpoints every step, so that kills land inside
// checkpoint writes too: each time `latest` names a complete checkpoint, a half-written one is
// removed by the next save, and the resumed run gives the uninterrupted curve.
TEST(Train, KillDuringCheckpointingLosesNothing) {
  ASSERT_TRUE(fs::exists(cli())) << cli() << " missing: build the uniattn-train target";
  const auto dir = test::scratch_dir();
  const fs::path out = dir / "kill", ckpts = out / "checkpoints";
  const std::vector<std::string> longer{"stages[1].steps=400", "checkpoint.every_steps=1",
                                        "checkpoint.keep_last=1", "eval.every_steps=0"};
  std::mt19937 rng(5);
  int cut_saves = 0;
  for (int round = 0; round < 3; ++round) {
    const size_t had = read_metrics_cut(out).size();
    const pid_t pid = spawn(cli_args(dir, "kill", longer), {}, dir / "kill.log");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (read_metrics_cut(out).size() < had + 2 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 60));
    kill(pid, SIGKILL);
    EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
    for (const auto& e : fs::directory_iterator(ckpts)) cut_saves += e.path().extension() == ".tmp";
    std::string latest = read_file(ckpts / "latest");
    latest.erase(latest.find_last_not_of("\r\n") + 1);
    EXPECT_TRUE(fs::exists(ckpts / latest / "state.json")) << latest;
  }
  std::printf("kills that cut a checkpoint write: %d of 3\n", cut_saves);
  fs::create_directories(ckpts / "step-99999999.tmp");
  write_file(ckpts / "step-99999999.tmp" / "state.json", "{");
  const int64_t until = read_metrics_cut(out).back()["step"].get<int64_t>() + 3;
  auto more = longer;
  more.push_back("debug.stop_after_steps=" + std::to_string(until));
  const auto r = train(tiny_config(dir, "kill", more));
  EXPECT_GT(r.resumed_from, 0);
  EXPECT_FALSE(fs::exists(ckpts / "step-99999999.tmp"));
  for (const auto& e : fs::directory_iterator(ckpts)) {
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();
    EXPECT_NE(e.path().filename().string().rfind(".latest.tmp", 0), 0u) << e.path();
  }
  train(tiny_config(dir, "ref", more));
  expect_same_curve(read_metrics(out), read_metrics(dir / "ref"), 1e-6);
}

// The first step's loss (lr 0 during warm-up, so the weights are the checkpoint's) against
// transformers on the same four sequences: sum of target-token cross-entropy / target tokens.
TEST(Train, FirstLossMatchesTransformers) {
  const char* py = std::getenv("UNIATTN_PYTHON");
  if (!py) GTEST_SKIP() << "UNIATTN_PYTHON not set";
  const auto dir = test::scratch_dir();
  auto c = tiny_config(dir, "oracle",
                       {"model.variant=none", "model.wc_init=zero", "data.shuffle=false",
                        "stages=[{params: all, steps: 1, lr: 1.0e-3}]"});
  train(c);
  const auto m = read_metrics(c.output_dir);
  ASSERT_EQ(m.size(), 1u);
  const fs::path script = dir / "oracle.py", result = dir / "oracle.txt";
  std::ofstream(script) << R"(import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()][:4]
total, count = 0.0, 0
with torch.no_grad():
    for r in rows:
        ids = torch.tensor([r["ids"]])
        logits = model(ids).logits[0, :-1].double()
        ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        mask = torch.tensor(r["loss_mask"][1:], dtype=torch.float64)
        total += float((ce * mask).sum()); count += int(mask.sum())
open(sys.argv[3], "w").write(repr(total / count))
)";
  const std::string cmd = std::string(py) + " " + script.string() + " " +
                          (test::data_dir() / "models" / "llama").string() + " " +
                          (dir / "train.jsonl").string() + " " + result.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(result);
  double expected = 0;
  in >> expected;
  EXPECT_NEAR(m[0]["loss"].get<double>(), expected, 1e-5);
}

}  // namespace
}  // namespace uniattn
