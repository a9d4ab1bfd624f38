// GGUF parsing and validation. Every length, count and offset read from the file is checked
// against the bytes that are actually there before anything is allocated or read.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <limits>
#include <thread>

#include "dequant.h"
#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/gguf.h"

namespace uniattn {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");

namespace {

constexpr uint32_t kMaxDims = 4;            // GGML_MAX_DIMS
constexpr uint64_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT
constexpr uint64_t kMaxAlignment = 1u << 20;
// Smallest possible encodings, used to bound counts by the bytes left in the file.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // key length, value type, a UINT8
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset

// Sequential reader over the mapped file that never reads past its end.
class Cursor {
 public:
  explicit Cursor(const MappedFile& f) : f_(f) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return f_.size() - pos_; }
  std::string file() const { return f_.path().string(); }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, f_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    const uint64_t at = pos_;
    const uint64_t len = read<uint64_t>("the length of " + what);
    UNIATTN_CHECK(len <= left(), file(), ": string length ", len, " at offset ", at, " (", what,
                  ") runs past the end of the file (only ", left(), " bytes left)");
    std::string s(reinterpret_cast<const char*>(f_.data() + pos_), static_cast<std::size_t>(len));
    pos_ += len;
    return s;
  }

  void need(uint64_t n, const std::string& what) {
    UNIATTN_CHECK(n <= left(), file(), ": truncated GGUF file: reading ", what, " needs ", n,
                  " bytes at offset ", pos_, " but the file has only ", f_.size(), " bytes");
  }

 private:
  const MappedFile& f_;
  uint64_t pos_ = 0;
};

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::FLOAT64); }

// Bytes of one encoded element (strings: the smallest possible, an empty one).
uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::BOOL:
      return 1;
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
      return 2;
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::FLOAT32:
      return 4;
    default:
      return 8;  // UINT64, INT64, FLOAT64, STRING length
  }
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

// Builds a GgufFile; a friend of GgufFile and GgufValue so that the parsed fields go straight in.
class GgufParser {
 public:
  explicit GgufParser(std::shared_ptr<MappedFile> f) : f_(std::move(f)), c_(*f_) {}

  GgufFile parse() {
    GgufFile out;
    out.file_ = f_;
    parse_header(out);
    parse_metadata(out);
    parse_tensor_infos(out);
    return out;
  }

 private:
  std::string file() const { return f_->path().string(); }

  void parse_header(GgufFile& out) {
    c_.need(4, "the magic");
    const auto* m = reinterpret_cast<const unsigned char*>(f_->data());
    if (std::memcmp(m, "GGUF", 4) != 0) {
      char hex[32];
      std::snprintf(hex, sizeof hex, "%02x %02x %02x %02x", m[0], m[1], m[2], m[3]);
      fail(file(), ": not a GGUF file: bad magic (first bytes are ", hex,
           ", expected \"GGUF\" = 47 47 55 46)");
    }
    c_.read<uint32_t>("the magic");
    const uint32_t version = c_.read<uint32_t>("the version");
    const uint32_t swapped = __builtin_bswap32(version);
    UNIATTN_CHECK(swapped > 3 || version == swapped, file(),
                  ": this looks like a big-endian GGUF file (version field ", version,
                  "); only little-endian files are supported");
    UNIATTN_CHECK(version == 2 || version == 3, file(), ": unsupported GGUF version ", version,
                  " (uniattn reads versions 2 and 3)");
    out.version_ = version;
    n_tensors_ = c_.read<uint64_t>("the tensor count");
    n_kv_ = c_.read<uint64_t>("the metadata key/value count");
    // Bound both counts by what could possibly fit in the rest of the file, so that a corrupt
    // count fails here instead of driving a huge allocation or a long loop.
    UNIATTN_CHECK(n_tensors_ <= c_.left() / kMinTensorInfoBytes, file(), ": tensor count ",
                  n_tensors_, " is impossible: the ", c_.left(),
                  " bytes after the header cannot hold that many tensor infos");
    UNIATTN_CHECK(n_kv_ <= c_.left() / kMinKvBytes, file(), ": metadata key/value count ", n_kv_,
                  " is impossible: the ", c_.left(),
                  " bytes after the header cannot hold that many entries");
  }

  void parse_metadata(GgufFile& out) {
    for (uint64_t i = 0; i < n_kv_; ++i) {
      std::string key = c_.read_string(detail::concat("metadata key #", i));
      const std::string where = detail::concat(file(), ": metadata key '", key, "'");
      UNIATTN_CHECK(!out.kv_.count(key), file(), ": duplicate metadata key '", key, "'");
      const uint32_t t = c_.read<uint32_t>("the value type of key '" + key + "'");
      UNIATTN_CHECK(valid_value_type(t), where, " has unknown value type ", t);
      GgufValue v;
      v.where_ = where;
      v.type_ = v.elem_ = static_cast<GgufValueType>(t);
      if (v.type_ == GgufValueType::ARRAY) {
        const uint32_t et = c_.read<uint32_t>("the element type of key '" + key + "'");
        UNIATTN_CHECK(valid_value_type(et), where, " is an array of unknown value type ", et);
        UNIATTN_CHECK(et != static_cast<uint32_t>(GgufValueType::ARRAY), where,
                      " is an array of arrays, which uniattn does not support");
        v.elem_ = static_cast<GgufValueType>(et);
        const uint64_t n = c_.read<uint64_t>("the array length of key '" + key + "'");
        UNIATTN_CHECK(n <= c_.left() / min_value_bytes(v.elem_), where, " claims ", n, " ",
                      gguf_value_type_name(v.elem_),
                      " elements, more than the rest of the file can hold (", c_.left(),
                      " bytes left)");
        read_elements(v, n, key);
      } else {
        read_elements(v, 1, key);
      }
      out.kv_.emplace(std::move(key), std::move(v));
    }
    out.alignment_ = kDefaultAlignment;
    if (auto it = out.kv_.find("general.alignment"); it != out.kv_.end()) {
      const GgufValue& a = it->second;
      UNIATTN_CHECK(a.is_integer(), file(), ": general.alignment is ", a.describe(),
                    ", not an integer");
      const int64_t al = a.as_int();
      UNIATTN_CHECK(al > 0 && std::has_single_bit(static_cast<uint64_t>(al)) &&
                        static_cast<uint64_t>(al) <= kMaxAlignment,
                    file(), ": general.alignment ", al, " must be a power of two between 1 and ",
                    kMaxAlignment);
      out.alignment_ = static_cast<uint64_t>(al);
    }
  }

  void read_elements(GgufValue& v, uint64_t n, const std::string& key) {
    const std::string what = "the value of key '" + key + "'";
    const auto count = static_cast<std::size_t>(n);
    switch (v.elem_) {
      case GgufValueType::STRING:
        v.strings_.reserve(count);
        for (uint64_t i = 0; i < n; ++i) v.strings_.push_back(c_.read_string(what));
        return;
      case GgufValueType::FLOAT32:
        v.floats_.reserve(count);
        for (uint64_t i = 0; i < n; ++i) v.floats_.push_back(c_.read<float>(what));
        return;
      case GgufValueType::FLOAT64:
        v.floats_.reserve(count);
        for (uint64_t i = 0; i < n; ++i) v.floats_.push_back(c_.read<double>(what));
        return;
      default:
        break;
    }
    v.ints_.reserve(count);
    for (uint64_t i = 0; i < n; ++i) v.ints_.push_back(read_int(v.elem_, what, key));
  }

  int64_t read_int(GgufValueType t, const std::string& what, const std::string& key) {
    switch (t) {
      case GgufValueType::UINT8:
        return c_.read<uint8_t>(what);
      case GgufValueType::INT8:
        return c_.read<int8_t>(what);
      case GgufValueType::UINT16:
        return c_.read<uint16_t>(what);
      case GgufValueType::INT16:
        return c_.read<int16_t>(what);
      case GgufValueType::UINT32:
        return c_.read<uint32_t>(what);
      case GgufValueType::INT32:
        return c_.read<int32_t>(what);
      case GgufValueType::UINT64:
        return static_cast<int64_t>(c_.read<uint64_t>(what));
      case GgufValueType::INT64:
        return c_.read<int64_t>(what);
      case GgufValueType::BOOL: {
        const uint8_t b = c_.read<uint8_t>(what);
        UNIATTN_CHECK(b <= 1, file(), ": metadata key '", key, "' has bool byte ", int{b},
                      " (expected 0 or 1)");
        return b;
      }
      default:
        fail(file(), ": internal error: value type ", static_cast<uint32_t>(t));
    }
  }

  void parse_tensor_infos(GgufFile& out) {
    out.tensors_.reserve(static_cast<std::size_t>(n_tensors_));
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      GgufTensorInfo t;
      t.name = c_.read_string(detail::concat("the name of tensor #", i));
      const std::string tn = detail::concat(file(), ": tensor '", t.name, "'");
      UNIATTN_CHECK(!out.by_name_.count(t.name), file(), ": duplicate tensor name '", t.name, "'");
      const uint32_t n_dims = c_.read<uint32_t>("the dimension count of tensor '" + t.name + "'");
      UNIATTN_CHECK(n_dims >= 1 && n_dims <= kMaxDims, tn, " has ", n_dims,
                    " dimensions; GGUF tensors have 1 to ", kMaxDims);
      uint64_t numel = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t ne = c_.read<uint64_t>("the shape of tensor '" + t.name + "'");
        UNIATTN_CHECK(ne > 0 && ne <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                      tn, " has invalid dimension ne[", d, "] = ", ne);
        UNIATTN_CHECK(!mul_overflows(numel, ne, &numel) &&
                          numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                      tn, ": the element count overflows (shape dimension ne[", d, "] = ", ne, ")");
        t.ne.push_back(static_cast<int64_t>(ne));
      }
      const uint32_t type = c_.read<uint32_t>("the type of tensor '" + t.name + "'");
      t.type = static_cast<GgmlType>(type);
      check_type(t, tn, type);
      const auto block = static_cast<uint64_t>(ggml_block_size(t.type));
      UNIATTN_CHECK(static_cast<uint64_t>(t.ne[0]) % block == 0, tn,
                    ": row length ne[0] = ", t.ne[0], " is not a multiple of the ",
                    ggml_type_name(t.type), " block size ", block);
      UNIATTN_CHECK(
          !mul_overflows(numel / block, static_cast<uint64_t>(ggml_type_size(t.type)), &t.nbytes),
          tn, ": the byte size overflows");
      t.offset = c_.read<uint64_t>("the data offset of tensor '" + t.name + "'");
      out.by_name_.emplace(t.name, out.tensors_.size());
      out.tensors_.push_back(std::move(t));
    }
    // The data section starts at the first aligned offset after the tensor infos.
    const uint64_t end = c_.pos();
    out.data_offset_ = (end + out.alignment_ - 1) / out.alignment_ * out.alignment_;
    const uint64_t size = f_->size();
    for (auto& t : out.tensors_) {
      const std::string tn = detail::concat(file(), ": tensor '", t.name, "'");
      UNIATTN_CHECK(t.offset % out.alignment_ == 0, tn, ": data offset ", t.offset,
                    " is misaligned (not a multiple of the alignment ", out.alignment_, ")");
      const uint64_t abs = out.data_offset_ + t.offset;
      UNIATTN_CHECK(
          t.offset <= size && out.data_offset_ <= size - t.offset && t.nbytes <= size - abs, tn,
          " (", ggml_type_name(t.type), ", ", t.nbytes, " bytes) has data at [", out.data_offset_,
          " + ", t.offset, ") that extends past the end of the file (", size,
          " bytes); is the file truncated?");
      t.offset = abs;
    }
  }

  void check_type(const GgufTensorInfo& t, const std::string& tn, uint32_t type) {
    const char* name = ggml_type_name(t.type);
    UNIATTN_CHECK(std::strcmp(name, "unknown") != 0, tn, " has unknown ggml type ", type);
    bool supported = true;
    try {
      ggml_block_size(t.type);
    } catch (const Error&) {
      supported = false;
    }
    UNIATTN_CHECK(supported, tn, " has ggml type ", type, " (", name,
                  "), which uniattn cannot dequantize");
  }

  std::shared_ptr<MappedFile> f_;
  Cursor c_;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
};

GgufFile GgufFile::open(const std::filesystem::path& path) {
  return GgufParser(MappedFile::open(path)).parse();
}

const std::filesystem::path& GgufFile::path() const { return file_->path(); }

const GgufValue& GgufFile::at(const std::string& key) const {
  auto it = kv_.find(key);
  UNIATTN_CHECK(it != kv_.end(), path().string(), ": missing metadata key '", key, "'");
  return it->second;
}

std::string GgufFile::get_string(const std::string& key) const { return at(key).as_string(); }
std::string GgufFile::get_string(const std::string& key, const std::string& dflt) const {
  return has(key) ? at(key).as_string() : dflt;
}
int64_t GgufFile::get_int(const std::string& key) const { return at(key).as_int(); }
int64_t GgufFile::get_int(const std::string& key, int64_t dflt) const {
  return has(key) ? at(key).as_int() : dflt;
}
double GgufFile::get_float(const std::string& key) const { return at(key).as_float(); }
double GgufFile::get_float(const std::string& key, double dflt) const {
  return has(key) ? at(key).as_float() : dflt;
}
bool GgufFile::get_bool(const std::string& key) const { return at(key).as_bool(); }
bool GgufFile::get_bool(const std::string& key, bool dflt) const {
  return has(key) ? at(key).as_bool() : dflt;
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find(name);
  UNIATTN_CHECK(t, path().string(), ": no tensor named '", name, "'");
  return *t;
}

// The info may be a copy, but must describe a tensor of this file exactly: only then are its
// offset and size known to be inside the mapping.
void GgufFile::check_owned(const GgufTensorInfo& info) const {
  const GgufTensorInfo* t = find(info.name);
  UNIATTN_CHECK(t && t->offset == info.offset && t->nbytes == info.nbytes && t->type == info.type &&
                    t->ne == info.ne,
                path().string(), ": tensor info '", info.name, "' does not belong to this file");
}

std::span<const std::byte> GgufFile::raw(const GgufTensorInfo& info) const {
  check_owned(info);
  return file_->slice(info.offset, info.nbytes, "tensor '" + info.name + "'");
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& info) const {
  check_owned(info);
  std::vector<float> out(static_cast<std::size_t>(info.numel()));
  dequantize_rows(info, 0, info.num_rows(), out.data());
  return out;
}

void GgufFile::dequantize_into(const GgufTensorInfo& info, float* out) const {
  check_owned(info);
  dequantize_rows(info, 0, info.num_rows(), out);
}

void GgufFile::dequantize_rows(const GgufTensorInfo& info, int64_t row_begin, int64_t row_count,
                               float* out) const {
  check_owned(info);
  const int64_t rows = info.num_rows();
  UNIATTN_CHECK(
      row_begin >= 0 && row_count >= 0 && row_begin <= rows && row_count <= rows - row_begin,
      path().string(), ": rows [", row_begin, ", ", row_begin + row_count, ") are outside tensor '",
      info.name, "' with ", rows, " rows");
  const int64_t block = ggml_block_size(info.type);
  const int64_t bytes = ggml_type_size(info.type);
  const int64_t blocks_per_row = info.ne[0] / block;
  const int64_t first = row_begin * blocks_per_row;
  const int64_t n_blocks = row_count * blocks_per_row;
  const std::byte* src = file_->data() + info.offset;

  // Split large ranges over a few threads: dequantising is memory-bound, so more than a handful
  // does not help, and small tensors are not worth a thread start.
  constexpr int64_t kMinElemsPerThread = int64_t{1} << 18;
  const int64_t elems = n_blocks * block;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t n_threads =
      std::clamp<int64_t>(elems / kMinElemsPerThread, 1, std::min<int64_t>(8, hw));
  if (n_threads == 1) {
    gguf_detail::dequantize_blocks(info.type, src + first * bytes, n_blocks, out);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n_blocks + n_threads - 1) / n_threads;
  for (int64_t b = 0; b < n_blocks; b += per) {
    const int64_t n = std::min(per, n_blocks - b);
    pool.emplace_back([&, b, n] {
      gguf_detail::dequantize_blocks(info.type, src + (first + b) * bytes, n, out + b * block);
    });
  }
  for (auto& t : pool) t.join();
}

}  // namespace uniattn
