// The training loop: model setup (variant, SuperBlocks, W_c init), stages with their trainable
// parameter sets, AdamW + cosine schedule, gradient accumulation over micro-batches, clipping,
// NaN handling, evaluation, checkpoints and the data-parallel step (bucketed all-reduce during
// the last micro-batch's backward; ZeRO-1: each rank steps its own parameters, then broadcasts).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numbers>

#include <unistd.h>

#ifdef UNIATTN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "train/optim/fused_adamw.h"
#include "internal.h"
#include "state.h"
#include "uniattn/calib/calibrate.h"
#include "uniattn/model/checkpoint.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn {

double cosine_lr_factor(int64_t step, int64_t total, double warmup_ratio, double min_ratio) {
  const auto warm = static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total)));
  if (step < warm)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warm));
  const double progress =
      static_cast<double>(step - warm) / static_cast<double>(std::max<int64_t>(1, total - warm));
  return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

namespace {
using namespace train_detail;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

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

// The dtype the trained weights (and so their gradients and AdamW state) are held in: bf16 for
// training.precision bf16_weights; otherwise fp32 master weights (bf16 only inside autocast).
at::ScalarType weight_dtype(const TrainConfig& c) {
  return c.training.precision == "bf16_weights" ? at::kBFloat16 : at::kFloat;
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
  if (c.model.wc_init == WcInit::Random) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(c.training.seed ^ 0x5743ull);
    for (auto& kv : model->named_parameters())
      if (glob_match("*.w_c.weight", kv.key())) {
        auto w = at::empty(kv.value().sizes(), at::kFloat);
        w.normal_(0.0, c.model.wc_random_std, gen);
        kv.value().copy_(w);
      }
  } else if (c.model.wc_init == WcInit::Calibrated) {
    LoadOptions cl;
    cl.dtype = at::kFloat;
    auto calib = load_model(c.model.wc_checkpoint, cl);
    auto src = calib->named_parameters();
    int64_t n = 0;
    for (auto& kv : model->named_parameters()) {
      if (!glob_match("*.w_c.weight", kv.key())) continue;
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
      const bool m = p == "all" || (p == "wc" && glob_match("*.w_c.weight", kv.key())) ||
                     glob_match(p, kv.key());
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

// Autocast to bf16 on the model's device for the scope (fp32 runs plain).
struct AutocastScope {
  at::DeviceType type;
  bool on, prev = false;
  at::ScalarType prev_dtype = at::kBFloat16;
  AutocastScope(bool enable, at::Device d) : type(d.type()), on(enable) {
    if (!on) return;
    prev = at::autocast::is_autocast_enabled(type);
    prev_dtype = at::autocast::get_autocast_dtype(type);
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::set_autocast_dtype(type, at::kBFloat16);
  }
  ~AutocastScope() {
    if (!on) return;
    at::autocast::set_autocast_enabled(type, prev);
    at::autocast::set_autocast_dtype(type, prev_dtype);
    at::autocast::clear_cache();
  }
};

std::string fmt_time(double s) {
  char b[32];
  const auto t = static_cast<long long>(s);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(b, sizeof b, "%lldm%02llds", t / 60, t % 60);
  return b;
}

void progress_line(const StepMetrics& m, double eta, bool tty) {
  const int width = 24;
  const double frac = static_cast<double>(m.stage_step) / std::max<int64_t>(1, m.stage_steps);
  std::string bar(static_cast<size_t>(frac * width), '#');
  bar.resize(width, '.');
  std::fprintf(stderr, "%s[train] %s [%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s%s",
               tty ? "\r\033[K" : "", m.stage.c_str(), bar.c_str(),
               static_cast<long long>(m.stage_step), static_cast<long long>(m.stage_steps), m.loss,
               m.lr, m.tokens_per_s, fmt_time(eta).c_str(), tty ? "" : "\n");
  std::fflush(stderr);
}

double peak_memory_gib(const at::Device& device) {
#ifdef UNIATTN_WITH_CUDA
  if (device.is_cuda()) {
    const auto index = device.has_index() ? device.index() : c10::cuda::current_device();
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#else
  (void)device;
#endif
  return 0.0;
}

nlohmann::json metrics_json(const StepMetrics& m) {
  nlohmann::json j = {{"step", m.step},
                      {"stage", m.stage},
                      {"stage_step", m.stage_step},
                      {"lr", m.lr},
                      {"tokens", m.tokens},
                      {"tokens_per_s", m.tokens_per_s},
                      {"skipped", m.skipped},
                      {"peak_memory_gib", m.peak_memory_gib}};
  j["loss"] = std::isfinite(m.loss) ? nlohmann::json(m.loss) : nlohmann::json();
  j["grad_norm"] = std::isfinite(m.grad_norm) ? nlohmann::json(m.grad_norm) : nlohmann::json();
  j["eval_loss"] = m.eval_loss ? nlohmann::json(*m.eval_loss) : nlohmann::json();
  return j;
}

// Everything after the process group exists; train() reports a failure here to the other ranks.
TrainResult run_training(const TrainConfig& c, const TrainOptions& options, Comm& comm,
                         const at::Device device) {
  const bool cuda = device.is_cuda();
  const int64_t accum = c.training.global_batch / (c.training.micro_batch * comm.world());
  // Autocast only for "bf16"; "bf16_weights" runs on bf16 weights directly.
  const bool autocast = c.training.precision == "bf16";
  const bool rank0 = comm.rank() == 0;
  const bool zero1 = c.distributed.zero1 && comm.world() > 1;
  const fs::path out = c.output_dir;
  if (rank0) fs::create_directories(out);
  comm.barrier();

  CausalLM model = build_model(c, device);
  const int64_t vocab = model->config().vocab_size;
  const auto train_data = load_sequences(c, false, vocab, c.model.path);
  std::vector<Sequence> eval_data;
  if (!c.data.eval.empty()) eval_data = load_sequences(c, true, vocab, c.model.path);
  const int32_t pad = static_cast<int32_t>(model->config().pad_token_id.value_or(0));
  const auto n = static_cast<int64_t>(train_data.size());
  // Resolve every stage's parameter set now, so a bad glob fails before any training.
  for (size_t i = 0; i < c.stages.size(); ++i)
    stage_params(model, c.stages[i], static_cast<int64_t>(i));
  std::vector<int64_t> totals;
  for (size_t i = 0; i < c.stages.size(); ++i)
    totals.push_back(stage_total_steps(c.stages[i], n, c.training.global_batch));

  TrainState st;
  st.zero1 = zero1;
  st.weights_dtype = weight_dtype(c);
  TrainResult result;
  std::optional<fs::path> resume_dir;
  if (options.resume) resume_dir = latest_checkpoint(out);
  if (resume_dir) {
    st = read_state(*resume_dir, comm.world(), zero1);
    st.zero1 = zero1;
    // The optimiser state has the weights' dtype, and the fused kernel wants them to agree.
    const auto wd = weight_dtype(c);
    UNIATTN_CHECK(st.weights_dtype == wd, *resume_dir, ": its weights and optimizer state are ",
                  st.weights_dtype, ", but training.precision ", c.training.precision, " trains ",
                  wd,
                  " weights: resume with the precision it was written with (bf16 and fp32 share "
                  "fp32 weights; bf16_weights has bf16 ones)");
    UNIATTN_CHECK(st.stage <= static_cast<int64_t>(c.stages.size()), *resume_dir, ": stage ",
                  st.stage, " is beyond the config's ", c.stages.size(), " stages");
    load_weights(*resume_dir, model);
    result.resumed_from = st.global_step;
    if (rank0) truncate_metrics(out / "metrics.jsonl", st.global_step);
  } else if (rank0) {
    remove_tree(out / "metrics.jsonl");
  }
  if (rank0) write_text_atomic(out / "config.yaml", c.to_yaml());
  std::FILE* metrics = rank0 ? std::fopen((out / "metrics.jsonl").c_str(), "a") : nullptr;
  UNIATTN_CHECK(!rank0 || metrics, out / "metrics.jsonl", ": cannot open for writing");
  struct Closer {
    std::FILE* f;
    ~Closer() {
      if (f) std::fclose(f);
    }
  } closer{metrics};

  const bool tty = ::isatty(2) != 0;
  auto all_params = model->named_parameters();
  const auto run_eval = [&]() -> double {
    AutocastScope ac(autocast, device);
    return response_loss(model, eval_data, c.eval.batch_tokens, pad);
  };

  for (; st.stage < static_cast<int64_t>(c.stages.size()); ++st.stage, st.stage_step = 0) {
    const auto& sc = c.stages[static_cast<size_t>(st.stage)];
    const int64_t total = totals[static_cast<size_t>(st.stage)];
    const auto names = stage_params(model, sc, st.stage);
    std::vector<at::Tensor> params;
    for (auto& kv : all_params) kv.value().set_requires_grad(false);
    for (const auto& nm : names) {
      auto p = all_params[nm];
      p.set_requires_grad(true);
      p.mutable_grad().reset();
      params.push_back(p);
    }
    // ZeRO-1: rank r owns a balanced share of the parameters (greedy by size, fixed order).
    std::vector<int> owner(params.size(), comm.rank());
    if (zero1) {
      std::vector<int64_t> load(static_cast<size_t>(comm.world()), 0);
      for (size_t i = 0; i < params.size(); ++i) {
        const auto r = std::min_element(load.begin(), load.end()) - load.begin();
        owner[i] = static_cast<int>(r);
        load[static_cast<size_t>(r)] += params[i].numel();
      }
    }
    std::vector<at::Tensor> mine;
    for (size_t i = 0; i < params.size(); ++i)
      if (owner[i] == comm.rank()) mine.push_back(params[i]);
    std::unique_ptr<torch::optim::AdamW> opt;
    if (!mine.empty()) {
      const auto ao = torch::optim::AdamWOptions(sc.lr)
                          .betas({c.optimizer.beta1, c.optimizer.beta2})
                          .eps(c.optimizer.eps)
                          .weight_decay(c.optimizer.weight_decay);
      // Both keep the same state entries, so checkpoints load into either.
      if (c.optimizer.fused)
        opt = std::make_unique<FusedAdamW>(mine, ao);
      else
        opt = std::make_unique<torch::optim::AdamW>(mine, ao);
    }
    if (resume_dir && st.stage_step > 0) load_optimizer(*resume_dir, comm.rank(), opt.get());
    resume_dir.reset();
    std::unique_ptr<GradReducer> reducer;
    if (comm.world() > 1)
      reducer = std::make_unique<GradReducer>(comm, params, c.distributed.bucket_mb * (1 << 20));
    if (rank0 && st.stage_step == 0)
      std::fprintf(stderr,
                   "[train] stage %s: %zu tensors, %lld steps, lr %.2e, accumulation %lld\n",
                   sc.name.c_str(), names.size(), static_cast<long long>(total), sc.lr,
                   static_cast<long long>(accum));
    const auto stage_start = Clock::now();
    const int64_t stage_first = st.stage_step;

    while (st.stage_step < total) {
      const auto t0 = Clock::now();
      const double lr =
          sc.lr * cosine_lr_factor(st.stage_step, total, sc.warmup_ratio, sc.min_lr_ratio);
      if (opt)
        for (auto& g : opt->param_groups()) g.options().set_lr(lr);
      const auto batch = batch_indices(n, c.training.global_batch, c.training.seed, st.stage,
                                       st.stage_step, c.data.shuffle);
      // Normalise by the target tokens of the whole global batch (known on every rank), so the
      // summed gradients equal those of one process running the full batch.
      int64_t targets = 0, inputs = 0;
      for (auto i : batch) {
        targets += train_data[static_cast<size_t>(i)].target_tokens();
        inputs += static_cast<int64_t>(train_data[static_cast<size_t>(i)].ids.size());
      }
      const int64_t per_rank = c.training.global_batch / comm.world();
      const bool inject = c.debug.inject_nan_at_step == st.global_step + 1;
      UNIATTN_CHECK(
          !(c.debug.fail_at_step == st.global_step + 1 && c.debug.fail_rank == comm.rank()),
          "debug.fail_at_step: injected failure at step ", st.global_step + 1);
      double local_sum = 0.0;
      if (reducer)
        reducer->zero_grad();
      else
        for (auto& p : params) p.mutable_grad().reset();
      for (int64_t m = 0; m < accum; ++m) {
        const auto first = batch.begin() + comm.rank() * per_rank + m * c.training.micro_batch;
        std::vector<int64_t> idx(first, first + c.training.micro_batch);
        at::Tensor ids, mask;
        collate(train_data, idx, pad, ids, mask);
        ids = ids.to(device);
        mask = mask.to(device);
        if (reducer) reducer->arm(m == accum - 1);
        at::Tensor loss;
        {
          AutocastScope ac(autocast, device);
          ForwardOptions fo;
          fo.recompute = c.training.activation_checkpointing;
          auto logits = model->forward(ids, nullptr, fo);
          const auto l = ids.size(1);
          // Position i predicts ids[i + 1]; the last one predicts nothing (a dummy target with
          // weight 0). Scoring all l positions keeps the logits contiguous, so the fp32 cast and
          // its backward are single vectorised copies (narrowing first cost two strided copies,
          // 1.8 ms per step on the LLaMA-8B slice, ncu-train-llama8b-slice-h100.json).
          auto lg = logits.to(at::kFloat).reshape({-1, vocab});
          auto tgt = at::roll(ids, {-1}, {1}).reshape({-1});
          auto weight = at::constant_pad_nd(mask.narrow(1, 1, l - 1), {0, 1}).reshape({-1});
          auto ce = at::cross_entropy_loss(lg, tgt, {}, at::Reduction::None);
          auto sum = (ce * weight).sum();
          if (inject) sum = sum * std::numeric_limits<double>::quiet_NaN();
          loss = sum / static_cast<double>(targets);
          local_sum += sum.item<double>();
        }
        loss.backward();
      }
      if (reducer) reducer->finish();
      // One all-reduce carries the loss and the stop request (any rank's signal stops all).
      const bool want_stop =
          (options.stop && options.stop->load()) ||
          (c.debug.stop_after_steps > 0 && st.global_step + 1 >= c.debug.stop_after_steps);
      auto sync = at::tensor({local_sum, want_stop ? 1.0 : 0.0}, at::kDouble);
      if (cuda) sync = sync.to(device);
      comm.allreduce_sum(sync);
      sync = sync.cpu();
      const double loss_v = sync[0].item<double>() / static_cast<double>(targets);
      const bool stop_now = sync[1].item<double>() > 0;
      double gnorm = 0.0;
      {
        // Every rank holds the full summed gradients, so the norm (and the clip) agree.
        at::NoGradGuard ng;
        gnorm =
            clip_grad_norm_foreach(params, c.training.grad_clip > 0 ? c.training.grad_clip : 1e30);
      }
      StepMetrics mt;
      mt.step = st.global_step + 1;
      mt.stage = sc.name;
      mt.stage_step = st.stage_step + 1;
      mt.stage_steps = total;
      mt.loss = loss_v;
      mt.lr = lr;
      mt.grad_norm = gnorm;
      if (!std::isfinite(loss_v) || !std::isfinite(gnorm)) {
        if (c.training.nan_policy == "stop")
          fail("non-finite loss (", loss_v, ", grad norm ", gnorm, ") at step ", mt.step,
               " (stage ", sc.name, ", step ", mt.stage_step, " of ", total,
               "); lower the learning rate or set training.nan_policy: skip");
        mt.skipped = true;
        for (auto& p : params) p.mutable_grad().reset();
        if (rank0)
          std::fprintf(stderr, "\n[train] step %lld: non-finite loss, update skipped\n",
                       static_cast<long long>(mt.step));
      } else {
        if (opt) opt->step();
        if (zero1) {
          // Each owner broadcasts its updated parameters, coalesced into one flat tensor.
          at::NoGradGuard ng;
          for (int r = 0; r < comm.world(); ++r) {
            std::vector<at::Tensor> group;
            for (size_t i = 0; i < params.size(); ++i)
              if (owner[i] == r) group.push_back(params[i].detach().reshape({-1}));
            if (group.empty()) continue;
            auto flat = at::cat(group);
            comm.broadcast(flat, r);
            int64_t off = 0;
            for (size_t i = 0; i < params.size(); ++i)
              if (owner[i] == r) {
                params[i].detach().copy_(
                    flat.narrow(0, off, params[i].numel()).view(params[i].sizes()));
                off += params[i].numel();
              }
          }
        }
        st.tokens += targets;
        st.last_loss = loss_v;
      }
      ++st.global_step;
      ++st.stage_step;
      mt.tokens = st.tokens;
      mt.peak_memory_gib = peak_memory_gib(device);
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      mt.tokens_per_s = static_cast<double>(inputs) / std::max(dt, 1e-9);
      const bool stage_end = st.stage_step == total;
      if (!eval_data.empty() &&
          ((c.eval.every_steps > 0 && st.global_step % c.eval.every_steps == 0) || stage_end))
        mt.eval_loss = run_eval();
      if (rank0) {
        if (st.global_step % c.training.log_every == 0 || stage_end || mt.eval_loss) {
          std::fprintf(metrics, "%s\n", metrics_json(mt).dump().c_str());
          std::fflush(metrics);
        }
        if (c.training.progress) {
          const double el = std::chrono::duration<double>(Clock::now() - stage_start).count();
          const double eta = el / static_cast<double>(st.stage_step - stage_first) *
                             static_cast<double>(total - st.stage_step);
          progress_line(mt, eta, tty);
        }
        if (options.on_step) options.on_step(mt);
      }
      result.last_loss = loss_v;
      const bool periodic =
          c.checkpoint.every_steps > 0 && st.global_step % c.checkpoint.every_steps == 0;
      if (stop_now || periodic || stage_end) {
        TrainState snap = st;
        if (stage_end) {
          // A finished stage resumes at the next one with a fresh optimiser.
          snap.stage = st.stage + 1;
          snap.stage_step = 0;
        }
        save_checkpoint(out, snap, model, stage_end ? nullptr : opt.get(), comm,
                        c.checkpoint.keep_last);
      }
      if (stop_now) {
        if (rank0)
          std::fprintf(stderr, "\n[train] stopped after step %lld; checkpoint saved in %s\n",
                       static_cast<long long>(st.global_step), (out / "checkpoints").c_str());
        result.interrupted = true;
        result.steps = st.global_step;
        return result;
      }
    }
    if (rank0 && c.training.progress && tty) std::fprintf(stderr, "\n");
  }
  result.steps = st.global_step;
  result.final_model = out / "final";
  if (rank0) {
    const at::ScalarType sd = c.checkpoint.save_dtype == "bf16"  ? at::kBFloat16
                              : c.checkpoint.save_dtype == "f16" ? at::kHalf
                                                                 : at::kFloat;
    save_model(model, result.final_model, sd);
    if (c.data.format == "text") {
      try {
        load_tokenizer(c.data.tokenizer.empty() ? c.model.path : c.data.tokenizer)
            ->save(result.final_model);
      } catch (const Error& e) {
        std::fprintf(stderr, "[train] warning: tokenizer not copied: %s\n", e.what());
      }
    }
  }
  comm.barrier();
  return result;
}

}  // namespace

TrainResult train(const TrainConfig& c, const TrainOptions& options) {
  const DistEnv& env = options.dist;
  const at::Device device = pick_device(c.training.device, env);
  UNIATTN_CHECK(c.training.global_batch % (c.training.micro_batch * env.world_size) == 0,
                "training.global_batch (", c.training.global_batch,
                ") must be a multiple of micro_batch x world size (", c.training.micro_batch, " x ",
                env.world_size, ")");
  // Each rank's own GPU is its current device, for the main thread's allocations and for NCCL
  // (otherwise every rank would also open a context on GPU 0).
#ifdef UNIATTN_WITH_CUDA
  if (device.is_cuda()) c10::cuda::set_device(device.index());
#endif
  Comm comm(env, c.distributed.backend, device.is_cuda(), c.distributed.timeout_s);
  try {
    return run_training(c, options, comm, device);
  } catch (const std::exception& e) {
    if (const auto first = comm.report_failure(e.what()))
      fail(*first, " (rank ", comm.rank(), " then stopped with: ", e.what(), ")");
    throw;
  }
}

}  // namespace uniattn
