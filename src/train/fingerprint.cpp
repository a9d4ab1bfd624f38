// The training run's fingerprint (fingerprint.h): the result-changing config keys, flattened from
// TrainConfig::to_yaml so that a key added there counts unless it is listed here as operational,
// and content hashes of the files the config names.
#include "fingerprint.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cstdio>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn::train_detail {
namespace {
namespace fs = std::filesystem;

// Keys (exact, or a section ending in '.') that change how the work is done but not its result.
// distributed.zero1 and the world size are checked by the checkpoint reader itself.
// training.fused_linear_cross_entropy computes the same loss in another order of operations.
constexpr std::array<const char*, 10> kOperational = {"output_dir",
                                                      "training.device",
                                                      "training.micro_batch",
                                                      "training.log_every",
                                                      "training.progress",
                                                      "training.activation_checkpointing",
                                                      "training.fused_linear_cross_entropy",
                                                      "optimizer.fused",
                                                      "checkpoint.",
                                                      "distributed."};
// Keys that name files: their contents are fingerprinted instead of the path.
// distill.teacher counts as a file key: "base" leaves it out (model.path's hash covers that
// teacher), so a change between base and a path shows as a change of files.
constexpr std::array<const char*, 6> kFileKeys = {"model.path",     "model.wc_checkpoint",
                                                  "data.train",     "data.eval",
                                                  "data.tokenizer", "distill.teacher"};
// Evaluation settings (eval.every_steps, eval.batch_tokens) change when, not what, is measured.
constexpr const char* kEvalSection = "eval.";

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

bool result_changing(const std::string& key) {
  if (starts_with(key, kEvalSection)) return false;
  for (const char* k : kOperational)
    if (key == k || (k[std::char_traits<char>::length(k) - 1] == '.' && starts_with(key, k)))
      return false;
  for (const char* k : kFileKeys)
    if (key == k) return false;
  return true;
}

std::string hex(uint64_t h) {
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

void flatten(const YAML::Node& n, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n) {
      const auto key = kv.first.as<std::string>();
      flatten(kv.second, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i)
      flatten(n[i], prefix + "[" + std::to_string(i) + "]", out);
  } else {
    out[prefix] = n.IsNull() ? "" : n.Scalar();
  }
}

// FNV-1a over `n` bytes at `offset` of the file's mapping.
uint64_t hash_range(uint64_t h, const MappedFile& f, uint64_t offset, uint64_t n) {
  const auto bytes = f.slice(offset, n, f.path().string());
  return fnv1a(h, bytes.data(), bytes.size());
}

uint64_t hash_file_sampled(uint64_t h, const fs::path& p) {
  constexpr uint64_t kFull = 64ull << 20, kChunk = 1ull << 20, kChunks = 16;
  const auto f = MappedFile::open(p);
  const uint64_t size = f->size();
  const std::string name = p.filename().string();
  h = fnv1a(h, name.data(), name.size());
  h = fnv1a(h, &size, sizeof size);
  if (size <= kFull) return hash_range(h, *f, 0, size);
  for (uint64_t i = 0; i < kChunks; ++i)
    h = hash_range(h, *f, (size - kChunk) / (kChunks - 1) * i, kChunk);
  return h;
}

nlohmann::json file_entry(const std::string& path, bool whole) {
  const std::string h = whole ? hex(fnv1a_file(path)) : content_identity(path);
  return {{"path", path}, {"fnv1a", h}};
}

std::string describe_file(const nlohmann::json& f) {
  if (f.is_null()) return "(none)";
  return f.value("path", std::string()) + " [" + f.value("fnv1a", std::string()) + "]";
}

}  // namespace

std::string content_identity(const fs::path& path) {
  std::error_code ec;
  UNIATTN_CHECK(fs::exists(path, ec), path, ": not found (fingerprinting the run's inputs)");
  if (!fs::is_directory(path, ec)) return hex(hash_file_sampled(kFnv1aOffsetBasis, path));
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && e.path().filename().string().rfind('.', 0) != 0)
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  uint64_t h = kFnv1aOffsetBasis;
  for (const auto& f : files) h = hash_file_sampled(h, f);
  return hex(h);
}

std::map<std::string, std::string> flatten_config_yaml(const std::string& yaml_text) {
  std::map<std::string, std::string> out;
  try {
    flatten(YAML::Load(yaml_text), "", out);
  } catch (const YAML::Exception& e) {
    fail("config YAML: ", e.what());
  }
  return out;
}

nlohmann::json run_fingerprint(const TrainConfig& c) {
  nlohmann::json config = nlohmann::json::object(), files = nlohmann::json::object();
  for (const auto& [k, v] : flatten_config_yaml(c.to_yaml()))
    if (result_changing(k)) config[k] = v;
  files["model.path"] = file_entry(c.model.path, false);
  if (!c.model.wc_checkpoint.empty())
    files["model.wc_checkpoint"] = file_entry(c.model.wc_checkpoint, false);
  files["data.train"] = file_entry(c.data.train, true);
  if (!c.data.eval.empty()) files["data.eval"] = file_entry(c.data.eval, true);
  if (!c.data.tokenizer.empty()) files["data.tokenizer"] = file_entry(c.data.tokenizer, false);
  if (c.distill && c.distill->teacher != "base")
    files["distill.teacher"] = file_entry(c.distill->teacher, false);
  return {{"config", config}, {"files", files}};
}

std::vector<std::string> key_changes(const std::map<std::string, std::string>& before,
                                     const std::map<std::string, std::string>& now) {
  std::map<std::string, std::pair<std::string, std::string>> all;
  for (const auto& [k, v] : before) all[k].first = v;
  for (const auto& [k, v] : now) all[k].second = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : all) {
    const bool was = before.count(k) > 0, is = now.count(k) > 0;
    if (was && is && v.first == v.second) continue;
    out.push_back(k + ": " + (was ? v.first : "(absent)") + " -> " + (is ? v.second : "(absent)"));
  }
  return out;
}

std::vector<std::string> fingerprint_changes(const nlohmann::json& before,
                                             const nlohmann::json& now) {
  std::map<std::string, std::string> cb, cn;
  for (const auto& [k, v] : before.at("config").items()) cb[k] = v.get<std::string>();
  for (const auto& [k, v] : now.at("config").items()) cn[k] = v.get<std::string>();
  auto out = key_changes(cb, cn);
  const auto& fb = before.at("files");
  const auto& fn = now.at("files");
  for (const char* k : kFileKeys) {
    const auto b = fb.contains(k) ? fb.at(k) : nlohmann::json();
    const auto n = fn.contains(k) ? fn.at(k) : nlohmann::json();
    const auto hash = [](const nlohmann::json& f) {
      return f.is_null() ? std::string() : f.value("fnv1a", std::string());
    };
    if (hash(b) != hash(n))
      out.push_back(std::string(k) + " (contents): " + describe_file(b) + " -> " +
                    describe_file(n));
  }
  return out;
}

}  // namespace uniattn::train_detail
