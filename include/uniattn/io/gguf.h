// A bounds-checked reader for GGUF files (the llama.cpp checkpoint format) and a dequantiser for
// its common tensor types. No LibTorch: tensors come back as float32 buffers in row-major order of
// torch_shape(), ready to be wrapped by the model layer.
//
// Every size, count and offset read from the file is checked against the file's size before it
// is used; malformed files raise uniattn::Error naming the file and the key or tensor at fault.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace uniattn {

class MappedFile;

// Tensor element types, numbered as in ggml. Only the ones listed here are accepted by
// GgufFile::open; other ggml types (IQ*, TQ*, ...) are rejected with an error naming the tensor.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,  // ggml's intermediate type for dot products; never stored, rejected by open()
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

// "Q4_K", "F16", ... for every number ggml has assigned; "unknown" otherwise (never throws).
const char* ggml_type_name(GgmlType type);
// Elements per block (1 for F32/F16/BF16, 32 or 256 for quantised types) and bytes per block.
// Throw uniattn::Error for a type this reader cannot dequantise.
int64_t ggml_block_size(GgmlType type);
int64_t ggml_type_size(GgmlType type);

// IEEE half and bfloat16 to float, exact for every bit pattern (subnormals, infinities, NaNs).
float half_to_float(uint16_t bits);
float bf16_to_float(uint16_t bits);

// GGUF metadata value types, numbered as in the file.
enum class GgufValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
const char* gguf_value_type_name(GgufValueType type);

// One metadata value: a scalar, a string, or an array of scalars or strings (nested arrays are
// rejected when the file is opened). Accessors throw uniattn::Error naming the key when the value
// has another type.
class GgufValue {
 public:
  GgufValue() = default;

  GgufValueType type() const { return type_; }
  // For arrays: the element type. For scalars: the same as type().
  GgufValueType element_type() const { return elem_; }
  bool is_array() const { return type_ == GgufValueType::ARRAY; }
  bool is_string() const { return type_ == GgufValueType::STRING; }
  bool is_integer() const;  // any of the eight integer types (not BOOL), scalar
  bool is_float() const;    // FLOAT32 or FLOAT64, scalar
  bool is_bool() const { return type_ == GgufValueType::BOOL; }
  // Number of array elements (1 for a scalar).
  std::size_t size() const;

  const std::string& as_string() const;
  // Any integer type; throws for a UINT64 above INT64_MAX.
  int64_t as_int() const;
  // FLOAT32/FLOAT64, and integers (converted) so that "1" written as an int still reads as 1.0.
  double as_float() const;
  bool as_bool() const;
  const std::vector<std::string>& as_string_array() const;
  std::vector<int64_t> as_int_array() const;   // arrays of any integer type (or BOOL)
  std::vector<double> as_float_array() const;  // arrays of floats or integers
  // A short human-readable type, e.g. "UINT32" or "ARRAY[STRING] of 3".
  std::string describe() const;

 private:
  friend class GgufParser;
  [[noreturn]] void wrong_type(const char* wanted) const;
  std::string where_;  // "<file>: metadata key 'k'", for error messages
  GgufValueType type_ = GgufValueType::UINT8;
  GgufValueType elem_ = GgufValueType::UINT8;
  // Integers (UINT64 stored bit-cast), bools (0/1), floats, strings: scalars are element 0.
  std::vector<int64_t> ints_;
  std::vector<double> floats_;
  std::vector<std::string> strings_;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the innermost (contiguous) dimension
  uint64_t offset = 0;      // absolute byte offset of the data in the file
  uint64_t nbytes = 0;

  // The PyTorch shape: ne reversed. dequantize() returns elements row-major in this shape.
  std::vector<int64_t> torch_shape() const;
  int64_t numel() const;
  // Rows = numel / ne[0]; a row is the unit dequantize_rows() works in.
  int64_t num_rows() const;
};

class GgufFile {
 public:
  // Maps the file and parses and validates the header, metadata and tensor infos: magic,
  // version (2 or 3), counts and string lengths bounded by the file size, value types, tensor
  // dims (1..4, positive, no overflow, rows a whole number of blocks), known tensor types,
  // aligned offsets, tensor data inside the file, unique keys and names.
  // Throws uniattn::Error naming the file and what is wrong.
  static GgufFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const;
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the tensor data section

  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  // Throws uniattn::Error naming the key if it is missing.
  const GgufValue& at(const std::string& key) const;
  // Typed getters: throw if the key is missing or has another type. The overloads with a
  // default return it when the key is missing (but still throw on a type mismatch).
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& dflt) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t dflt) const;
  double get_float(const std::string& key) const;
  double get_float(const std::string& key, double dflt) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool dflt) const;

  // Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr if there is no tensor of that name.
  const GgufTensorInfo* find(const std::string& name) const;
  // Like find(), but throws uniattn::Error naming the tensor if it is missing.
  const GgufTensorInfo& tensor(const std::string& name) const;

  // The tensor's bytes as stored (validated to lie inside the file).
  std::span<const std::byte> raw(const GgufTensorInfo& info) const;
  // All elements as float32, row-major in info.torch_shape() order. Large tensors are split over
  // a few threads. Throws only if `info` does not belong to this file.
  std::vector<float> dequantize(const GgufTensorInfo& info) const;
  // Same, into `out`, which must hold info.numel() floats.
  void dequantize_into(const GgufTensorInfo& info, float* out) const;
  // Rows [row_begin, row_begin + row_count) (a row is ne[0] elements) into `out`, which must hold
  // row_count * ne[0] floats; e.g. a few embedding rows without dequantising the whole table.
  // Throws uniattn::Error if the range is outside the tensor.
  void dequantize_rows(const GgufTensorInfo& info, int64_t row_begin, int64_t row_count,
                       float* out) const;

 private:
  friend class GgufParser;
  GgufFile() = default;
  void check_owned(const GgufTensorInfo& info) const;

  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> by_name_;
};

}  // namespace uniattn
