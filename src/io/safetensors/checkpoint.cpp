// SafetensorsCheckpoint: a single model.safetensors or an index plus shards, as laid out by
// Hugging Face model repositories.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"
#include "uniattn/io/safetensors.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

// Shard names come from a file we did not write; they must not reach outside the directory.
void check_shard_name(const std::string& shard, const std::string& tensor,
                      const std::string& where) {
  const bool bad = shard.empty() || shard.find('/') != std::string::npos ||
                   shard.find('\\') != std::string::npos || shard.find("..") != std::string::npos ||
                   shard.find('\0') != std::string::npos || fs::path(shard).is_absolute();
  UNIATTN_CHECK(!bad, where, ": weight_map entry for tensor '", tensor, "' names shard \"", shard,
                "\", which is not a plain file name in the checkpoint directory");
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const fs::path& dir_or_file) {
  SafetensorsCheckpoint c;
  c.path_ = dir_or_file;
  std::error_code ec;
  fs::path index_path;
  fs::path single_path;
  if (fs::is_directory(dir_or_file, ec)) {
    if (fs::exists(dir_or_file / kSingleName, ec)) {
      single_path = dir_or_file / kSingleName;
    } else if (fs::exists(dir_or_file / kIndexName, ec)) {
      index_path = dir_or_file / kIndexName;
    } else {
      fail(dir_or_file.string(), ": no ", kSingleName, " or ", kIndexName, " in this directory");
    }
  } else {
    UNIATTN_CHECK(fs::exists(dir_or_file, ec), dir_or_file.string(),
                  ": no such checkpoint file or directory");
    const std::string fname = dir_or_file.filename().string();
    const std::string suffix = ".index.json";
    if (fname.size() > suffix.size() && fname.ends_with(suffix)) {
      index_path = dir_or_file;
    } else {
      single_path = dir_or_file;
    }
  }

  if (!single_path.empty()) {
    c.files_.push_back(SafetensorsFile::open(single_path));
    const auto& ts = c.files_[0].tensors();
    for (std::size_t i = 0; i < ts.size(); ++i) c.index_[ts[i].name] = {0, i};
    c.metadata_ = c.files_[0].metadata();
    return c;
  }

  const std::string where = index_path.string();
  const std::string text = read_text_file(index_path);
  check_json_depth(text, where);
  const json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
  UNIATTN_CHECK(!index.is_discarded(), where, ": not valid JSON");
  UNIATTN_CHECK(index.is_object(), where, ": not a JSON object but ", index.type_name());
  auto wm = index.find("weight_map");
  UNIATTN_CHECK(wm != index.end(), where, ": no \"weight_map\"");
  UNIATTN_CHECK(wm->is_object(), where, ": \"weight_map\" is not a JSON object but ",
                wm->type_name());

  // Open each distinct shard once, in name order.
  std::map<std::string, std::size_t> shard_index;
  for (const auto& [tensor, shard] : wm->items()) {
    UNIATTN_CHECK(shard.is_string(), where, ": weight_map entry for tensor '", tensor,
                  "' is not a string but ", shard.type_name());
    check_shard_name(shard.get<std::string>(), tensor, where);
    shard_index.emplace(shard.get<std::string>(), 0);
  }
  const fs::path dir = index_path.parent_path();
  for (auto& [shard, idx] : shard_index) {
    const fs::path p = dir / shard;
    UNIATTN_CHECK(fs::exists(p, ec), where, ": shard file ", shard, " is missing (expected at ",
                  p.string(), ")");
    idx = c.files_.size();
    c.files_.push_back(SafetensorsFile::open(p));
  }
  for (const auto& [tensor, shard] : wm->items()) {
    const std::size_t fi = shard_index.at(shard.get<std::string>());
    const TensorView* t = c.files_[fi].find(tensor);
    UNIATTN_CHECK(t != nullptr, where, ": tensor '", tensor,
                  "' is listed in weight_map but absent from shard ", shard.get<std::string>());
    c.index_[tensor] = {fi, static_cast<std::size_t>(t - c.files_[fi].tensors().data())};
  }
  for (const auto& f : c.files_)
    for (const auto& [k, v] : f.metadata()) c.metadata_.emplace(k, v);
  return c;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, loc] : index_) out.push_back(name);
  return out;
}

bool SafetensorsCheckpoint::contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

const TensorView& SafetensorsCheckpoint::at(std::string_view name) const {
  auto it = index_.find(name);
  UNIATTN_CHECK(it != index_.end(), path_.string(), ": checkpoint has no tensor '", name, "'");
  return files_[it->second.first].tensors()[it->second.second];
}

}  // namespace uniattn
