// Reading and writing the safetensors checkpoint format without LibTorch: tensors are exposed as
// (name, dtype, shape, byte span) views into a memory-mapped file, and written from byte spans.
//
// Layout of a .safetensors file: an unsigned 64-bit little-endian header length N, then N bytes of
// JSON {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"<key>": "<string>"}}, then the data buffer; offsets are relative to the buffer,
// which starts at byte 8 + N. Tensor bytes are stored row-major, little-endian.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace uniattn {

class MappedFile;

// Element types of the safetensors format that uniattn handles (the format's own names are
// "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL").
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// Bytes per element (BOOL is one byte).
std::size_t dtype_size(DType dtype);
// The safetensors name, e.g. "BF16".
const char* dtype_name(DType dtype);
// Parses a safetensors dtype name (case-sensitive); throws uniattn::Error naming an unknown one.
DType parse_dtype(std::string_view name);

// A tensor inside a mapped file. `data` is numel * dtype_size bytes; it points into the mapping
// of the SafetensorsFile / SafetensorsCheckpoint it came from and lives as long as that object (or
// a copy of it). Files written by other tools may leave `data` unaligned for the element type.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;  // empty for a scalar
  std::span<const std::byte> data;
};

// One .safetensors file, memory-mapped and fully validated on open. Copies share the mapping.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws uniattn::Error naming the file (and the tensor, where one is
  // at fault) if it cannot be read, is truncated, its header is not valid safetensors JSON, a dtype
  // is unknown, a shape is invalid, data offsets are malformed, out of the buffer, of the wrong
  // size for dtype and shape, or overlap another tensor, or a metadata value is not a string.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // All tensors, in the order of their data in the file.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr.
  const TensorView* find(std::string_view name) const;
  // The "__metadata__" string map (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::filesystem::path path_;
  std::shared_ptr<const MappedFile> file_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_;
};

// A model checkpoint: either a single model.safetensors, or model.safetensors.index.json
// ({"metadata": {...}, "weight_map": {"<tensor>": "<shard file>"}}) plus the shard files next to
// it. All files are mapped and validated on open.
class SafetensorsCheckpoint {
 public:
  // `dir_or_file` is a directory (holding model.safetensors, which wins, or
  // model.safetensors.index.json), an *.index.json file, or a single .safetensors file. Throws
  // uniattn::Error if none is found, a file is invalid (see SafetensorsFile::open), the index is
  // malformed or lacks "weight_map", a shard name is not a plain file name (absolute, or holding
  // '/', '\\' or ".."), a shard is missing (naming it), or a tensor listed in the index is absent
  // from its shard (naming both).
  static SafetensorsCheckpoint open(const std::filesystem::path& dir_or_file);

  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const;
  // The tensor `name`; throws uniattn::Error naming it (and the checkpoint) if absent.
  const TensorView& at(std::string_view name) const;
  // The files making up the checkpoint (one, or the shards in name order).
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // The "__metadata__" of the files, merged (the first file in files() that sets a key wins).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::filesystem::path path_;
  std::vector<SafetensorsFile> files_;
  // name -> (index into files_, index into that file's tensors()).
  std::map<std::string, std::pair<std::size_t, std::size_t>, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: `data` must hold exactly numel(shape) * dtype_size(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;
};

// Writes one .safetensors file atomically (an existing file is replaced only on success): the
// header is padded with spaces so the data buffer starts 8-byte aligned, and tensors are stored in
// the given order. `metadata` becomes "__metadata__" (omitted when empty). Throws uniattn::Error,
// before writing anything, on an empty or duplicate name or "__metadata__" as a name, a negative
// dimension, or a data size that does not match dtype and shape; and on I/O errors.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint into `dir` (created if needed). Tensors are packed in order into shards of
// at most `max_shard_bytes` data bytes (a tensor is never split; one larger than the limit gets a
// shard of its own). One shard is written as model.safetensors; N > 1 shards as
// model-0000i-of-0000N.safetensors plus model.safetensors.index.json
// ({"metadata": {"total_size": <data bytes>}, "weight_map": {...}}). Every shard carries
// `metadata`. Each file is written atomically, all inputs are validated before the first one, and
// the entry point of the other layout (a stale model.safetensors or index) is removed afterwards
// so SafetensorsCheckpoint::open(dir) finds what was written. Throws like write_safetensors.
void write_checkpoint(const std::filesystem::path& dir, const std::vector<TensorToWrite>& tensors,
                      std::size_t max_shard_bytes = std::size_t{5} << 30,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace uniattn
