// Knowledge distillation in uniattn-train (distill section, src/train/distill.h) on the tiny random
// LLaMA fixture: a teacher equal to the student gives zero KL and (1 - weight) times the
// cross-entropy gradients; the KL equals an fp64 computation from the two models' logits at
// temperature 2 and counts response positions only; the follower MSE equals an fp64 computation
// from the attention outputs; a run logs ce and kl (and mse) with loss their weighted sum; a resume
// with another distill.weight or teacher is refused; a missing teacher is named; two Gloo ranks
// distilling match one process.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <fstream>
#include <random>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"
#include "train/distill.h"
#include "train/train_test_util.h"
#include "uniattn/error.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/train/train.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using namespace train_test;
using train_detail::LossTerms;
using train_detail::ModelOutputs;
using train_detail::Teacher;

fs::path llama() { return test::data_dir() / "models" / "llama"; }

// configs/tiny-cpu-smoke.yaml on the fixture model and fresh data in `dir`, plus `extra`.
std::vector<std::string> overrides(const fs::path& dir, const std::string& out,
                                   const std::vector<std::string>& extra) {
  write_tokens(dir / "train.jsonl", 16, 11);
  write_tokens(dir / "eval.jsonl", 4, 12);
  std::vector<std::string> ov{
      "model.path=" + llama().string(), "data.train=" + (dir / "train.jsonl").string(),
      "data.eval=" + (dir / "eval.jsonl").string(), "output_dir=" + (dir / out).string()};
  ov.insert(ov.end(), extra.begin(), extra.end());
  return ov;
}

fs::path smoke_config() { return test::source_dir() / "configs" / "tiny-cpu-smoke.yaml"; }

TrainConfig tiny_config(const fs::path& dir, const std::string& out,
                        const std::vector<std::string>& extra) {
  return TrainConfig::load(smoke_config().string(), overrides(dir, out, extra));
}

// The student and teacher as variant none: the same model.
const std::vector<std::string> kPlain{
    "model.variant=none", "model.superblocks=", "model.wc_init=zero", "stages[0].params=all"};

// Two right-padded rows of random tokens with a prompt (mask 0) and a response (mask 1).
void make_batch(at::Tensor& ids, at::Tensor& mask) {
  at::manual_seed(3);
  ids = at::randint(0, 97, {2, 14}, at::kLong);
  mask = at::zeros({2, 14}, at::kFloat);
  mask.index_put_({0, at::indexing::Slice(5, 14)}, 1.0);
  mask.index_put_({1, at::indexing::Slice(9, 12)}, 1.0);  // then padding, unscored
}

// fp64 reference: sum over scored positions p (weight mask[p + 1]) of KL(p_t || p_s) at T.
double reference_kl(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask,
                    double temperature) {
  const auto ls = at::log_softmax(student.to(at::kDouble) / temperature, -1);
  const auto lt = at::log_softmax(teacher.to(at::kDouble) / temperature, -1);
  const auto kl = (lt.exp() * (lt - ls)).sum(-1);  // [B, L]
  const auto l = mask.size(1);
  const auto w = at::constant_pad_nd(mask.narrow(1, 1, l - 1), {0, 1}).to(at::kDouble);
  return (kl * w).sum().item<double>();
}

double reference_ce(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& mask) {
  const auto lp = at::log_softmax(logits.to(at::kDouble), -1);
  double s = 0;
  for (int64_t b = 0; b < ids.size(0); ++b)
    for (int64_t p = 0; p + 1 < ids.size(1); ++p)
      if (mask[b][p + 1].item<float>() > 0)
        s -= lp[b][p][ids[b][p + 1].item<int64_t>()].item<double>();
  return s;
}

std::vector<at::Tensor> grads_of(CausalLM& m) {
  std::vector<at::Tensor> g;
  for (auto& p : m->parameters()) {
    g.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    p.mutable_grad().reset();
  }
  return g;
}

TEST(Distill, TeacherEqualToTheStudentGivesZeroKlAndScaledCrossEntropyGradients) {
  const auto dir = test::scratch_dir();
  auto ov = kPlain;
  ov.insert(ov.end(), {"distill.teacher=base", "distill.weight=0.3", "distill.temperature=2"});
  const auto c = tiny_config(dir, "out", ov);
  auto student = load_model(llama());
  Teacher teacher(c, at::kCPU, student);
  at::Tensor ids, mask;
  make_batch(ids, mask);
  const auto tout = teacher.forward(ids, {});
  EXPECT_FALSE(tout.logits.requires_grad());

  const ModelOutputs s1{student->forward(ids), {}};
  const LossTerms kd = train_detail::micro_batch_loss(s1, &tout, &*c.distill, ids, mask);
  EXPECT_NEAR(kd.kl.item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(kd.ce.item<double>(), reference_ce(s1.logits, ids, mask), 1e-4);
  EXPECT_NEAR(kd.total.item<double>(), 0.7 * kd.ce.item<double>(), 1e-5);
  kd.total.backward();
  const auto g_kd = grads_of(student);

  const ModelOutputs s2{student->forward(ids), {}};
  train_detail::micro_batch_loss(s2, nullptr, nullptr, ids, mask).total.backward();
  const auto g_ce = grads_of(student);
  ASSERT_EQ(g_kd.size(), g_ce.size());
  double worst = 0, largest = 0;
  for (size_t i = 0; i < g_kd.size(); ++i) {
    worst = std::max(worst, (g_kd[i] - 0.7 * g_ce[i]).abs().max().item<double>());
    largest = std::max(largest, g_ce[i].abs().max().item<double>());
  }
  EXPECT_GT(largest, 1e-3);
  EXPECT_LT(worst, 1e-6 * std::max(1.0, largest)) << "largest gradient " << largest;
}

// A unified student (layers 0-5 in SuperBlocks of three, zero W_c, lm_head scaled) against the
// base.
TEST(Distill, KlEqualsAnFp64ReferenceAndCountsResponsePositionsOnly) {
  const auto dir = test::scratch_dir();
  const auto c = tiny_config(dir, "out", {"distill.weight=0.4", "distill.temperature=2"});
  LoadOptions lo;
  lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, "3,0,6", load_config(llama()).num_layers);
  auto student = load_model(llama(), lo);
  Teacher teacher(c, at::kCPU, student);
  at::Tensor ids, mask;
  make_batch(ids, mask);
  at::NoGradGuard ng;
  // The random model's next-token distributions are nearly uniform, so that the two models' KL
  // (about 1e-5 nats) is at fp32's rounding floor; sharper student logits make it O(1).
  auto params = student->named_parameters();
  ASSERT_TRUE(params.contains("lm_head.weight"));
  params["lm_head.weight"].mul_(30.0);
  const auto tout = teacher.forward(ids, {});
  const ModelOutputs sout{student->forward(ids), {}};
  const auto t = train_detail::micro_batch_loss(sout, &tout, &*c.distill, ids, mask);
  const double ref = reference_kl(sout.logits, tout.logits, mask, 2.0);
  EXPECT_GT(ref, 0.1);  // the two models differ
  EXPECT_NEAR(t.kl.item<double>(), ref, 1e-5 * ref);
  const double ce = reference_ce(sout.logits, ids, mask);
  EXPECT_NEAR(t.total.item<double>(), 0.6 * ce + 0.4 * 4.0 * ref, 1e-5 * ce);

  // The teacher's logits at unscored positions (prompt, the last position, padding) do not count;
  // one scored position does.
  const auto l = mask.size(1);
  const auto w = at::constant_pad_nd(mask.narrow(1, 1, l - 1), {0, 1});  // [B, L]
  auto noisy = tout.logits.clone();
  noisy.add_(at::randn_like(noisy) * 5.0 * (w == 0).unsqueeze(-1).to(at::kFloat));
  ModelOutputs tn{noisy, {}};
  EXPECT_DOUBLE_EQ(
      train_detail::micro_batch_loss(sout, &tn, &*c.distill, ids, mask).kl.item<double>(),
      t.kl.item<double>());
  tn.logits.index({0, 7}).add_(at::randn({tn.logits.size(-1)}) * 5.0);  // scored: mask[0][8] = 1
  EXPECT_GT(
      std::abs(train_detail::micro_batch_loss(sout, &tn, &*c.distill, ids, mask).kl.item<double>() -
               t.kl.item<double>()),
      1e-3);
}

// forward_with_attention gives the logits of forward(); the MSE equals an fp64 computation from
// the attention outputs it returns.
TEST(Distill, FollowerMseEqualsAnFp64Reference) {
  const auto dir = test::scratch_dir();
  const auto c = tiny_config(dir, "out", {"distill.follower_mse=2.5", "distill.weight=0.5"});
  LoadOptions lo;
  lo.uniattn = UniAttnSpec::parse(Variant::UniAttn, "3,0,6", load_config(llama()).num_layers);
  auto student = load_model(llama(), lo);
  const auto followers = train_detail::follower_layers(student);
  ASSERT_EQ(followers, (std::vector<int64_t>{1, 2, 4, 5}));
  Teacher teacher(c, at::kCPU, student);
  at::Tensor ids, mask;
  make_batch(ids, mask);
  at::NoGradGuard ng;
  const auto tout = teacher.forward(ids, followers);
  const auto sout = train_detail::forward_with_attention(student, ids, followers);
  EXPECT_LT((sout.logits - student->forward(ids)).abs().max().item<double>(), 1e-5);
  EXPECT_LT((tout.logits - teacher.model()->forward(ids)).abs().max().item<double>(), 1e-5);
  ASSERT_EQ(sout.attn.size(), 4u);
  ASSERT_EQ(tout.attn.size(), 4u);
  const auto l = mask.size(1);
  const auto w = at::constant_pad_nd(mask.narrow(1, 1, l - 1), {0, 1}).to(at::kDouble);
  at::Tensor per_pos = at::zeros_like(w);
  for (size_t i = 0; i < 4; ++i)
    per_pos += (sout.attn[i].to(at::kDouble) - tout.attn[i].to(at::kDouble)).pow(2).mean(-1);
  const double mse = (per_pos / 4.0 * w).sum().item<double>();
  EXPECT_GT(mse, 1e-8);
  const auto t = train_detail::micro_batch_loss(sout, &tout, &*c.distill, ids, mask);
  EXPECT_NEAR(t.mse.item<double>(), mse, 1e-5 * mse);
  const double expect = 0.5 * t.ce.item<double>() + 0.5 * t.kl.item<double>() + 2.5 * mse;
  EXPECT_NEAR(t.total.item<double>(), expect, 1e-5 * expect);
}

// Two steps: the first distils (ce and kl logged, loss their weighted sum, ce that of the same
// step without distillation), the second has stages[1].distill false (cross-entropy only).
TEST(Distill, RunLogsCrossEntropyAndKl) {
  const auto dir = test::scratch_dir();
  const std::vector<std::string> steps{"stages[0].steps=1", "stages[1].steps=1",
                                       "checkpoint.every_steps=0", "eval.every_steps=0"};
  train(tiny_config(dir, "ce", steps));
  auto kd = steps;
  kd.insert(kd.end(), {"distill.weight=0.5", "distill.temperature=2", "stages[1].distill=false"});
  train(tiny_config(dir, "kd", kd));
  const auto ce = read_metrics(dir / "ce"), m = read_metrics(dir / "kd");
  ASSERT_EQ(m.size(), 2u);
  ASSERT_TRUE(m[0].contains("ce") && m[0].contains("kl")) << m[0].dump();
  EXPECT_FALSE(m[0].contains("mse"));
  const double c0 = m[0]["ce"].get<double>(), k0 = m[0]["kl"].get<double>();
  EXPECT_GT(k0, 1e-4);  // the student (unified, random W_c) differs from the base
  // The total is summed in fp32, its parts are reported one by one.
  EXPECT_NEAR(m[0]["loss"].get<double>(), 0.5 * c0 + 0.5 * 4.0 * k0, 1e-6 * c0);
  EXPECT_NEAR(c0, ce[0]["loss"].get<double>(), 1e-6);
  EXPECT_FALSE(m[1].contains("kl")) << m[1].dump();

  // follower_mse adds an mse column and term.
  auto mse = kd;
  mse.push_back("distill.follower_mse=10");
  train(tiny_config(dir, "mse", mse));
  const auto n = read_metrics(dir / "mse");
  ASSERT_TRUE(n[0].contains("mse")) << n[0].dump();
  const double e0 = n[0]["mse"].get<double>();
  EXPECT_GT(e0, 0.0);
  EXPECT_NEAR(n[0]["loss"].get<double>(),
              0.5 * n[0]["ce"].get<double>() + 2.0 * n[0]["kl"].get<double>() + 10.0 * e0,
              1e-6 * c0);
  // The layer-by-layer forward of follower_mse gives the logits of the fused one.
  EXPECT_NEAR(n[0]["kl"].get<double>(), k0, 1e-4 * k0);
}

// The teacher is not checkpointed but reloaded: a run stopped mid stage 2 resumes onto the
// uninterrupted curve (loss, ce, kl). Activation checkpointing keeps it; bf16 autocast runs.
TEST(Distill, InterruptedRunResumesOntoTheSameCurve) {
  const auto dir = test::scratch_dir();
  const std::vector<std::string> kd{"distill.weight=0.5", "distill.temperature=2"};
  train(tiny_config(dir, "full", kd));
  auto part = kd;
  part.push_back("debug.stop_after_steps=5");
  EXPECT_TRUE(train(tiny_config(dir, "part", part)).interrupted);
  const auto r = train(tiny_config(dir, "part", kd));
  EXPECT_EQ(r.resumed_from, 5);
  auto rc = kd;
  rc.push_back("training.activation_checkpointing=true");
  train(tiny_config(dir, "rc", rc));
  const auto a = read_metrics(dir / "full");
  ASSERT_EQ(a.size(), 7u);
  for (const char* run : {"part", "rc"}) {
    const auto b = read_metrics(dir / run);
    ASSERT_EQ(b.size(), a.size()) << run;
    for (size_t i = 0; i < a.size(); ++i)
      for (const char* k : {"loss", "ce", "kl"})
        EXPECT_NEAR(a[i][k].get<double>(), b[i][k].get<double>(), 1e-6)
            << run << " step " << i + 1 << " " << k;
  }
  auto bf16 = kd;
  bf16.insert(bf16.end(), {"training.precision=bf16", "stages[1].steps=1"});
  train(tiny_config(dir, "bf16", bf16));
  const auto c = read_metrics(dir / "bf16");
  ASSERT_EQ(c.size(), 4u);
  // bf16 matmuls in the student only: the same step's KL within bf16's rounding of fp32's.
  EXPECT_NEAR(c[0]["kl"].get<double>(), a[0]["kl"].get<double>(), 0.05 * a[0]["kl"].get<double>());
  EXPECT_NEAR(c[0]["ce"].get<double>(), a[0]["ce"].get<double>(), 0.01 * a[0]["ce"].get<double>());
}

TEST(Distill, ResumeWithAnotherWeightOrTeacherIsRefused) {
  const auto dir = test::scratch_dir();
  const fs::path copy = dir / "teacher";
  fs::create_directories(copy);
  for (const auto& e : fs::directory_iterator(llama()))
    if (e.is_regular_file()) write_file(copy / e.path().filename(), read_file(e.path()));
  const std::vector<std::string> kd{"distill.teacher=" + copy.string(), "distill.weight=0.5"};
  auto first = kd;
  first.push_back("debug.stop_after_steps=2");
  EXPECT_TRUE(train(tiny_config(dir, "run", first)).interrupted);
  test::expect_error(
      [&] {
        train(tiny_config(dir, "run", {kd[0], "distill.weight=0.75"}));
      },
      "distill.weight: 0.5 -> 0.75");
  test::expect_error([&] { train(tiny_config(dir, "run", {"distill.weight=0.5"})); },
                     "distill.teacher (contents)");
  test::expect_error([&] { train(tiny_config(dir, "run", {})); },
                     "distill.weight: 0.5 -> (absent)");
  auto weights = read_file(copy / "model.safetensors");
  weights[weights.size() / 2] ^= 0x10;
  write_file(copy / "model.safetensors", weights);
  test::expect_error([&] { train(tiny_config(dir, "run", kd)); }, "distill.teacher (contents)");
}

TEST(Distill, MissingOrMismatchedTeacherIsNamed) {
  const auto dir = test::scratch_dir();
  test::expect_error(
      [&] { train(tiny_config(dir, "a", {"distill.teacher=" + (dir / "nope").string()})); },
      "distill.teacher: ");
  // A directory that holds no model.
  test::expect_error([&] { train(tiny_config(dir, "b", {"distill.teacher=" + dir.string()})); },
                     "distill.teacher");
}

// ---- two Gloo ranks ----

// Each rank runs its own teacher on its share of the global batch; the summed losses, their parts
// and the gradients equal one process's.
TEST(Distill, TwoGlooRanksMatchOneProcess) {
#if !__has_include(<gloo/algorithm.h>)
  GTEST_SKIP() << "Gloo headers (Debian libgloo-dev) missing: the library was built without Gloo";
#endif
  ASSERT_TRUE(fs::exists(cli())) << cli() << " missing: build the uniattn-train target";
  const auto dir = test::scratch_dir();
  const std::vector<std::string> common{"distill.weight=0.5",        "distill.temperature=2",
                                        "distill.follower_mse=1",    "stages[0].steps=2",
                                        "stages[1].steps=2",         "checkpoint.every_steps=0",
                                        "distributed.bucket_mb=0.01"};
  auto one = common;
  one.push_back("training.micro_batch=2");
  train(tiny_config(dir, "one", one));
  auto two = common;
  two.push_back("training.micro_batch=1");
  std::vector<std::string> args{cli().string(), "--config", smoke_config().string()};
  for (const auto& o : overrides(dir, "two", two)) args.insert(args.end(), {"--set", o});
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(
        spawn(args, {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                     "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"}));
  for (auto p : pids) {
    int status = 0;
    waitpid(p, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const auto a = read_metrics(dir / "one"), b = read_metrics(dir / "two");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    for (const char* k : {"loss", "ce", "kl", "mse", "grad_norm"}) {
      ASSERT_TRUE(b[i].contains(k)) << k;
      EXPECT_NEAR(a[i][k].get<double>(), b[i][k].get<double>(),
                  1e-5 * std::max(1.0, std::abs(a[i][k].get<double>())))
          << k;
    }
  }
}

}  // namespace
}  // namespace uniattn
