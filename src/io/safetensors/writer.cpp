// write_safetensors / write_checkpoint: every input is validated before the first byte is
// written, and each file goes through write_file_atomic so a failure never leaves a torn file.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "detail.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/safetensors.h"

namespace uniattn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using safetensors_detail::shape_str;
using safetensors_detail::tensor_nbytes;

// Validates names, shapes and data sizes; returns each tensor's byte size.
std::vector<std::uint64_t> validate(const std::vector<TensorToWrite>& tensors,
                                    const std::string& where) {
  std::vector<std::uint64_t> sizes;
  std::set<std::string_view> seen;
  for (const auto& t : tensors) {
    UNIATTN_CHECK(!t.name.empty(), where, ": cannot write a tensor with an empty name");
    UNIATTN_CHECK(t.name != "__metadata__", where,
                  ": \"__metadata__\" is reserved and cannot name a tensor");
    UNIATTN_CHECK(seen.insert(t.name).second, where, ": tensor '", t.name,
                  "' is given more than once");
    const std::string dt = dtype_name(t.dtype);  // throws on an out-of-range enum value
    const auto nbytes = tensor_nbytes(t.dtype, t.shape);
    UNIATTN_CHECK(nbytes.has_value(), where, ": tensor '", t.name, "': shape ", shape_str(t.shape),
                  " has a negative dimension or overflows");
    UNIATTN_CHECK(t.data.size() == *nbytes, where, ": tensor '", t.name, "': ", t.data.size(),
                  " bytes of data given but dtype ", dt, " with shape ", shape_str(t.shape),
                  " needs ", *nbytes);
    sizes.push_back(*nbytes);
  }
  return sizes;
}

// Writes tensors[first, last) as one file; `sizes` are their validated byte sizes.
void write_one(const fs::path& path, const std::vector<TensorToWrite>& tensors,
               const std::vector<std::uint64_t>& sizes, std::size_t first, std::size_t last,
               const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  std::uint64_t offset = 0;
  for (std::size_t i = first; i < last; ++i) {
    const auto& t = tensors[i];
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + sizes[i]}}};
    offset += sizes[i];
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  // Pad so the data buffer (at 8 + header length) is 8-byte aligned for any dtype.
  text.append((8 - text.size() % 8) % 8, ' ');
  UNIATTN_CHECK(text.size() <= safetensors_detail::kMaxHeaderBytes, path.string(), ": header of ",
                text.size(), " bytes exceeds the format's limit");

  write_file_atomic(path, [&](std::FILE* f) {
    auto put = [&](const void* p, std::size_t n) {
      UNIATTN_CHECK(n == 0 || std::fwrite(p, 1, n, f) == n, "cannot write ", path.string());
    };
    unsigned char len[8];
    std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    put(len, 8);
    put(text.data(), text.size());
    for (std::size_t i = first; i < last; ++i) put(tensors[i].data.data(), tensors[i].data.size());
  });
}

std::string shard_name(std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

}  // namespace

void write_safetensors(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const auto sizes = validate(tensors, path.string());
  write_one(path, tensors, sizes, 0, tensors.size(), metadata);
}

void write_checkpoint(const fs::path& dir, const std::vector<TensorToWrite>& tensors,
                      std::size_t max_shard_bytes,
                      const std::map<std::string, std::string>& metadata) {
  const auto sizes = validate(tensors, dir.string());
  UNIATTN_CHECK(max_shard_bytes > 0, dir.string(), ": max_shard_bytes must be positive");
  // Greedy packing in the given order: start a new shard when the next tensor would overflow a
  // non-empty one.
  std::vector<std::size_t> starts{0};
  std::uint64_t cur = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (cur > 0 && cur + sizes[i] > max_shard_bytes) {
      starts.push_back(i);
      cur = 0;
    }
    cur += sizes[i];
  }
  starts.push_back(tensors.size());
  const std::size_t n = starts.size() - 1;
  fs::create_directories(dir);
  std::error_code ec;
  if (n == 1) {
    write_one(dir / "model.safetensors", tensors, sizes, 0, tensors.size(), metadata);
    fs::remove(dir / "model.safetensors.index.json", ec);
    return;
  }
  json weight_map = json::object();
  std::uint64_t total = 0;
  for (std::size_t s = 0; s < n; ++s) {
    const std::string name = shard_name(s + 1, n);
    write_one(dir / name, tensors, sizes, starts[s], starts[s + 1], metadata);
    for (std::size_t i = starts[s]; i < starts[s + 1]; ++i) {
      weight_map[tensors[i].name] = name;
      total += sizes[i];
    }
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text_atomic(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  // model.safetensors would take precedence over the index in SafetensorsCheckpoint::open.
  fs::remove(dir / "model.safetensors", ec);
}

}  // namespace uniattn
