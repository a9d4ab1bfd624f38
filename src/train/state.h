// Checkpoint save/restore for the trainer (state.cpp).
#pragma once
#include <filesystem>
#include <optional>
#include <string>

#include "internal.h"
#include "uniattn/model/causal_lm.h"

namespace torch::optim {
class Optimizer;
}

namespace uniattn::train_detail {

struct TrainState {
  int64_t global_step = 0;  // optimiser steps completed
  int64_t stage = 0;        // index of the stage in progress
  int64_t stage_step = 0;   // steps of that stage completed
  int64_t tokens = 0;
  bool zero1 = false;
  double last_loss = 0.0;
  // The dtype of the trained weights and of the optimiser state (fp32, or bf16 for
  // training.precision bf16_weights); checkpoints store the weights in it.
  at::ScalarType weights_dtype = at::kFloat;
  // The run's fingerprint (fingerprint.h) as JSON text; empty in checkpoints written before
  // fingerprints existed.
  std::string fingerprint;
};

// Collective: every rank calls it. `opt` may be null (no optimiser state to keep).
void save_checkpoint(const std::filesystem::path& out_dir, const TrainState& st, CausalLM& model,
                     torch::optim::Optimizer* opt, Comm& comm, int64_t keep_last);
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& out_dir);
TrainState read_state(const std::filesystem::path& dir, int world, bool zero1);
void load_optimizer(const std::filesystem::path& dir, int rank, torch::optim::Optimizer* opt);
void load_weights(const std::filesystem::path& dir, CausalLM& model);
// Drops metrics lines of steps after max_step (they are redone after a resume).
void truncate_metrics(const std::filesystem::path& file, int64_t max_step);

}  // namespace uniattn::train_detail
