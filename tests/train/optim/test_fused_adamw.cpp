// FusedAdamW (at::_fused_adamw_) against LibTorch's per-tensor torch::optim::AdamW on CPU: same
// parameters and state over steps with weight decay, changing learning rates and a parameter
// that misses a gradient; optimiser state saved by either loads into the other and continues
// identically; clip_grad_norm_foreach against torch::nn::utils::clip_grad_norm_. bf16 parameters
// (training.precision bf16_weights): the fused step against AdamW run in fp32 on the same values
// and rounded, and the clip's norm against an fp64 norm of the bf16 gradients.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cmath>
#include <sstream>

#include "model/model_test_util.h"
#include "train/optim/fused_adamw.h"

using namespace uniattn;

namespace {

std::vector<at::Tensor> make_params(uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<at::Tensor> ps;
  for (auto shape : std::vector<std::vector<int64_t>>{{7, 5}, {13}, {3, 4, 2}, {1}}) {
    auto p = at::empty(shape, at::kFloat);
    p.normal_(0, 1, gen);
    ps.push_back(p.requires_grad_(true));
  }
  return ps;
}

std::vector<at::Tensor> clone_params(const std::vector<at::Tensor>& src) {
  std::vector<at::Tensor> out;
  for (const auto& p : src) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

// Deterministic gradients for step `step`; parameter 2 gets none at step 2 (AdamW skips it, so
// its step count falls behind the others').
void set_grads(std::vector<at::Tensor>& ps, int step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + step);
  for (size_t i = 0; i < ps.size(); ++i) {
    if (i == 2 && step == 2) {
      ps[i].mutable_grad().reset();
      continue;
    }
    auto g = at::empty(ps[i].sizes(), at::kFloat);
    g.normal_(0, 0.5 + static_cast<double>(i), gen);
    ps[i].mutable_grad() = g;
  }
}

const double kLrs[] = {1e-2, 3e-3, 5e-2, 2e-2, 7e-3, 1e-2, 4e-3};

void step_with_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) g.options().set_lr(lr);
  opt.step();
}

double max_param_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, test::max_abs_diff(a[i], b[i]));
  return d;
}

torch::optim::AdamWOptions options(bool amsgrad) {
  return torch::optim::AdamWOptions(1e-2)
      .betas({0.9, 0.99})
      .eps(1e-8)
      .weight_decay(0.1)
      .amsgrad(amsgrad);
}

class FusedVsPerTensor : public ::testing::TestWithParam<bool> {};

TEST_P(FusedVsPerTensor, FiveStepsMatch) {
  const bool amsgrad = GetParam();
  auto ref = make_params(1), fused = clone_params(ref);
  const auto init = clone_params(ref);
  torch::optim::AdamW a(ref, options(amsgrad));
  FusedAdamW b(fused, options(amsgrad));
  for (int s = 0; s < 5; ++s) {
    set_grads(ref, s);
    set_grads(fused, s);
    step_with_lr(a, kLrs[s]);
    step_with_lr(b, kLrs[s]);
    const double d = max_param_diff(ref, fused);
    std::printf("step %d: max |param diff| %.3g\n", s + 1, d);
    EXPECT_LE(d, 1e-6) << "step " << s + 1;
  }
  // The parameters did move (weight decay and updates), and the state agrees entry by entry.
  EXPECT_GT(max_param_diff(ref, init), 1e-2);
  for (size_t i = 0; i < ref.size(); ++i) {
    auto& sa =
        static_cast<torch::optim::AdamWParamState&>(*a.state().at(ref[i].unsafeGetTensorImpl()));
    auto& sb =
        static_cast<torch::optim::AdamWParamState&>(*b.state().at(fused[i].unsafeGetTensorImpl()));
    EXPECT_EQ(sa.step(), sb.step()) << i;
    EXPECT_EQ(sb.step(), i == 2 ? 4 : 5) << i;
    EXPECT_LE(test::max_abs_diff(sa.exp_avg(), sb.exp_avg()), 1e-6) << i;
    EXPECT_LE(test::max_abs_diff(sa.exp_avg_sq(), sb.exp_avg_sq()), 1e-6) << i;
    if (amsgrad) {
      EXPECT_LE(test::max_abs_diff(sa.max_exp_avg_sq(), sb.max_exp_avg_sq()), 1e-6);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Amsgrad, FusedVsPerTensor, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "amsgrad" : "plain"; });

std::string save_state(const torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive ar;
  opt.save(ar);
  std::ostringstream os;
  ar.save_to(os);
  return os.str();
}

void load_state(torch::optim::Optimizer& opt, const std::string& bytes) {
  torch::serialize::InputArchive ar;
  std::istringstream is(bytes);
  ar.load_from(is);
  opt.load(ar);
}

// Three steps, save, then two more: the original and optimisers of either kind restored from the
// saved state (on copies of the parameters at the save point) end up identical.
TEST(FusedAdamW, SaveLoadRoundTripAcrossKinds) {
  auto ps = make_params(2);
  FusedAdamW opt(ps, options(false));
  for (int s = 0; s < 3; ++s) {
    set_grads(ps, s);
    step_with_lr(opt, kLrs[s]);
  }
  const std::string saved = save_state(opt);
  auto p_fused = clone_params(ps), p_ref = clone_params(ps), p_fresh = clone_params(ps);
  FusedAdamW fused(p_fused, options(false)), fresh(p_fresh, options(false));
  torch::optim::AdamW ref(p_ref, options(false));
  load_state(fused, saved);
  load_state(ref, saved);
  for (int s = 3; s < 5; ++s) {
    for (auto* v : {&ps, &p_fused, &p_ref, &p_fresh}) set_grads(*v, s);
    for (torch::optim::Optimizer* o :
         std::initializer_list<torch::optim::Optimizer*>{&opt, &fused, &ref, &fresh})
      step_with_lr(*o, kLrs[s]);
  }
  EXPECT_LE(max_param_diff(ps, p_fused), 1e-6);
  EXPECT_LE(max_param_diff(ps, p_ref), 1e-6);
  // Without the state the moments and bias corrections restart: the load mattered.
  EXPECT_GT(max_param_diff(ps, p_fresh), 1e-4);
  EXPECT_EQ(static_cast<torch::optim::AdamWParamState&>(
                *fused.state().at(p_fused[0].unsafeGetTensorImpl()))
                .step(),
            5);
  // And the per-tensor optimiser's state loads into the fused one.
  auto p_back = clone_params(p_ref);
  FusedAdamW back(p_back, options(false));
  load_state(back, save_state(ref));
  set_grads(p_back, 5);
  set_grads(p_ref, 5);
  step_with_lr(back, kLrs[5]);
  step_with_lr(ref, kLrs[5]);
  EXPECT_LE(max_param_diff(p_back, p_ref), 1e-6);
}

TEST(ClipGradNormForeach, EqualsTorchClipGradNorm) {
  for (double max_norm : {0.5, 3.0, 1e30}) {
    SCOPED_TRACE(max_norm);
    auto a = make_params(3), b = clone_params(a);
    set_grads(a, 2);  // parameter 2 has no gradient
    set_grads(b, 2);
    const double na = torch::nn::utils::clip_grad_norm_(a, max_norm);
    const double nb = clip_grad_norm_foreach(b, max_norm);
    EXPECT_NEAR(nb, na, 1e-6 * na);
    EXPECT_GT(na, 1.0);
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].grad().defined(), b[i].grad().defined());
      if (a[i].grad().defined()) {
        EXPECT_LE(test::max_abs_diff(a[i].grad(), b[i].grad()), 1e-6);
      }
    }
    if (max_norm < na) {
      double total = 0;
      for (auto& p : b)
        if (p.grad().defined()) total += p.grad().pow(2).sum().item<double>();
      EXPECT_NEAR(std::sqrt(total), max_norm, 1e-5);
    }
  }
  auto none = make_params(4);
  EXPECT_EQ(clip_grad_norm_foreach(none, 1.0), 0.0);
  auto nan = make_params(5);
  set_grads(nan, 0);
  nan[1].mutable_grad()[0] = std::nan("");
  EXPECT_TRUE(std::isnan(clip_grad_norm_foreach(nan, 1.0)));
}

// bf16 parameters, gradients and state: the kernel computes in fp32 and rounds what it stores, so
// five steps match per-tensor AdamW on fp32 copies (same values, rounded to bf16 after each step,
// as the bf16 state is) to within bf16 rounding of the result.
TEST(FusedAdamWBf16, MatchesFp32AdamWRoundedEachStep) {
  auto ref = make_params(11);
  std::vector<at::Tensor> bf;
  for (auto& p : ref) {
    at::NoGradGuard ng;
    p.copy_(p.to(at::kBFloat16).to(at::kFloat));  // start from bf16-representable values
    bf.push_back(p.detach().to(at::kBFloat16).requires_grad_(true));
  }
  const auto init = clone_params(ref);
  torch::optim::AdamW a(ref, options(false));
  FusedAdamW b(bf, options(false));
  for (int s = 0; s < 5; ++s) {
    set_grads(ref, s);
    for (size_t i = 0; i < ref.size(); ++i) {
      if (ref[i].grad().defined()) {
        // Both see the bf16 gradient.
        ref[i].mutable_grad() = ref[i].grad().to(at::kBFloat16).to(at::kFloat);
        bf[i].mutable_grad() = ref[i].grad().to(at::kBFloat16);
      } else {
        bf[i].mutable_grad().reset();
      }
    }
    step_with_lr(a, kLrs[s]);
    step_with_lr(b, kLrs[s]);
    at::NoGradGuard ng;
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_EQ(bf[i].scalar_type(), at::kBFloat16);
      // Same inputs (the reference takes the bf16 state below), so only the rounding of the
      // result differs: half a bf16 ulp, at most 2^-8 of the value, plus fp32 noise.
      const auto diff = (bf[i].to(at::kFloat) - ref[i]).abs();
      const auto tol = ref[i].abs() * (1.0 / 256) + 1e-6;
      EXPECT_TRUE((diff <= tol).all().item<bool>())
          << "step " << s + 1 << " param " << i << ": max diff " << diff.max().item<double>();
      // The reference carries the bf16 rounding forward, as the bf16 weights do.
      ref[i].copy_(bf[i].to(at::kFloat));
      auto& sa =
          static_cast<torch::optim::AdamWParamState&>(*a.state().at(ref[i].unsafeGetTensorImpl()));
      auto& sb =
          static_cast<torch::optim::AdamWParamState&>(*b.state().at(bf[i].unsafeGetTensorImpl()));
      EXPECT_EQ(sb.exp_avg().scalar_type(), at::kBFloat16);
      sa.exp_avg().copy_(sb.exp_avg().to(at::kFloat));
      sa.exp_avg_sq().copy_(sb.exp_avg_sq().to(at::kFloat));
    }
  }
  EXPECT_GT(max_param_diff(ref, init), 1e-2);
}

// The clip folded into the fused kernel (grad_clip_coefficient + step_clipped) moves the
// parameters as clipping first and stepping after does, over steps where the clip bites, where it
// does not, and where a parameter has no gradient; grad_clip_coefficient leaves the gradients.
TEST(FusedAdamW, StepClippedEqualsClipThenStep) {
  auto a = make_params(21), b = clone_params(a);
  FusedAdamW clipped_first(a, options(false)), folded(b, options(false));
  for (int step = 0; step < 5; ++step) {
    SCOPED_TRACE(step);
    const double max_norm = step == 3 ? 1e30 : 0.7;
    set_grads(a, step);
    set_grads(b, step);
    const double na = clip_grad_norm_foreach(a, max_norm);
    std::vector<at::Tensor> before;
    for (auto& p : b) before.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
    const auto clip = grad_clip_coefficient(b, max_norm);
    EXPECT_NEAR(clip.norm, na, 1e-6 * na);
    EXPECT_EQ(clip.coef.defined(), step != 3);
    for (size_t i = 0; i < b.size(); ++i) {
      if (before[i].defined()) {
        EXPECT_TRUE(at::equal(before[i], b[i].grad()));
      }
    }
    for (auto* o : {&clipped_first, &folded})
      for (auto& g : o->param_groups()) g.options().set_lr(kLrs[step]);
    clipped_first.step();
    folded.step_clipped(clip.coef);
    EXPECT_LE(max_param_diff(a, b), 1e-6);
  }
  // The folded clip mattered: an unclipped run ends elsewhere.
  auto c = make_params(21);
  FusedAdamW unclipped(c, options(false));
  for (int step = 0; step < 5; ++step) {
    set_grads(c, step);
    step_with_lr(unclipped, kLrs[step]);
  }
  EXPECT_GT(max_param_diff(b, c), 1e-4);
}

TEST(ClipGradNormForeach, Bf16GradientsGetAnFp32Norm) {
  auto ps = make_params(12);
  std::vector<at::Tensor> bf;
  for (auto& p : ps) bf.push_back(p.detach().to(at::kBFloat16).requires_grad_(true));
  set_grads(ps, 3);
  double sq = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    bf[i].mutable_grad() = ps[i].grad().to(at::kBFloat16);
    sq += bf[i].grad().to(at::kDouble).pow(2).sum().item<double>();
  }
  const double expected = std::sqrt(sq);
  // A bf16 norm would be off by up to 2^-9 relative; fp32 accumulation is far closer.
  EXPECT_NEAR(clip_grad_norm_foreach(bf, 1e30), expected, 1e-5 * expected);
  const double n = clip_grad_norm_foreach(bf, 0.5);
  EXPECT_NEAR(n, expected, 1e-5 * expected);
  double after = 0;
  for (auto& p : bf) {
    EXPECT_EQ(p.grad().scalar_type(), at::kBFloat16);
    after += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  }
  EXPECT_NEAR(std::sqrt(after), 0.5, 0.5 * 4e-3);  // each gradient rounded to bf16 again
}

}  // namespace
