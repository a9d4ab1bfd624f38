// Set-up of a training run (device, model with its W_c initialisation, data, stage lengths) and of
// each stage (trainable parameters, ZeRO-1 ownership, AdamW, gradient reducer).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "components.h"
#include "fingerprint.h"
#include "train/optim/fused_adamw.h"
#include "uniattn/error.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn::train_detail {
namespace {
namespace fs = std::filesystem;

bool is_wc(const std::string& name) { return glob_match("*.w_c.weight", name); }

void init_wc_random(CausalLM& model, const TrainConfig& c) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(c.training.seed ^ 0x5743ull);
  for (auto& kv : model->named_parameters())
    if (is_wc(kv.key())) {
      // Drawn in fp32 on the CPU, so the values do not depend on the device or weight dtype.
      auto w = at::empty(kv.value().sizes(), at::kFloat);
      w.normal_(0.0, c.model.wc_random_std, gen);
      kv.value().copy_(w);
    }
}

void init_wc_calibrated(CausalLM& model, const TrainConfig& c) {
  LoadOptions cl;
  cl.dtype = at::kFloat;
  auto calib = load_model(c.model.wc_checkpoint, cl);
  auto src = calib->named_parameters();
  int64_t n = 0;
  for (auto& kv : model->named_parameters()) {
    if (!is_wc(kv.key())) continue;
    const auto* s = src.find(kv.key());
    UNIATTN_CHECK(s, c.model.wc_checkpoint, ": has no ", kv.key(),
                  " (its SuperBlocks differ from model.superblocks?)");
    UNIATTN_CHECK(s->sizes() == kv.value().sizes(), c.model.wc_checkpoint, ": ", kv.key(),
                  " has shape ", s->sizes(), ", expected ", kv.value().sizes());
    kv.value().copy_(*s);
    ++n;
  }
  UNIATTN_CHECK(n > 0, "model.wc_checkpoint: the model has no W_c to initialise");
}

CausalLM build_model(const TrainConfig& c, at::Device device) {
  LoadOptions lo;
  lo.dtype = weight_dtype(c);
  lo.device = device;
  if (c.model.variant != "none") {
    const auto mc = load_config(c.model.path);
    lo.uniattn =
        UniAttnSpec::parse(parse_variant(c.model.variant), c.model.superblocks, mc.num_layers);
  }
  CausalLM model = load_model(c.model.path, lo);
  at::NoGradGuard ng;
  if (c.model.wc_init == WcInit::Random)
    init_wc_random(model, c);
  else if (c.model.wc_init == WcInit::Calibrated)
    init_wc_calibrated(model, c);
  return model;
}

// Parameter names a stage trains, in registration order.
std::vector<std::string> stage_params(CausalLM& model, const TrainStageConfig& s, int64_t index) {
  std::vector<std::string> names;
  std::vector<bool> used(s.params.size(), false);
  for (auto& kv : model->named_parameters()) {
    bool take = false;
    for (size_t i = 0; i < s.params.size(); ++i) {
      const auto& p = s.params[i];
      const bool m = p == "all" || (p == "wc" && is_wc(kv.key())) || glob_match(p, kv.key());
      if (m) used[i] = true;
      take |= m;
    }
    if (take) names.push_back(kv.key());
  }
  for (size_t i = 0; i < s.params.size(); ++i)
    UNIATTN_CHECK(used[i], "stages[", index, "].params: '", s.params[i],
                  "' matches no parameter of the model");
  return names;
}

int64_t stage_total_steps(const TrainStageConfig& s, int64_t n, int64_t global_batch) {
  if (s.steps > 0) return s.steps;
  const int64_t per_epoch = n / global_batch;
  UNIATTN_CHECK(per_epoch > 0, "the training data has ", n,
                " sequences, fewer than training.global_batch (", global_batch, ")");
  return std::max<int64_t>(1, std::llround(s.epochs * static_cast<double>(per_epoch)));
}

// Freezes the model but for `names`, whose gradients are dropped; returns those parameters.
std::vector<at::Tensor> make_trainable(CausalLM& model, const std::vector<std::string>& names) {
  auto all_params = model->named_parameters();
  for (auto& kv : all_params) kv.value().set_requires_grad(false);
  std::vector<at::Tensor> params;
  for (const auto& nm : names) {
    auto p = all_params[nm];
    p.set_requires_grad(true);
    p.mutable_grad().reset();
    params.push_back(p);
  }
  return params;
}

// ZeRO-1: rank r owns a balanced share of the parameters (greedy by size, fixed order, so every
// rank computes the same split). Without ZeRO-1 this rank owns them all.
std::vector<int> parameter_owners(const std::vector<at::Tensor>& params, const Comm& comm,
                                  bool zero1) {
  std::vector<int> owner(params.size(), comm.rank());
  if (!zero1) return owner;
  std::vector<int64_t> load(static_cast<size_t>(comm.world()), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    const auto r = std::min_element(load.begin(), load.end()) - load.begin();
    owner[i] = static_cast<int>(r);
    load[static_cast<size_t>(r)] += params[i].numel();
  }
  return owner;
}

// AdamW over the parameters this rank owns; null when it owns none.
std::unique_ptr<torch::optim::AdamW> make_optimizer(const TrainConfig& c,
                                                    const TrainStageConfig& sc,
                                                    const StageTraining& stage, int rank) {
  std::vector<at::Tensor> mine;
  for (size_t i = 0; i < stage.params.size(); ++i)
    if (stage.owner[i] == rank) mine.push_back(stage.params[i]);
  if (mine.empty()) return nullptr;
  const auto ao = torch::optim::AdamWOptions(sc.lr)
                      .betas({c.optimizer.beta1, c.optimizer.beta2})
                      .eps(c.optimizer.eps)
                      .weight_decay(c.optimizer.weight_decay);
  // Both keep the same state entries, so checkpoints load into either.
  if (c.optimizer.fused) return std::make_unique<FusedAdamW>(mine, ao);
  return std::make_unique<torch::optim::AdamW>(mine, ao);
}

}  // namespace

at::Device pick_device(const std::string& d, const DistEnv& env) {
  if (d == "cpu") return at::kCPU;
  if (d == "auto") {
    if (!torch::cuda::is_available()) return at::kCPU;
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  UNIATTN_CHECK(torch::cuda::is_available(), "training.device ", d, ": no CUDA device");
  if (d == "cuda") return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  return at::Device(d);
}

at::ScalarType weight_dtype(const TrainConfig& c) {
  return c.training.precision == "bf16_weights" ? at::kBFloat16 : at::kFloat;
}

Run::Run(const TrainConfig& config, const TrainOptions& opts, Comm& process_group, at::Device dev)
    : c(config),
      options(opts),
      comm(process_group),
      device(dev),
      rank0(process_group.rank() == 0),
      zero1(config.distributed.zero1 && process_group.world() > 1),
      autocast(config.training.precision == "bf16"),
      accum(config.training.global_batch / (config.training.micro_batch * process_group.world())),
      out(config.output_dir) {}

Run set_up_run(const TrainConfig& c, const TrainOptions& options, Comm& comm, at::Device device) {
  Run run(c, options, comm, device);
  if (run.rank0) fs::create_directories(run.out);
  comm.barrier();
  run.model = build_model(c, device);
  run.vocab = run.model->config().vocab_size;
  if (c.distill) {
    run.teacher = std::make_unique<Teacher>(c, device, run.model);
    run.followers = follower_layers(run.model);
  }
  run.train_data = load_sequences(c, false, run.vocab, c.model.path);
  if (!c.data.eval.empty()) run.eval_data = load_sequences(c, true, run.vocab, c.model.path);
  run.pad = static_cast<int32_t>(run.model->config().pad_token_id.value_or(0));
  const auto n = static_cast<int64_t>(run.train_data.size());
  // Resolve every stage's parameter set now, so a bad glob fails before any training.
  for (size_t i = 0; i < c.stages.size(); ++i)
    stage_params(run.model, c.stages[i], static_cast<int64_t>(i));
  for (const auto& stage : c.stages)
    run.stage_steps.push_back(stage_total_steps(stage, n, c.training.global_batch));
  run.fingerprint = run_fingerprint(c).dump();
  return run;
}

StageTraining set_up_stage(Run& run, const TrainState& st,
                           const std::optional<fs::path>& resume_from) {
  const auto index = static_cast<size_t>(st.stage);
  StageTraining stage(run.c.stages[index], run.stage_steps[index]);
  const auto& sc = stage.config;
  stage.params = make_trainable(run.model, stage_params(run.model, sc, st.stage));
  stage.owner = parameter_owners(stage.params, run.comm, run.zero1);
  stage.opt = make_optimizer(run.c, sc, stage, run.comm.rank());
  if (resume_from) load_optimizer(*resume_from, run.comm.rank(), stage.opt.get());
  if (run.comm.world() > 1)
    stage.reducer = std::make_unique<GradReducer>(run.comm, stage.params,
                                                  run.c.distributed.bucket_mb * (1 << 20));
  if (run.rank0 && st.stage_step == 0) {
    std::fprintf(stderr, "[train] stage %s: %zu tensors, %lld steps, lr %.2e, accumulation %lld",
                 sc.name.c_str(), stage.params.size(), static_cast<long long>(stage.total_steps),
                 sc.lr, static_cast<long long>(run.accum));
    if (run.teacher && sc.distill)
      std::fprintf(stderr, ", distilling from %s (weight %.3g, temperature %.3g)",
                   run.c.distill->teacher.c_str(), run.c.distill->weight,
                   run.c.distill->temperature);
    std::fprintf(stderr, "\n");
  }
  return stage;
}

}  // namespace uniattn::train_detail
