// The post-training recipe as data: a YAML file describing the model, the data, the stages and
// the optimiser, parsed and validated without LibTorch. See docs/training.md for every key.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace uniattn {

// How the compensation W_c of each follower starts.
enum class WcInit {
  Zero,        // the unified model starts as plain Softmax unification
  Random,      // N(0, wc_random_std^2)
  Calibrated,  // copied from a checkpoint written by uniattn-calib (model.wc_checkpoint)
};

struct TrainModelConfig {
  std::string path;                 // HF directory or .gguf of the base (or unified) model
  std::string variant = "uniattn";  // none | softmax | uniattn | cla
  std::string superblocks;          // "SIZE,BEGIN,END" or groups "16-19;20-23"; "" = keep
  WcInit wc_init = WcInit::Zero;
  std::string wc_checkpoint;  // for wc_init: calibrated
  double wc_random_std = 0.02;
};

struct TrainDataConfig {
  std::string train;  // JSON / JSONL records
  std::string eval;   // "" = no evaluation
  // text: instruction records rendered with `template`; tokens: JSONL lines
  // {"ids": [...], "loss_mask": [...]} (mask optional: then every token after the first counts).
  std::string format = "text";
  std::string template_ = "alpaca";  // alpaca | tulu | a custom template with {field}s
  std::string response_field = "output";
  std::string tokenizer;  // "" = the model's own
  int64_t max_length = 1024;
  bool response_only_loss = true;  // false: every token of the example is a target
  bool packing = false;            // concatenate examples into max_length sequences
  bool shuffle = true;
  int64_t eval_max_examples = 0;  // 0 = all
};

struct TrainStageConfig {
  std::string name;
  // "wc" (W_c only), "all", or glob patterns over parameter names ('*' and '?').
  std::vector<std::string> params;
  double epochs = 0.0;  // exactly one of epochs and steps is set (> 0)
  int64_t steps = 0;
  double lr = 0.0;
  double warmup_ratio = 0.03;
  double min_lr_ratio = 0.0;  // cosine decays to lr * min_lr_ratio
  // With a distill section: whether this stage distils (false: cross-entropy only).
  bool distill = true;
};

// Knowledge distillation from a frozen teacher (docs/training.md, "Distillation"). Per micro-batch
// loss = (1 - weight) * CE + weight * temperature^2 * KL(p_teacher || p_student)
//        + follower_mse * MSE(follower attention outputs, teacher's same layers),
// with p = softmax(logits / temperature) (Hinton et al. 2015, arXiv 1503.02531); CE and KL are
// averaged over the response tokens (the positions the cross-entropy scores), MSE over those
// positions, the hidden size and the follower layers.
struct TrainDistillConfig {
  // "base": model.path loaded as variant none (the model before unification); otherwise the path
  // of a model directory or GGUF ("default" is resolved by the tools, as model.path).
  std::string teacher = "base";
  double weight = 0.5;        // in [0, 1]
  double temperature = 1.0;   // > 0
  double follower_mse = 0.0;  // >= 0; > 0 needs model.variant other than none
};

struct TrainOptimizerConfig {
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // true: one fused multi-tensor AdamW kernel per parameter group (at::_fused_adamw_, CPU and
  // CUDA); false: LibTorch's per-tensor torch::optim::AdamW. Same update, same checkpoint format.
  bool fused = true;
};

struct TrainRunConfig {
  int64_t global_batch = 48;  // sequences per optimiser step, over all ranks
  int64_t micro_batch = 4;    // sequences per forward pass on one rank
  // bf16: fp32 master weights, gradients and AdamW state, matmuls under bf16 autocast.
  // bf16_weights: weights, gradients and AdamW state in bf16, no autocast (half the memory of
  // the weights/gradients/state; updates below bf16's resolution are lost). fp32: all fp32.
  std::string precision = "bf16";
  std::string device = "auto";            // auto | cpu | cuda | cuda:N
  double grad_clip = 1.0;                 // 0 = off
  bool activation_checkpointing = false;  // recompute each SuperBlock / layer in backward
  // true: stages without distillation take the loss from the final hidden states through a
  // chunked LM head + cross-entropy that never holds the logits of the whole micro-batch
  // (src/train/linear_cross_entropy.h), saving memory (2.5-3.6 GiB on the H200 benchmarks) at
  // 6-21% of throughput (bench/results/train-throughput-h200.json); false, and every stage that
  // distils, compute the full logits.
  bool fused_linear_cross_entropy = false;
  uint64_t seed = 42;
  std::string nan_policy = "stop";  // stop | skip
  int64_t log_every = 1;
  bool progress = true;
};

struct TrainEvalConfig {
  int64_t every_steps = 0;  // 0: only at the end of each stage (when data.eval is set)
  int64_t batch_tokens = 8192;
};

struct TrainCheckpointConfig {
  int64_t every_steps = 0;  // 0: no step cadence (stage ends, signals and every_minutes still save)
  // Also when this many minutes of training have passed since the last checkpoint (or the start),
  // so a killed run loses at most about this much work; 0: no time cadence.
  double every_minutes = 30.0;
  int64_t keep_last = 2;
  std::string save_dtype = "bf16";  // final model: bf16 | f32 | f16
};

struct TrainDistributedConfig {
  std::string backend = "auto";  // auto (nccl on CUDA, gloo on CPU) | gloo | nccl
  double bucket_mb = 25.0;
  bool zero1 = true;  // shard the AdamW state across ranks
  int64_t timeout_s = 600;
};

struct TrainDebugConfig {
  int64_t inject_nan_at_step = 0;  // > 0: the loss of that global step becomes NaN
  int64_t stop_after_steps = 0;    // > 0: checkpoint and exit after that global step (as on SIGINT)
  int64_t fail_at_step = 0;        // > 0: rank fail_rank throws at the start of that global step
  int64_t fail_rank = 0;
};

struct TrainConfig {
  TrainModelConfig model;
  TrainDataConfig data;
  std::vector<TrainStageConfig> stages;
  TrainOptimizerConfig optimizer;
  TrainRunConfig training;
  TrainEvalConfig eval;
  TrainCheckpointConfig checkpoint;
  TrainDistributedConfig distributed;
  TrainDebugConfig debug;
  std::optional<TrainDistillConfig> distill;  // absent: no distillation
  std::string output_dir;

  // Parses YAML text. Every key is checked: an unknown key, a wrong type or a value out of range
  // throws uniattn::Error naming `origin` and the key path (e.g. "stages[1].lr"). `overrides`
  // are "path=value" strings (path as in the messages, value in YAML) applied before validation.
  static TrainConfig parse(const std::string& yaml_text, const std::string& origin = "<config>",
                           const std::vector<std::string>& overrides = {});
  // Reads and parses a file; throws uniattn::Error if it cannot be read.
  static TrainConfig load(const std::string& path, const std::vector<std::string>& overrides = {});
  // The validated config back as YAML (written next to checkpoints for the record).
  std::string to_yaml() const;
};

// Whether `name` matches the glob `pattern` ('*' any run of characters, '?' one character).
bool glob_match(const std::string& pattern, const std::string& name);

}  // namespace uniattn
