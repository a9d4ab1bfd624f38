// Activation checkpointing (ForwardOptions::recompute): on tiny random models of every variant,
// the loss and every parameter gradient equal those of the plain graph (fp64, and fp32 under
// bf16 autocast on CPU, where the recomputation must run under the same autocast state), also
// when only W_c is trained; checkpoint units span whole SuperBlocks; and the recomputing autograd
// node is really in the graph.
#include <gtest/gtest.h>

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/function.h>

#include <cstdio>
#include <functional>
#include <set>

#include "train/recompute.h"
#include "model/model_test_util.h"
#include "uniattn/model/checkpoint.h"

using namespace uniattn;

namespace {

// Groups for each tiny 6-layer model; gemma2's interleave ("2,4;3,5"), so its unit is 2..5.
std::string groups_for(const std::string& arch) {
  if (arch == "gemma2") return "2,4;3,5";
  return "1,3;4-5";  // non-contiguous: layer 2 sits inside the first SuperBlock's unit
}

CausalLM load(const std::string& arch, Variant v, at::ScalarType dtype) {
  auto dir = test::data_dir() / "models" / arch;
  LoadOptions o;
  o.dtype = dtype;
  const auto base = load_config(dir);
  if (v != Variant::None) o.uniattn = UniAttnSpec::parse(v, groups_for(arch), base.num_layers);
  auto m = load_model(dir, o);
  at::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  for (auto& p : m->named_parameters())
    if (p.key().find("w_c") != std::string::npos) p.value().normal_(0, 0.05, gen);
  m->train();
  return m;
}

at::Tensor ids_for(const std::string& arch) {
  return test::read_tensors(test::data_dir() / "models" / arch / "oracle.safetensors")["input_ids"];
}

// Autograd nodes reachable from `t` whose name mentions `what`.
int count_nodes(const at::Tensor& t, const std::string& what) {
  std::set<torch::autograd::Node*> seen;
  int n = 0;
  std::function<void(const std::shared_ptr<torch::autograd::Node>&)> walk =
      [&](const std::shared_ptr<torch::autograd::Node>& node) {
        if (!node || !seen.insert(node.get()).second) return;
        if (node->name().find(what) != std::string::npos) ++n;
        for (const auto& e : node->next_edges()) walk(e.function);
      };
  walk(t.grad_fn());
  return n;
}

struct Result {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
  int units_in_graph = 0;
};

Result run(CausalLM& m, const at::Tensor& ids, bool recompute, bool bf16) {
  m->zero_grad();
  for (auto& p : m->parameters()) p.mutable_grad().reset();
  Result r;
  at::Tensor loss;
  {
    if (bf16) {
      at::autocast::set_autocast_enabled(at::kCPU, true);
      at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    }
    ForwardOptions o;
    o.recompute = recompute;
    auto logits = m->forward(ids, nullptr, o);
    r.units_in_graph = count_nodes(logits, "UnitFunction");
    const int64_t l = ids.size(1);
    auto lg = logits.narrow(1, 0, l - 1).to(at::kDouble).reshape({-1, logits.size(-1)});
    loss = at::cross_entropy_loss(lg, ids.narrow(1, 1, l - 1).reshape({-1}));
    if (bf16) {
      at::autocast::set_autocast_enabled(at::kCPU, false);
      at::autocast::clear_cache();
    }
  }
  loss.backward();
  r.loss = loss.item<double>();
  for (auto& kv : m->named_parameters())
    if (kv.value().grad().defined()) r.grads[kv.key()] = kv.value().grad().clone();
  return r;
}

void expect_same(const Result& a, const Result& b, double rel) {
  EXPECT_NEAR(a.loss, b.loss, rel * std::abs(b.loss));
  ASSERT_EQ(a.grads.size(), b.grads.size());
  double scale = 0;
  for (const auto& [k, g] : b.grads) scale = std::max(scale, g.abs().max().item<double>());
  ASSERT_GT(scale, 0);
  double worst = 0;
  for (const auto& [k, g] : b.grads) {
    ASSERT_TRUE(a.grads.count(k)) << k << " has no gradient with recompute";
    const double d = test::max_abs_diff(a.grads.at(k), g);
    worst = std::max(worst, d);
    EXPECT_LE(d, rel * scale) << k;
  }
  std::printf("  loss %.10g vs %.10g, max grad diff %.3g (grad scale %.3g), %zu tensors\n", a.loss,
              b.loss, worst, scale, b.grads.size());
}

struct Case {
  std::string arch;
  Variant variant;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.arch << "/" << variant_name(c.variant); }
std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  return i.param.arch + "_" + variant_name(i.param.variant);
}

class Recompute : public ::testing::TestWithParam<Case> {};

TEST_P(Recompute, Fp64GradientsEqualThePlainGraph) {
  const auto& [arch, variant] = GetParam();
  auto m = load(arch, variant, at::kDouble);
  const auto ids = ids_for(arch);
  const auto plain = run(m, ids, false, false);
  const auto rc = run(m, ids, true, false);
  EXPECT_EQ(plain.units_in_graph, 0);
  EXPECT_EQ(rc.units_in_graph, static_cast<int>(checkpoint_units(m->config()).size()));
  expect_same(rc, plain, 1e-9);
}

TEST_P(Recompute, Bf16AutocastGradientsEqualThePlainGraph) {
  const auto& [arch, variant] = GetParam();
  auto m = load(arch, variant, at::kFloat);
  const auto ids = ids_for(arch);
  const auto plain = run(m, ids, false, true);
  const auto rc = run(m, ids, true, true);
  expect_same(rc, plain, 1e-6);
  // Autocast really was on: fp32 gradients differ by far more than the tolerance above.
  const auto fp32 = run(m, ids, false, false);
  double d = 0, scale = 0;
  for (const auto& [k, g] : fp32.grads) {
    d = std::max(d, test::max_abs_diff(g, plain.grads.at(k)));
    scale = std::max(scale, g.abs().max().item<double>());
  }
  EXPECT_GT(d, 1e-4 * scale);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (std::string a : {"llama", "gemma2"})
    for (Variant v : {Variant::None, Variant::UniAttn, Variant::Softmax, Variant::Cla})
      out.push_back({a, v});
  return out;
}
INSTANTIATE_TEST_SUITE_P(All, Recompute, ::testing::ValuesIn(cases()), case_name);

// A W_c-only stage: the embeddings do not require grad, so the first trained unit gets its input
// as a fresh leaf; units before the first SuperBlock train nothing and build no node.
TEST(Recompute, OnlyWcTrained) {
  for (std::string arch : {"llama", "gemma2"}) {
    SCOPED_TRACE(arch);
    auto m = load(arch, Variant::UniAttn, at::kDouble);
    for (auto& kv : m->named_parameters())
      kv.value().set_requires_grad(kv.key().find("w_c") != std::string::npos);
    const auto ids = ids_for(arch);
    const auto plain = run(m, ids, false, false);
    const auto rc = run(m, ids, true, false);
    EXPECT_EQ(plain.grads.size(), 2u);  // one follower with W_c per SuperBlock
    expect_same(rc, plain, 1e-9);
    EXPECT_LT(rc.units_in_graph, static_cast<int>(checkpoint_units(m->config()).size()));
    EXPECT_GT(rc.units_in_graph, 0);
  }
}

TEST(Recompute, UnitsSpanWholeSuperBlocks) {
  auto c = load_config(test::data_dir() / "models" / "llama");
  ASSERT_EQ(c.num_layers, 6);
  using Units = std::vector<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(checkpoint_units(c), (Units{{0, 0}, {1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 5}}));
  c.uniattn = UniAttnSpec::parse(Variant::UniAttn, "2-3;4-5", 6);
  EXPECT_EQ(checkpoint_units(c), (Units{{0, 0}, {1, 1}, {2, 3}, {4, 5}}));
  c.uniattn = UniAttnSpec::parse(Variant::Softmax, "1,3;4-5", 6);
  EXPECT_EQ(checkpoint_units(c), (Units{{0, 0}, {1, 3}, {4, 5}}));
  c.uniattn = UniAttnSpec::parse(Variant::Cla, "0,2;1,4", 6);  // interleaved: one unit
  EXPECT_EQ(checkpoint_units(c), (Units{{0, 4}, {5, 5}}));
}

TEST(Recompute, IgnoredWithoutGradModeOrWithACache) {
  auto m = load("llama", Variant::UniAttn, at::kFloat);
  const auto ids = ids_for("llama");
  ForwardOptions o;
  o.recompute = true;
  {
    at::NoGradGuard ng;
    EXPECT_LT(test::max_abs_diff(m->forward(ids, nullptr, o), m->forward(ids)), 1e-6);
  }
  KVCache cache(m->config(), ids.size(0), ids.size(1), at::kFloat, at::kCPU);
  auto out = m->forward(ids, &cache, o);
  EXPECT_EQ(count_nodes(out, "UnitFunction"), 0);
}

}  // namespace
