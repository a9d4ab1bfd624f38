// Rank 0's view of training: metrics.jsonl, the progress line with its ETA, options.on_step.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include <unistd.h>

#ifdef UNIATTN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "components.h"
#include "uniattn/error.h"

namespace uniattn::train_detail {
namespace {
using Clock = std::chrono::steady_clock;

std::string fmt_time(double s) {
  char b[32];
  const auto t = static_cast<long long>(s);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(b, sizeof b, "%lldm%02llds", t / 60, t % 60);
  return b;
}

// On a terminal the line redraws itself; in a log file each step gets its own line.
void progress_line(const StepMetrics& m, double eta, bool tty) {
  const int width = 24;
  const double frac = static_cast<double>(m.stage_step) / std::max<int64_t>(1, m.stage_steps);
  std::string bar(static_cast<size_t>(frac * width), '#');
  bar.resize(width, '.');
  // With distillation the parts follow the total: "loss 2.1 (ce 2.4 kl 0.31)".
  std::string parts;
  char b[96];
  if (m.ce && m.kl) {
    std::snprintf(b, sizeof b, " (ce %.4f kl %.4f", *m.ce, *m.kl);
    parts = b;
    if (m.mse) {
      std::snprintf(b, sizeof b, " mse %.3g", *m.mse);
      parts += b;
    }
    parts += ")";
  }
  std::fprintf(stderr, "%s[train] %s [%s] %lld/%lld loss %.4f%s lr %.2e %.0f tok/s ETA %s%s",
               tty ? "\r\033[K" : "", m.stage.c_str(), bar.c_str(),
               static_cast<long long>(m.stage_step), static_cast<long long>(m.stage_steps), m.loss,
               parts.c_str(), m.lr, m.tokens_per_s, fmt_time(eta).c_str(), tty ? "" : "\n");
  std::fflush(stderr);
}

// One line of metrics.jsonl; JSON has no NaN or infinity, so a non-finite value is null.
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
  // Distillation's parts of the loss: only in stages that distil.
  const auto opt = [](const std::optional<double>& v) {
    return std::isfinite(*v) ? nlohmann::json(*v) : nlohmann::json();
  };
  if (m.ce) j["ce"] = opt(m.ce);
  if (m.kl) j["kl"] = opt(m.kl);
  if (m.mse) j["mse"] = opt(m.mse);
  return j;
}

}  // namespace

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

Reporter::Reporter(const Run& run) : run_(run), tty_(::isatty(2) != 0) {
  if (!run.rank0) return;
  const auto file = run.out / "metrics.jsonl";
  metrics_ = std::fopen(file.c_str(), "a");
  UNIATTN_CHECK(metrics_, file, ": cannot open for writing");
}

Reporter::~Reporter() {
  if (metrics_) std::fclose(metrics_);
}

void Reporter::stage_started(int64_t first_step) {
  stage_start_ = Clock::now();
  stage_first_ = first_step;
}

void Reporter::step_done(const StepMetrics& m) {
  if (!run_.rank0) return;
  const auto& c = run_.c;
  const bool stage_end = m.stage_step == m.stage_steps;
  if (m.step % c.training.log_every == 0 || stage_end || m.eval_loss) {
    std::fprintf(metrics_, "%s\n", metrics_json(m).dump().c_str());
    std::fflush(metrics_);
  }
  if (c.training.progress) {
    // The mean step time of this run of the stage (resumed steps took none of it).
    const double el = std::chrono::duration<double>(Clock::now() - stage_start_).count();
    const double eta = el / static_cast<double>(m.stage_step - stage_first_) *
                       static_cast<double>(m.stage_steps - m.stage_step);
    progress_line(m, eta, tty_);
  }
  if (run_.options.on_step) run_.options.on_step(m);
}

void Reporter::stage_done() {
  // Ends the stage's redrawn progress line.
  if (run_.rank0 && run_.c.training.progress && tty_) std::fprintf(stderr, "\n");
}

void Reporter::stopped(int64_t global_step) {
  if (run_.rank0)
    std::fprintf(stderr, "\n[train] stopped after step %lld; checkpoint saved in %s\n",
                 static_cast<long long>(global_step), (run_.out / "checkpoints").c_str());
}

}  // namespace uniattn::train_detail
