// YAML -> TrainConfig with every key checked. A small Reader walks one mapping, remembers which
// keys it consumed and rejects the rest by name, so a typo never silently falls back to a default.
#include "uniattn/config/train_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn {
namespace {

class Reader {
 public:
  Reader(const YAML::Node& node, std::string path, const std::string& origin)
      : node_(node), path_(std::move(path)), origin_(origin) {
    if (node_ && !node_.IsNull() && !node_.IsMap())
      fail(origin_, ": ", where(""), " must be a mapping, got ", kind(node_));
    if (!node_ || node_.IsNull()) return;
    // Keys are names: a YAML mapping or list used as a key ("[a]: 1") has none.
    for (const auto& kv : node_)
      if (!kv.first.IsScalar())
        fail(origin_, ": ", where(""), " has a ", kind(kv.first), " as a key (keys are names)");
  }
  ~Reader() noexcept(false) {
    if (std::uncaught_exceptions() > 0 || !node_ || node_.IsNull()) return;
    for (const auto& kv : node_) {
      const std::string& key = kv.first.Scalar();  // scalar: checked by the constructor
      if (!used_.count(key)) fail(origin_, ": unknown key ", where(key));
    }
  }

  static const char* kind(const YAML::Node& n) {
    return n.IsMap() ? "mapping" : n.IsSequence() ? "list" : n.IsScalar() ? "scalar" : "null";
  }

  std::string where(const std::string& key) const {
    if (key.empty()) return path_.empty() ? "<root>" : path_;
    return path_.empty() ? key : path_ + "." + key;
  }

  YAML::Node get(const std::string& key) {
    used_.insert(key);
    if (!node_ || node_.IsNull()) return YAML::Node();
    return node_[key];
  }

  template <typename T>
  void read(const std::string& key, T& out) {
    YAML::Node n = get(key);
    if (!n || n.IsNull()) return;
    if (!n.IsScalar()) fail(origin_, ": ", where(key), " must be a scalar, got a ", kind(n));
    try {
      out = n.as<T>();
    } catch (const YAML::Exception&) {
      fail(origin_, ": ", where(key), " has an invalid value '", n.Scalar(), "'");
    }
  }
  void require(const std::string& key, std::string& out) {
    read(key, out);
    if (out.empty()) fail(origin_, ": ", where(key), " is required");
  }
  template <typename T>
  void positive(const std::string& key, T& out, bool allow_zero = false) {
    read(key, out);
    if (!(allow_zero ? out >= 0 : out > 0) || !std::isfinite(static_cast<double>(out)))
      fail(origin_, ": ", where(key), " must be ", allow_zero ? ">= 0" : "> 0");
  }
  void one_of(const std::string& key, std::string& out, const std::set<std::string>& allowed) {
    read(key, out);
    if (!allowed.count(out)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(origin_, ": ", where(key), " is '", out, "'; expected one of: ", list);
    }
  }

  const std::string& origin() const { return origin_; }

 private:
  YAML::Node node_;
  std::string path_;
  const std::string& origin_;
  std::set<std::string> used_;
};

// Applies "a.b[2].c=value": walks (creating maps where absent) and sets the leaf.
void apply_override(YAML::Node& root, const std::string& text, const std::string& origin) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    fail(origin, ": override '", text, "' is not of the form path=value");
  const std::string path = text.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    fail(origin, ": override '", text, "': ", e.what());
  }
  // Split into tokens: names and [index].
  std::vector<std::pair<std::string, int64_t>> steps;  // (name, -1) or ("", index)
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '.') {
      ++i;
      continue;
    }
    if (path[i] == '[') {
      const auto close = path.find(']', i);
      if (close == std::string::npos) fail(origin, ": override path '", path, "' lacks ']'");
      int64_t idx = -1;
      try {
        idx = std::stoll(path.substr(i + 1, close - i - 1));
      } catch (const std::exception&) {
        fail(origin, ": override path '", path, "' has a bad index");
      }
      if (idx < 0) fail(origin, ": override path '", path, "' has a negative index");
      steps.emplace_back("", idx);
      i = close + 1;
      continue;
    }
    size_t j = i;
    while (j < path.size() && path[j] != '.' && path[j] != '[') ++j;
    steps.emplace_back(path.substr(i, j - i), -1);
    i = j;
  }
  if (steps.empty()) fail(origin, ": override '", text, "' has an empty path");
  // yaml-cpp nodes are handles: assigning into a child modifies the tree. A name step needs a
  // mapping (or nothing yet) to step into, an index step a list: yaml-cpp throws on the others.
  YAML::Node cur = root;
  std::string walked;  // the path so far, for messages
  for (size_t s = 0; s < steps.size(); ++s) {
    const auto& [name, idx] = steps[s];
    const bool leaf = s + 1 == steps.size();
    YAML::Node next;
    if (idx >= 0) {
      if (!cur.IsSequence() || idx >= static_cast<int64_t>(cur.size()))
        fail(origin, ": override path '", path, "': index ", idx, " out of range");
      if (leaf) {
        cur[static_cast<size_t>(idx)] = value;
        return;
      }
      next = cur[static_cast<size_t>(idx)];
      walked += "[" + std::to_string(idx) + "]";
    } else {
      if (cur.IsDefined() && !cur.IsNull() && !cur.IsMap())
        fail(origin, ": override path '", path, "': ", walked.empty() ? "<root>" : walked,
             " is a ", Reader::kind(cur), ", not a mapping, so it has no key '", name, "'");
      if (leaf) {
        cur[name] = value;
        return;
      }
      if (!cur[name]) cur[name] = YAML::Node(YAML::NodeType::Map);
      next = cur[name];
      walked += (walked.empty() ? "" : ".") + name;
    }
    cur.reset(next);  // rebinds the handle (operator= would assign into the tree)
  }
}

std::vector<std::string> read_params(const YAML::Node& n, const std::string& where,
                                     const std::string& origin) {
  std::vector<std::string> out;
  if (!n || n.IsNull()) fail(origin, ": ", where, " is required (wc, all or name globs)");
  if (n.IsScalar()) {
    out.push_back(n.Scalar());
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i) {
      if (!n[i].IsScalar()) fail(origin, ": ", where, "[", i, "] must be a string");
      out.push_back(n[i].Scalar());
    }
  } else {
    fail(origin, ": ", where, " must be a string or a list of strings");
  }
  if (out.empty()) fail(origin, ": ", where, " is empty");
  for (const auto& p : out)
    if (p.empty()) fail(origin, ": ", where, " contains an empty pattern");
  return out;
}

WcInit parse_wc_init(const std::string& name) {
  return name == "zero" ? WcInit::Zero : name == "random" ? WcInit::Random : WcInit::Calibrated;
}

TrainModelConfig read_model(const YAML::Node& node, const std::string& origin) {
  TrainModelConfig m;
  Reader r(node, "model", origin);
  r.require("path", m.path);
  r.one_of("variant", m.variant, {"none", "softmax", "uniattn", "cla"});
  r.read("superblocks", m.superblocks);
  std::string init = "zero";
  r.one_of("wc_init", init, {"zero", "random", "calibrated"});
  m.wc_init = parse_wc_init(init);
  r.read("wc_checkpoint", m.wc_checkpoint);
  r.positive("wc_random_std", m.wc_random_std);
  if (m.variant != "none" && m.superblocks.empty())
    fail(origin, ": model.superblocks is required for variant ", m.variant);
  if (m.wc_init == WcInit::Calibrated && m.wc_checkpoint.empty())
    fail(origin, ": model.wc_checkpoint is required when model.wc_init is calibrated");
  if (m.wc_init != WcInit::Calibrated && !m.wc_checkpoint.empty())
    fail(origin, ": model.wc_checkpoint is set but model.wc_init is not calibrated");
  if (m.variant != "uniattn" && m.wc_init != WcInit::Zero)
    fail(origin, ": model.wc_init applies to variant uniattn only");
  return m;
}

TrainDataConfig read_data(const YAML::Node& node, const std::string& origin) {
  TrainDataConfig d;
  Reader r(node, "data", origin);
  r.require("train", d.train);
  r.read("eval", d.eval);
  r.one_of("format", d.format, {"text", "tokens"});
  r.read("template", d.template_);
  if (d.template_.empty()) fail(origin, ": data.template is empty");
  r.read("response_field", d.response_field);
  r.read("tokenizer", d.tokenizer);
  r.positive("max_length", d.max_length);
  if (d.max_length < 2) fail(origin, ": data.max_length must be >= 2");
  r.read("response_only_loss", d.response_only_loss);
  r.read("packing", d.packing);
  r.read("shuffle", d.shuffle);
  r.positive("eval_max_examples", d.eval_max_examples, true);
  return d;
}

// stages[i]; `variant` is model.variant, which decides whether "wc" names any parameter.
TrainStageConfig read_stage(const YAML::Node& node, size_t i, const std::string& variant,
                            const std::string& origin) {
  const std::string p = "stages[" + std::to_string(i) + "]";
  TrainStageConfig s;
  Reader r(node, p, origin);
  r.read("name", s.name);
  if (s.name.empty()) s.name = "stage" + std::to_string(i + 1);
  s.params = read_params(r.get("params"), p + ".params", origin);
  r.positive("epochs", s.epochs, true);
  r.positive("steps", s.steps, true);
  if ((s.epochs > 0) == (s.steps > 0))
    fail(origin, ": ", p, " needs exactly one of epochs and steps (> 0)");
  r.positive("lr", s.lr);
  r.positive("warmup_ratio", s.warmup_ratio, true);
  if (s.warmup_ratio >= 1) fail(origin, ": ", p, ".warmup_ratio must be < 1");
  r.positive("min_lr_ratio", s.min_lr_ratio, true);
  if (s.min_lr_ratio > 1) fail(origin, ": ", p, ".min_lr_ratio must be <= 1");
  r.read("distill", s.distill);
  for (const auto& pat : s.params)
    if ((pat == "wc") && variant != "uniattn")
      fail(origin, ": ", p, ".params: 'wc' needs model.variant uniattn (it is ", variant, ")");
  return s;
}

std::vector<TrainStageConfig> read_stages(const YAML::Node& stages, const std::string& variant,
                                          const std::string& origin) {
  if (!stages || !stages.IsSequence() || stages.size() == 0)
    fail(origin, ": stages must be a non-empty list");
  std::vector<TrainStageConfig> out;
  for (size_t i = 0; i < stages.size(); ++i)
    out.push_back(read_stage(stages[i], i, variant, origin));
  return out;
}

// optimizer.betas: absent or null keeps the defaults.
void read_betas(const YAML::Node& betas, TrainOptimizerConfig& o, const std::string& origin) {
  if (!betas || betas.IsNull()) return;
  if (!betas.IsSequence() || betas.size() != 2)
    fail(origin, ": optimizer.betas must be a list of two numbers");
  try {
    o.beta1 = betas[0].as<double>();
    o.beta2 = betas[1].as<double>();
  } catch (const YAML::Exception&) {
    fail(origin, ": optimizer.betas must be a list of two numbers");
  }
  for (double b : {o.beta1, o.beta2})
    if (!(b >= 0 && b < 1)) fail(origin, ": optimizer.betas must lie in [0, 1)");
}

TrainOptimizerConfig read_optimizer(const YAML::Node& node, const std::string& origin) {
  TrainOptimizerConfig o;
  Reader r(node, "optimizer", origin);
  read_betas(r.get("betas"), o, origin);
  r.positive("eps", o.eps);
  r.positive("weight_decay", o.weight_decay, true);
  r.read("fused", o.fused);
  return o;
}

TrainRunConfig read_training(const YAML::Node& node, const std::string& origin) {
  TrainRunConfig t;
  Reader r(node, "training", origin);
  r.positive("global_batch", t.global_batch);
  r.positive("micro_batch", t.micro_batch);
  if (t.global_batch % t.micro_batch != 0)
    fail(origin, ": training.global_batch (", t.global_batch,
         ") must be a multiple of training.micro_batch (", t.micro_batch, ")");
  r.one_of("precision", t.precision, {"bf16", "bf16_weights", "fp32"});
  r.read("device", t.device);
  if (t.device != "auto" && t.device != "cpu" && t.device.rfind("cuda", 0) != 0)
    fail(origin, ": training.device is '", t.device, "'; expected auto, cpu or cuda[:N]");
  r.positive("grad_clip", t.grad_clip, true);
  r.read("activation_checkpointing", t.activation_checkpointing);
  r.read("fused_linear_cross_entropy", t.fused_linear_cross_entropy);
  r.read("seed", t.seed);
  r.one_of("nan_policy", t.nan_policy, {"stop", "skip"});
  r.positive("log_every", t.log_every);
  r.read("progress", t.progress);
  return t;
}

TrainEvalConfig read_eval(const YAML::Node& node, const std::string& origin) {
  TrainEvalConfig e;
  Reader r(node, "eval", origin);
  r.positive("every_steps", e.every_steps, true);
  r.positive("batch_tokens", e.batch_tokens);
  return e;
}

TrainCheckpointConfig read_checkpoint(const YAML::Node& node, const std::string& origin) {
  TrainCheckpointConfig c;
  Reader r(node, "checkpoint", origin);
  r.positive("every_steps", c.every_steps, true);
  r.positive("every_minutes", c.every_minutes, true);
  r.positive("keep_last", c.keep_last);
  r.one_of("save_dtype", c.save_dtype, {"bf16", "f16", "f32"});
  return c;
}

TrainDistributedConfig read_distributed(const YAML::Node& node, const std::string& origin) {
  TrainDistributedConfig d;
  Reader r(node, "distributed", origin);
  r.one_of("backend", d.backend, {"auto", "gloo", "nccl"});
  r.positive("bucket_mb", d.bucket_mb);
  r.read("zero1", d.zero1);
  r.positive("timeout_s", d.timeout_s);
  return d;
}

TrainDebugConfig read_debug(const YAML::Node& node, const std::string& origin) {
  TrainDebugConfig d;
  Reader r(node, "debug", origin);
  r.positive("inject_nan_at_step", d.inject_nan_at_step, true);
  r.positive("stop_after_steps", d.stop_after_steps, true);
  r.positive("fail_at_step", d.fail_at_step, true);
  r.positive("fail_rank", d.fail_rank, true);
  return d;
}

// distill: present (even empty) turns distillation on with the defaults.
std::optional<TrainDistillConfig> read_distill(const YAML::Node& node, const std::string& origin) {
  if (!node) return std::nullopt;
  TrainDistillConfig d;
  Reader r(node, "distill", origin);
  r.read("teacher", d.teacher);
  if (d.teacher.empty()) fail(origin, ": distill.teacher is empty (base, or a model path)");
  r.read("weight", d.weight);
  if (!(d.weight >= 0 && d.weight <= 1))
    fail(origin, ": distill.weight is ", d.weight, "; it must lie in [0, 1]");
  r.positive("temperature", d.temperature);
  r.positive("follower_mse", d.follower_mse, true);
  return d;
}

// Cross-section rules of distillation; `stages` is the (validated) stages list.
void check_distill(const TrainConfig& c, const YAML::Node& stages, const std::string& origin) {
  for (size_t i = 0; i < c.stages.size() && !c.distill; ++i)
    if (stages[i]["distill"])
      fail(origin, ": stages[", i, "].distill is set but there is no distill section");
  if (c.distill && c.distill->follower_mse > 0 && c.model.variant == "none")
    fail(origin, ": distill.follower_mse needs followers (model.variant is none)");
  // The followers' attention outputs come from a layer-by-layer forward that does not recompute.
  if (c.distill && c.distill->follower_mse > 0 && c.training.activation_checkpointing)
    fail(origin,
         ": distill.follower_mse cannot be combined with training.activation_checkpointing");
}

// Sections are read in a fixed order, each by its own Reader, so the first error reported is the
// same one as always; the top-level Reader rejects unknown sections when it goes out of scope.
TrainConfig from_node(const YAML::Node& root, const std::string& origin) {
  TrainConfig c;
  Reader top(root, "", origin);
  top.require("output_dir", c.output_dir);
  c.model = read_model(top.get("model"), origin);
  c.data = read_data(top.get("data"), origin);
  c.stages = read_stages(top.get("stages"), c.model.variant, origin);
  c.optimizer = read_optimizer(top.get("optimizer"), origin);
  c.training = read_training(top.get("training"), origin);
  c.eval = read_eval(top.get("eval"), origin);
  c.checkpoint = read_checkpoint(top.get("checkpoint"), origin);
  c.distributed = read_distributed(top.get("distributed"), origin);
  c.debug = read_debug(top.get("debug"), origin);
  c.distill = read_distill(top.get("distill"), origin);
  check_distill(c, top.get("stages"), origin);
  return c;
}

}  // namespace

TrainConfig TrainConfig::parse(const std::string& yaml_text, const std::string& origin,
                               const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail(origin, ": invalid YAML: ", e.what());
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) fail(origin, ": the top level must be a mapping");
  // Every yaml-cpp call below is guarded by a type check; this turns any that is not (a yaml-cpp
  // exception is never the caller's to handle) into our error naming the file.
  try {
    for (const auto& o : overrides) apply_override(root, o, origin);
    return from_node(root, origin);
  } catch (const YAML::Exception& e) {
    fail(origin, ": invalid configuration: ", e.what());
  }
}

TrainConfig TrainConfig::load(const std::string& path, const std::vector<std::string>& overrides) {
  return parse(read_text_file(path, 1u << 20), path, overrides);
}

std::string TrainConfig::to_yaml() const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "output_dir" << YAML::Value << output_dir;
  e << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "path" << YAML::Value << model.path;
  e << YAML::Key << "variant" << YAML::Value << model.variant;
  if (!model.superblocks.empty())
    e << YAML::Key << "superblocks" << YAML::Value << model.superblocks;
  e << YAML::Key << "wc_init" << YAML::Value
    << (model.wc_init == WcInit::Zero     ? "zero"
        : model.wc_init == WcInit::Random ? "random"
                                          : "calibrated");
  if (!model.wc_checkpoint.empty())
    e << YAML::Key << "wc_checkpoint" << YAML::Value << model.wc_checkpoint;
  e << YAML::Key << "wc_random_std" << YAML::Value << model.wc_random_std;
  e << YAML::EndMap;
  e << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "train" << YAML::Value << data.train;
  if (!data.eval.empty()) e << YAML::Key << "eval" << YAML::Value << data.eval;
  e << YAML::Key << "format" << YAML::Value << data.format;
  e << YAML::Key << "template" << YAML::Value << data.template_;
  e << YAML::Key << "response_field" << YAML::Value << data.response_field;
  if (!data.tokenizer.empty()) e << YAML::Key << "tokenizer" << YAML::Value << data.tokenizer;
  e << YAML::Key << "max_length" << YAML::Value << data.max_length;
  e << YAML::Key << "response_only_loss" << YAML::Value << data.response_only_loss;
  e << YAML::Key << "packing" << YAML::Value << data.packing;
  e << YAML::Key << "shuffle" << YAML::Value << data.shuffle;
  e << YAML::Key << "eval_max_examples" << YAML::Value << data.eval_max_examples;
  e << YAML::EndMap;
  e << YAML::Key << "stages" << YAML::Value << YAML::BeginSeq;
  for (const auto& s : stages) {
    e << YAML::BeginMap << YAML::Key << "name" << YAML::Value << s.name;
    e << YAML::Key << "params" << YAML::Value << YAML::Flow << s.params;
    if (s.epochs > 0) e << YAML::Key << "epochs" << YAML::Value << s.epochs;
    if (s.steps > 0) e << YAML::Key << "steps" << YAML::Value << s.steps;
    e << YAML::Key << "lr" << YAML::Value << s.lr;
    e << YAML::Key << "warmup_ratio" << YAML::Value << s.warmup_ratio;
    e << YAML::Key << "min_lr_ratio" << YAML::Value << s.min_lr_ratio;
    // Only with a distill section, so that the YAML (and the fingerprint) of runs without one
    // stay as they were.
    if (distill) e << YAML::Key << "distill" << YAML::Value << s.distill;
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "optimizer" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "betas" << YAML::Value << YAML::Flow << YAML::BeginSeq << optimizer.beta1
    << optimizer.beta2 << YAML::EndSeq;
  e << YAML::Key << "eps" << YAML::Value << optimizer.eps;
  e << YAML::Key << "weight_decay" << YAML::Value << optimizer.weight_decay;
  e << YAML::Key << "fused" << YAML::Value << optimizer.fused << YAML::EndMap;
  e << YAML::Key << "training" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "global_batch" << YAML::Value << training.global_batch;
  e << YAML::Key << "micro_batch" << YAML::Value << training.micro_batch;
  e << YAML::Key << "precision" << YAML::Value << training.precision;
  e << YAML::Key << "device" << YAML::Value << training.device;
  e << YAML::Key << "grad_clip" << YAML::Value << training.grad_clip;
  e << YAML::Key << "activation_checkpointing" << YAML::Value << training.activation_checkpointing;
  e << YAML::Key << "fused_linear_cross_entropy" << YAML::Value
    << training.fused_linear_cross_entropy;
  e << YAML::Key << "seed" << YAML::Value << training.seed;
  e << YAML::Key << "nan_policy" << YAML::Value << training.nan_policy;
  e << YAML::Key << "log_every" << YAML::Value << training.log_every;
  e << YAML::Key << "progress" << YAML::Value << training.progress << YAML::EndMap;
  e << YAML::Key << "eval" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "every_steps" << YAML::Value << eval.every_steps;
  e << YAML::Key << "batch_tokens" << YAML::Value << eval.batch_tokens << YAML::EndMap;
  e << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "every_steps" << YAML::Value << checkpoint.every_steps;
  e << YAML::Key << "every_minutes" << YAML::Value << checkpoint.every_minutes;
  e << YAML::Key << "keep_last" << YAML::Value << checkpoint.keep_last;
  e << YAML::Key << "save_dtype" << YAML::Value << checkpoint.save_dtype << YAML::EndMap;
  e << YAML::Key << "distributed" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "backend" << YAML::Value << distributed.backend;
  e << YAML::Key << "bucket_mb" << YAML::Value << distributed.bucket_mb;
  e << YAML::Key << "zero1" << YAML::Value << distributed.zero1;
  e << YAML::Key << "timeout_s" << YAML::Value << distributed.timeout_s << YAML::EndMap;
  if (distill) {
    e << YAML::Key << "distill" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "teacher" << YAML::Value << distill->teacher;
    e << YAML::Key << "weight" << YAML::Value << distill->weight;
    e << YAML::Key << "temperature" << YAML::Value << distill->temperature;
    e << YAML::Key << "follower_mse" << YAML::Value << distill->follower_mse << YAML::EndMap;
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

bool glob_match(const std::string& pattern, const std::string& name) {
  // Iterative matcher with one backtrack point for the last '*'.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace uniattn
