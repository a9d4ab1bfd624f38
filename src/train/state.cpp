// Training checkpoints: output_dir/checkpoints/step-XXXXXXXX/ holds the model in the dtype it is
// trained in (fp32, or bf16 for training.precision bf16_weights; config.json + safetensors), one
// optimiser archive per rank (its ZeRO-1 shard, or the whole state) with the RNG state, and
// state.json (step, stage, world size, weights dtype, the run's fingerprint). A checkpoint is
// written into a temporary directory that is renamed into place only when complete; `latest` then
// names it.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

#include "internal.h"
#include "state.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

namespace uniattn::train_detail {

namespace fs = std::filesystem;

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// A save cut short by a kill leaves step-N.tmp/ (never resumed from) and perhaps the temporary
// of `latest` (.latest.tmpPID) behind; the next save drops them.
static void remove_stale_temporaries(const fs::path& root) {
  std::vector<fs::path> stale;
  if (fs::exists(root))
    for (const auto& e : fs::directory_iterator(root)) {
      const auto file = e.path().filename().string();
      if ((e.is_directory() && e.path().extension() == ".tmp") ||
          file.rfind(".latest.tmp", 0) == 0)
        stale.push_back(e.path());
    }
  for (const auto& p : stale) remove_tree(p);
}

void save_checkpoint(const fs::path& out_dir, const TrainState& st, CausalLM& model,
                     torch::optim::Optimizer* opt, Comm& comm, int64_t keep_last) {
  const fs::path root = out_dir / "checkpoints";
  const std::string name = step_dir_name(st.global_step);
  const fs::path tmp = root / (name + ".tmp"), dst = root / name;
  if (comm.rank() == 0) {
    remove_stale_temporaries(root);
    fs::create_directories(tmp);
  }
  comm.barrier();
  if (comm.rank() == 0) {
    // The weights as trained (lossless; bf16 weights take half the space of fp32 ones).
    save_model(model, tmp, st.weights_dtype);
    nlohmann::json j = {{"global_step", st.global_step},
                        {"stage", st.stage},
                        {"stage_step", st.stage_step},
                        {"tokens", st.tokens},
                        {"world_size", comm.world()},
                        {"zero1", st.zero1},
                        {"last_loss", st.last_loss},
                        {"weights_dtype", st.weights_dtype == at::kBFloat16 ? "bf16" : "f32"}};
    if (!st.fingerprint.empty()) j["fingerprint"] = nlohmann::json::parse(st.fingerprint);
    write_text_atomic(tmp / "state.json", j.dump(2) + "\n");
  }
  {
    torch::serialize::OutputArchive ar;
    if (opt) opt->save(ar);
    auto gen = at::detail::getDefaultCPUGenerator();
    ar.write("rng_cpu", gen.get_state());
    ar.write("has_optimizer", at::scalar_tensor(opt ? 1 : 0, at::kLong));
    ar.save_to((tmp / ("optimizer-rank" + std::to_string(comm.rank()) + ".pt")).string());
  }
  comm.barrier();
  if (comm.rank() == 0) {
    remove_tree(dst);
    fs::rename(tmp, dst);
    write_text_atomic(root / "latest", name + "\n");
    // Keep the newest keep_last checkpoints up to this one (a later step's directory is not
    // this run's to remove, and sorting it in would remove the one just written).
    std::vector<fs::path> all;
    for (const auto& e : fs::directory_iterator(root)) {
      const auto file = e.path().filename().string();
      if (e.is_directory() && file.rfind("step-", 0) == 0 && e.path().extension() != ".tmp" &&
          file <= name)
        all.push_back(e.path());
    }
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) remove_tree(all[i]);
  }
  comm.barrier();
}

std::optional<fs::path> latest_checkpoint(const fs::path& out_dir) {
  const fs::path f = out_dir / "checkpoints" / "latest";
  if (!fs::exists(f)) return std::nullopt;
  std::string name = read_text_file(f, 4096);
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  UNIATTN_CHECK(name.rfind("step-", 0) == 0 && name.find('/') == std::string::npos, f,
                ": malformed (expected step-NNNNNNNN)");
  const fs::path d = out_dir / "checkpoints" / name;
  if (fs::is_directory(d)) return d;
  // A crash between replacing a checkpoint of the same step and renaming the new one leaves
  // `latest` naming a missing directory: fall back to the newest complete checkpoint.
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(out_dir / "checkpoints"))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0 &&
        e.path().extension() != ".tmp" && fs::exists(e.path() / "state.json"))
      all.push_back(e.path());
  UNIATTN_CHECK(!all.empty(), f, " names ", name,
                ", which does not exist, and no other "
                "checkpoint is complete");
  std::sort(all.begin(), all.end());
  return all.back();
}

TrainState read_state(const fs::path& dir, int world, bool zero1) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(dir / "state.json", 1 << 20));
  } catch (const nlohmann::json::exception& e) {
    fail(dir / "state.json", ": invalid JSON: ", e.what());
  }
  TrainState st;
  try {
    st.global_step = j.at("global_step").get<int64_t>();
    st.stage = j.at("stage").get<int64_t>();
    st.stage_step = j.at("stage_step").get<int64_t>();
    st.tokens = j.at("tokens").get<int64_t>();
    st.zero1 = j.at("zero1").get<bool>();
    st.last_loss = j.value("last_loss", 0.0);
    // Checkpoints from before bf16_weights existed hold fp32 weights and state.
    const auto wd = j.value("weights_dtype", std::string("f32"));
    UNIATTN_CHECK(wd == "f32" || wd == "bf16", dir, "/state.json: weights_dtype is '", wd,
                  "'; expected f32 or bf16");
    st.weights_dtype = wd == "bf16" ? at::kBFloat16 : at::kFloat;
    if (j.contains("fingerprint")) st.fingerprint = j.at("fingerprint").dump();
    const int ws = j.at("world_size").get<int>();
    const bool was = st.zero1 && ws > 1, now = zero1 && world > 1;
    UNIATTN_CHECK(was == now && (!was || ws == world), dir, ": written by ", ws, " rank(s)",
                  was ? " with ZeRO-1 optimiser shards" : "", "; this job has ", world, " rank(s)",
                  now ? " with ZeRO-1" : "",
                  ": resume with the same world size and distributed.zero1");
  } catch (const nlohmann::json::exception& e) {
    fail(dir / "state.json", ": ", e.what());
  }
  UNIATTN_CHECK(st.global_step >= 0 && st.stage >= 0 && st.stage_step >= 0, dir,
                "/state.json: negative step");
  return st;
}

void load_optimizer(const fs::path& dir, int rank, torch::optim::Optimizer* opt) {
  const fs::path f = dir / ("optimizer-rank" + std::to_string(rank) + ".pt");
  // Unsharded state written by one rank serves every rank.
  const fs::path src = fs::exists(f) ? f : dir / "optimizer-rank0.pt";
  UNIATTN_CHECK(fs::exists(src), dir, ": no optimizer-rank", rank, ".pt");
  torch::serialize::InputArchive ar;
  ar.load_from(src.string());
  at::Tensor has;
  ar.read("has_optimizer", has);
  if (opt && has.item<int64_t>() == 1) opt->load(ar);
  at::Tensor rng;
  if (ar.try_read("rng_cpu", rng)) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(rng);
  }
}

void load_weights(const fs::path& dir, CausalLM& model) {
  LoadOptions lo;
  // In the model's own dtype: the checkpoint stores the weights as trained, so this is exact.
  for (auto& kv : model->named_parameters()) {
    lo.dtype = kv.value().scalar_type();
    break;
  }
  auto saved = load_model(dir, lo);
  auto src = saved->named_parameters();
  at::NoGradGuard ng;
  for (auto& kv : model->named_parameters()) {
    const auto* s = src.find(kv.key());
    UNIATTN_CHECK(s, dir, ": checkpoint lacks ", kv.key());
    UNIATTN_CHECK(s->sizes() == kv.value().sizes(), dir, ": ", kv.key(), " has shape ", s->sizes(),
                  ", the model ", kv.value().sizes());
    kv.value().copy_(*s);
  }
}

void truncate_metrics(const fs::path& file, int64_t max_step) {
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      if (nlohmann::json::parse(line).at("step").get<int64_t>() > max_step) continue;
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut by a crash
    }
    kept += line + "\n";
  }
  write_text_atomic(file, kept);
}

}  // namespace uniattn::train_detail
