// When the trainer checkpoints and how it resumes: the checks that a resume continues the same run
// (its fingerprint, fingerprint.h), the record of the config in output_dir, and the checkpoint
// cadence. The checkpoint format itself is state.cpp's.
#include <torch/optim/adamw.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>

#include "components.h"
#include "fingerprint.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn::train_detail {
namespace {
namespace fs = std::filesystem;

std::string bullet_list(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += "\n  - " + l;
  return s;
}

// The result-changing differences between the checkpoint's fingerprint and this run's; throws
// listing them unless options.allow_changed_config.
std::vector<std::string> check_fingerprint(const Run& run, const TrainState& st,
                                           const fs::path& dir) {
  if (st.fingerprint.empty()) {
    if (run.rank0)
      std::fprintf(stderr,
                   "[train] warning: %s has no fingerprint (written by an older uniattn): its "
                   "config, data and model cannot be compared with this run's\n",
                   dir.c_str());
    return {};
  }
  std::vector<std::string> changes;
  try {
    changes = fingerprint_changes(nlohmann::json::parse(st.fingerprint),
                                  nlohmann::json::parse(run.fingerprint));
  } catch (const nlohmann::json::exception& e) {
    fail(dir / "state.json", ": malformed fingerprint: ", e.what());
  }
  if (changes.empty()) return changes;
  UNIATTN_CHECK(run.options.allow_changed_config, "cannot resume from ", dir,
                ": this run's inputs differ from those it was trained with:", bullet_list(changes),
                "\nRestore them, use another output_dir (or uniattn-train --fresh) to start over, "
                "or continue with the change recorded in config_history.jsonl: uniattn-train "
                "--allow-changed-config (TrainOptions::allow_changed_config)");
  if (run.rank0)
    std::fprintf(stderr, "[train] resuming step %lld with changed inputs (allowed):%s\n",
                 static_cast<long long>(st.global_step), bullet_list(changes).c_str());
  return changes;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

void append_line(const fs::path& file, const std::string& line) {
  std::ofstream f(file, std::ios::app);
  f << line << "\n";
  f.flush();
  UNIATTN_CHECK(f.good(), file, ": cannot append");
}

// A fresh start drops the metrics and, when asked not to resume (--fresh), the checkpoints of
// the run that used output_dir before, so that `latest`, pruning and the fallback to the newest
// complete checkpoint never mix the two runs.
void start_over(const Run& run) {
  remove_tree(run.out / "metrics.jsonl");
  const auto ckpts = run.out / "checkpoints";
  if (run.options.resume || !fs::exists(ckpts)) return;
  std::fprintf(stderr, "[train] starting over: removing the earlier run's %s\n", ckpts.c_str());
  remove_tree(ckpts);
}

}  // namespace

StartPoint start_or_resume(Run& run) {
  const auto& c = run.c;
  StartPoint start;
  start.state.zero1 = run.zero1;
  start.state.weights_dtype = weight_dtype(c);
  start.state.fingerprint = run.fingerprint;
  if (run.options.resume) start.resume_dir = latest_checkpoint(run.out);
  if (!start.resume_dir) {
    if (run.rank0) start_over(run);
    return start;
  }
  const auto& dir = *start.resume_dir;
  TrainState& st = start.state;
  st = read_state(dir, run.comm.world(), run.zero1);
  st.zero1 = run.zero1;
  // The optimiser state has the weights' dtype, and the fused kernel wants them to agree.
  const auto wd = weight_dtype(c);
  UNIATTN_CHECK(st.weights_dtype == wd, dir, ": its weights and optimizer state are ",
                st.weights_dtype, ", but training.precision ", c.training.precision, " trains ", wd,
                " weights: resume with the precision it was written with (bf16 and fp32 share "
                "fp32 weights; bf16_weights has bf16 ones)");
  UNIATTN_CHECK(st.stage <= static_cast<int64_t>(c.stages.size()), dir, ": stage ", st.stage,
                " is beyond the config's ", c.stages.size(), " stages");
  start.changes = check_fingerprint(run, st, dir);
  st.fingerprint = run.fingerprint;  // later checkpoints belong to this run as it is now
  load_weights(dir, run.model);
  // Steps after the checkpoint are redone, and logged again.
  if (run.rank0) truncate_metrics(run.out / "metrics.jsonl", st.global_step);
  return start;
}

void record_config(const Run& run, const StartPoint& start) {
  if (!run.rank0) return;
  const fs::path yaml = run.out / "config.yaml", history = run.out / "config_history.jsonl";
  const std::string now = run.c.to_yaml();
  nlohmann::json entry = {{"step", start.resume_dir ? start.state.global_step : 0},
                          {"time", utc_now()},
                          {"event", start.resume_dir ? "resume" : "start"}};
  if (!start.resume_dir) {
    write_text_atomic(history, "");
  } else {
    const bool had = fs::exists(yaml);
    const std::string before = had ? read_text_file(yaml) : std::string();
    if (before == now && start.changes.empty()) return;
    auto all = had ? key_changes(flatten_config_yaml(before), flatten_config_yaml(now))
                   : std::vector<std::string>{"config.yaml: (absent) -> written"};
    entry["changes"] = start.changes;  // result-changing, allowed
    entry["config_changes"] = all;     // every key of config.yaml that differs
    if (start.changes.empty())
      std::fprintf(stderr, "[train] resuming with changed settings (results unaffected):%s\n",
                   bullet_list(all).c_str());
  }
  entry["fingerprint"] = nlohmann::json::parse(run.fingerprint);
  entry["config"] = now;
  append_line(history, entry.dump());
  write_text_atomic(yaml, now);
}

bool checkpoint_time_due(const Run& run) {
  const double every = run.c.checkpoint.every_minutes;
  const auto elapsed = std::chrono::steady_clock::now() - run.last_checkpoint;
  return every > 0 && std::chrono::duration<double>(elapsed).count() >= every * 60.0;
}

bool checkpoint_due(const TrainConfig& c, int64_t global_step, bool stop, bool stage_end,
                    bool timed) {
  const bool periodic = c.checkpoint.every_steps > 0 && global_step % c.checkpoint.every_steps == 0;
  return stop || periodic || stage_end || timed;
}

void save_step_checkpoint(Run& run, const TrainState& st, const StageTraining& stage,
                          bool stage_end) {
  TrainState snap = st;
  if (stage_end) {
    // A finished stage resumes at the next one with a fresh optimiser.
    snap.stage = st.stage + 1;
    snap.stage_step = 0;
  }
  save_checkpoint(run.out, snap, run.model, stage_end ? nullptr : stage.opt.get(), run.comm,
                  run.c.checkpoint.keep_last);
  run.last_checkpoint = std::chrono::steady_clock::now();
}

}  // namespace uniattn::train_detail
