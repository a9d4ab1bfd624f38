// TrainConfig parsing: values land where they should, every bad key or value is rejected with
// its path, overrides apply, and the shipped configs/*.yaml all validate.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "test_util.h"
#include "uniattn/config/train_config.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

const char* kMinimal = R"(
output_dir: runs/x
model: {path: m, variant: uniattn, superblocks: "2,1,4"}
data: {train: t.jsonl}
stages:
  - {name: wc, params: wc, epochs: 1, lr: 2e-5}
  - {params: all, steps: 10, lr: 1e-5, warmup_ratio: 0.1}
)";

std::string error_of(const std::string& yaml, const std::vector<std::string>& ov = {}) {
  try {
    TrainConfig::parse(yaml, "cfg.yaml", ov);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TrainConfig, ParsesValuesAndDefaults) {
  const auto c = TrainConfig::parse(kMinimal);
  EXPECT_EQ(c.output_dir, "runs/x");
  EXPECT_EQ(c.model.variant, "uniattn");
  EXPECT_EQ(c.model.superblocks, "2,1,4");
  ASSERT_EQ(c.stages.size(), 2u);
  EXPECT_EQ(c.stages[0].name, "wc");
  EXPECT_EQ(c.stages[0].params, std::vector<std::string>{"wc"});
  EXPECT_DOUBLE_EQ(c.stages[0].epochs, 1.0);
  EXPECT_DOUBLE_EQ(c.stages[0].lr, 2e-5);
  EXPECT_DOUBLE_EQ(c.stages[0].warmup_ratio, 0.03);
  EXPECT_EQ(c.stages[1].name, "stage2");
  EXPECT_EQ(c.stages[1].steps, 10);
  EXPECT_DOUBLE_EQ(c.stages[1].warmup_ratio, 0.1);
  EXPECT_EQ(c.training.global_batch, 48);
  EXPECT_EQ(c.data.max_length, 1024);
  EXPECT_EQ(c.data.template_, "alpaca");
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.0);
  EXPECT_TRUE(c.optimizer.fused);
  EXPECT_FALSE(c.training.activation_checkpointing);
  EXPECT_FALSE(c.training.fused_linear_cross_entropy);
}

TEST(TrainConfig, CheckpointingAndFusedOptimizerRoundTrip) {
  const auto c =
      TrainConfig::parse(kMinimal, "cfg.yaml",
                         {"training.activation_checkpointing=true", "optimizer.fused=false",
                          "training.fused_linear_cross_entropy=true"});
  EXPECT_TRUE(c.training.activation_checkpointing);
  EXPECT_FALSE(c.optimizer.fused);
  EXPECT_TRUE(c.training.fused_linear_cross_entropy);
  const auto d = TrainConfig::parse(c.to_yaml());
  EXPECT_TRUE(d.training.activation_checkpointing);
  EXPECT_FALSE(d.optimizer.fused);
  EXPECT_TRUE(d.training.fused_linear_cross_entropy);
  EXPECT_EQ(d.to_yaml(), c.to_yaml());
}

TEST(TrainConfig, PrecisionValuesRoundTripAndUnknownOnesListTheAllowed) {
  EXPECT_EQ(TrainConfig::parse(kMinimal).training.precision, "bf16");
  for (const std::string p : {"bf16", "bf16_weights", "fp32"}) {
    SCOPED_TRACE(p);
    const auto c = TrainConfig::parse(kMinimal, "cfg.yaml", {"training.precision=" + p});
    EXPECT_EQ(c.training.precision, p);
    EXPECT_EQ(TrainConfig::parse(c.to_yaml()).training.precision, p);
  }
  for (const std::string bad : {"fp16", "bf16-weights", "BF16"}) {
    SCOPED_TRACE(bad);
    const auto e = error_of(kMinimal, {"training.precision=" + bad});
    EXPECT_NE(e.find("training.precision is '" + bad + "'"), std::string::npos) << e;
    EXPECT_NE(e.find("expected one of: bf16, bf16_weights, fp32"), std::string::npos) << e;
  }
}

TEST(TrainConfig, RoundTripsThroughYaml) {
  const auto c = TrainConfig::parse(kMinimal);
  const auto d = TrainConfig::parse(c.to_yaml());
  EXPECT_EQ(d.to_yaml(), c.to_yaml());
  EXPECT_EQ(d.stages[1].steps, 10);
}

TEST(TrainConfig, RejectsUnknownKeysByPath) {
  std::string y = kMinimal;
  EXPECT_NE(error_of(y + "bogus: 1\n").find("unknown key bogus"), std::string::npos);
  EXPECT_NE(error_of(y + "training: {global_bach: 4}\n").find("training.global_bach"),
            std::string::npos);
  EXPECT_NE(error_of(y + "training: {fused_linear_crossentropy: true}\n")
                .find("unknown key training.fused_linear_crossentropy"),
            std::string::npos);
  const std::string s = R"(
output_dir: o
model: {path: m, variant: none}
data: {train: t}
stages:
  - {params: all, steps: 1, lr: 1e-5}
  - {params: all, steps: 1, lr: 1e-5, lrr: 1e-5}
)";
  EXPECT_NE(error_of(s).find("stages[1].lrr"), std::string::npos) << error_of(s);
}

TEST(TrainConfig, RejectsBadValues) {
  const std::string y = kMinimal;
  EXPECT_NE(error_of(y, {"stages[1].lr=-1"}).find("stages[1].lr must be > 0"), std::string::npos);
  EXPECT_NE(error_of(y, {"stages[0].steps=5"}).find("exactly one of epochs and steps"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"model.variant=gqa"}).find("model.variant is 'gqa'"), std::string::npos);
  EXPECT_NE(error_of(y, {"training.micro_batch=5"}).find("multiple of training.micro_batch"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"training.global_batch=abc"}).find("training.global_batch has an invalid"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"training.activation_checkpointing=maybe"})
                .find("training.activation_checkpointing"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"optimizer.fused=3"}).find("optimizer.fused"), std::string::npos);
  EXPECT_NE(error_of(y, {"training.fused_linear_cross_entropy=3"})
                .find("training.fused_linear_cross_entropy"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"model.wc_init=calibrated"}).find("model.wc_checkpoint is required"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"model.variant=softmax"}).find("'wc' needs model.variant uniattn"),
            std::string::npos);
  EXPECT_NE(error_of(y, {"optimizer.betas=[0.9]"}).find("optimizer.betas"), std::string::npos);
  EXPECT_NE(error_of(y, {"stages[5].lr=1"}).find("out of range"), std::string::npos);
  EXPECT_NE(error_of("output_dir: o\n").find("model.path is required"), std::string::npos);
  EXPECT_NE(error_of("[1, 2]").find("top level must be a mapping"), std::string::npos);
  EXPECT_NE(error_of("a: [1, 2").find("invalid YAML"), std::string::npos);
  EXPECT_NE(error_of(y, {"data=3"}).find("data must be a mapping"), std::string::npos);
}

// distill: absent = off; present = on in every stage with the defaults; stages[i].distill turns a
// stage off; the values round-trip; runs without it keep the YAML they had.
TEST(TrainConfig, DistillSectionParsesAndRoundTrips) {
  EXPECT_FALSE(TrainConfig::parse(kMinimal).distill);
  EXPECT_EQ(TrainConfig::parse(kMinimal).to_yaml().find("distill"), std::string::npos);
  const auto d = TrainConfig::parse(std::string(kMinimal) + "distill: {}\n").distill;
  ASSERT_TRUE(d);
  EXPECT_EQ(d->teacher, "base");
  EXPECT_DOUBLE_EQ(d->weight, 0.5);
  EXPECT_DOUBLE_EQ(d->temperature, 1.0);
  EXPECT_DOUBLE_EQ(d->follower_mse, 0.0);
  const auto c = TrainConfig::parse(
      kMinimal, "cfg.yaml",
      {"distill.teacher=runs/ft/final", "distill.weight=0.25", "distill.temperature=2",
       "distill.follower_mse=0.1", "stages[1].distill=false"});
  ASSERT_TRUE(c.distill);
  EXPECT_EQ(c.distill->teacher, "runs/ft/final");
  EXPECT_DOUBLE_EQ(c.distill->weight, 0.25);
  EXPECT_DOUBLE_EQ(c.distill->temperature, 2.0);
  EXPECT_DOUBLE_EQ(c.distill->follower_mse, 0.1);
  EXPECT_TRUE(c.stages[0].distill);
  EXPECT_FALSE(c.stages[1].distill);
  const auto r = TrainConfig::parse(c.to_yaml());
  ASSERT_TRUE(r.distill);
  EXPECT_EQ(r.distill->teacher, "runs/ft/final");
  EXPECT_DOUBLE_EQ(r.distill->weight, 0.25);
  EXPECT_FALSE(r.stages[1].distill);
  EXPECT_EQ(r.to_yaml(), c.to_yaml());
}

TEST(TrainConfig, DistillRejectsBadKeysAndValuesByName) {
  const std::string y = kMinimal;
  const auto has = [&](const std::vector<std::string>& ov, const std::string& needle) {
    SCOPED_TRACE(ov.front());
    const auto e = error_of(y, ov);
    EXPECT_NE(e.find(needle), std::string::npos) << "got: " << e;
  };
  has({"distill.weight=1.5"}, "distill.weight is 1.5; it must lie in [0, 1]");
  has({"distill.weight=-0.1"}, "distill.weight is -0.1; it must lie in [0, 1]");
  has({"distill.weight=.nan"}, "distill.weight");
  has({"distill.weight=half"}, "distill.weight has an invalid value 'half'");
  has({"distill.temperature=0"}, "distill.temperature must be > 0");
  has({"distill.temperature=-2"}, "distill.temperature must be > 0");
  has({"distill.follower_mse=-1"}, "distill.follower_mse must be >= 0");
  has({"distill.teacher=''"}, "distill.teacher is empty");
  has({"distill.wieght=0.5"}, "unknown key distill.wieght");
  has({"distill=[1]"}, "distill must be a mapping");
  has({"stages[0].distill=false"}, "stages[0].distill is set but there is no distill section");
  has({"distill.weight=0.5", "stages[1].distill=maybe"}, "stages[1].distill has an invalid value");
  has({"distill.follower_mse=1", "model.variant=none", "stages[0].params=all"},
      "distill.follower_mse needs followers");
  has({"distill.follower_mse=1", "training.activation_checkpointing=true"}, "distill.follower_mse");
  // The error names the file.
  EXPECT_EQ(error_of(y, {"distill.temperature=0"}).rfind("cfg.yaml: ", 0), 0u);
}

TEST(TrainConfig, OverridesApply) {
  const auto c = TrainConfig::parse(
      kMinimal, "x", {"stages[0].lr=3e-4", "output_dir=elsewhere", "distributed.zero1=false"});
  EXPECT_DOUBLE_EQ(c.stages[0].lr, 3e-4);
  EXPECT_EQ(c.output_dir, "elsewhere");
  EXPECT_FALSE(c.distributed.zero1);
}

TEST(TrainConfig, GlobMatch) {
  EXPECT_TRUE(
      glob_match("model.layers.*.self_attn.w_c.weight", "model.layers.3.self_attn.w_c.weight"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("a?c*", "abcdef"));
  EXPECT_FALSE(glob_match("a?c", "ac"));
  EXPECT_FALSE(glob_match("*.bias", "model.norm.weight"));
  EXPECT_TRUE(glob_match("*a*b*", "xxaxxbxx"));
}

TEST(TrainConfig, ShippedConfigsValidate) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(test::source_dir() / "configs")) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    EXPECT_NO_THROW(TrainConfig::load(e.path().string()));
    ++n;
  }
  EXPECT_GE(n, 6);
}

// The library takes model.path as a path, "default" included: naming the demo model is the
// tools' convention (uniattn-train resolves it), so the parser must not interpret it.
TEST(TrainConfig, ModelPathDefaultStaysAPathInTheLibrary) {
  const auto c = TrainConfig::parse(kMinimal, "cfg.yaml", {"model.path=default"});
  EXPECT_EQ(c.model.path, "default");
  EXPECT_EQ(TrainConfig::parse(c.to_yaml()).model.path, "default");
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A venv's Python version differs between machines: shipped configs name the demo model with
// "default" instead of a .venv/lib/python3.X/... path.
TEST(TrainConfig, ShippedConfigsNameNoPythonVersion) {
  int n = 0;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(test::source_dir() / "configs")) {
    if (e.path().extension() != ".yaml") continue;
    EXPECT_EQ(slurp(e.path()).find("lib/python3."), std::string::npos) << e.path();
    ++n;
  }
  EXPECT_GE(n, 6);
  EXPECT_EQ(TrainConfig::load((test::source_dir() / "configs" / "smollm2-uniattn.yaml").string())
                .model.path,
            "default");
}

// uniattn-train resolves model.path "default" to $UNIATTN_DEFAULT_MODEL (else the venv's GGUF);
// --check prints the resolved config without loading the model, so any existing file will do.
TEST(TrainConfig, UniattnTrainResolvesTheDefaultModel) {
  namespace fs = std::filesystem;
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path() / ".." / "uniattn-train";
  if (!fs::exists(exe)) GTEST_SKIP() << exe << " not built";
  const auto dir = test::scratch_dir();
  const auto stand_in = fs::absolute(test::source_dir() / "configs" / "data" / "README.md");
  const auto config = (test::source_dir() / "configs" / "smollm2-uniattn.yaml").string();
  const auto out = (dir / "out.yaml").string();
  const std::string cmd = "UNIATTN_DEFAULT_MODEL='" + stand_in.string() + "' " + exe.string() +
                          " --check -c '" + config + "' > '" + out + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << slurp(out);
  const auto printed = TrainConfig::parse(slurp(out));
  EXPECT_EQ(printed.model.path, stand_in.string());
  // Another path is left alone, even one whose file does not exist (training reports that).
  const std::string other =
      exe.string() + " --check -c '" + config + "' --set model.path=./default > '" + out + "' 2>&1";
  ASSERT_EQ(std::system(other.c_str()), 0) << other << "\n" << slurp(out);
  EXPECT_EQ(TrainConfig::parse(slurp(out)).model.path, "./default");
}

}  // namespace
}  // namespace uniattn
