// GGUF/ggml type tables, half-precision conversions, metadata values and tensor-info helpers.
#include <bit>
#include <limits>

#include "uniattn/error.h"
#include "uniattn/io/gguf.h"

namespace uniattn {

const char* ggml_type_name(GgmlType type) {
  // Every number ggml has assigned, so that errors about unsupported types are readable.
  switch (static_cast<uint32_t>(type)) {
    case 0:
      return "F32";
    case 1:
      return "F16";
    case 2:
      return "Q4_0";
    case 3:
      return "Q4_1";
    case 4:
      return "Q4_2";
    case 5:
      return "Q4_3";
    case 6:
      return "Q5_0";
    case 7:
      return "Q5_1";
    case 8:
      return "Q8_0";
    case 9:
      return "Q8_1";
    case 10:
      return "Q2_K";
    case 11:
      return "Q3_K";
    case 12:
      return "Q4_K";
    case 13:
      return "Q5_K";
    case 14:
      return "Q6_K";
    case 15:
      return "Q8_K";
    case 16:
      return "IQ2_XXS";
    case 17:
      return "IQ2_XS";
    case 18:
      return "IQ3_XXS";
    case 19:
      return "IQ1_S";
    case 20:
      return "IQ4_NL";
    case 21:
      return "IQ3_S";
    case 22:
      return "IQ2_S";
    case 23:
      return "IQ4_XS";
    case 24:
      return "I8";
    case 25:
      return "I16";
    case 26:
      return "I32";
    case 27:
      return "I64";
    case 28:
      return "F64";
    case 29:
      return "IQ1_M";
    case 30:
      return "BF16";
    case 34:
      return "TQ1_0";
    case 35:
      return "TQ2_0";
    case 39:
      return "MXFP4";
    case 40:
      return "NVFP4";
    default:
      return "unknown";
  }
}

namespace {

struct TypeTraits {
  int64_t block;  // elements per block; 0 = not dequantisable here
  int64_t bytes;  // bytes per block
};

TypeTraits traits(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
      return {1, 4};
    case GgmlType::F16:
      return {1, 2};
    case GgmlType::BF16:
      return {1, 2};
    case GgmlType::Q4_0:
      return {32, 2 + 16};
    case GgmlType::Q4_1:
      return {32, 2 + 2 + 16};
    case GgmlType::Q5_0:
      return {32, 2 + 4 + 16};
    case GgmlType::Q5_1:
      return {32, 2 + 2 + 4 + 16};
    case GgmlType::Q8_0:
      return {32, 2 + 32};
    case GgmlType::Q2_K:
      return {256, 16 + 64 + 2 + 2};
    case GgmlType::Q3_K:
      return {256, 32 + 64 + 12 + 2};
    case GgmlType::Q4_K:
      return {256, 2 + 2 + 12 + 128};
    case GgmlType::Q5_K:
      return {256, 2 + 2 + 12 + 32 + 128};
    case GgmlType::Q6_K:
      return {256, 128 + 64 + 16 + 2};
    case GgmlType::Q8_K:
      return {256, 4 + 256 + 16 * 2};
    default:
      return {0, 0};
  }
}

}  // namespace

int64_t ggml_block_size(GgmlType type) {
  auto t = traits(type);
  UNIATTN_CHECK(t.block > 0, "ggml type ", static_cast<uint32_t>(type), " is not supported");
  return t.block;
}

int64_t ggml_type_size(GgmlType type) {
  auto t = traits(type);
  UNIATTN_CHECK(t.block > 0, "ggml type ", static_cast<uint32_t>(type), " is not supported");
  return t.bytes;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;  // signed zero
    } else {
      // Subnormal half: renormalise so that the implicit leading 1 reappears at bit 10. The
      // half exponent of a subnormal is 1 - 15; float bias is 127, so start from 127 - 14.
      uint32_t e = 127 - 14;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf, or NaN keeping its payload
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (man << 13);
  }
  return std::bit_cast<float>(bits);
}

float bf16_to_float(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::UINT8:
      return "UINT8";
    case GgufValueType::INT8:
      return "INT8";
    case GgufValueType::UINT16:
      return "UINT16";
    case GgufValueType::INT16:
      return "INT16";
    case GgufValueType::UINT32:
      return "UINT32";
    case GgufValueType::INT32:
      return "INT32";
    case GgufValueType::FLOAT32:
      return "FLOAT32";
    case GgufValueType::BOOL:
      return "BOOL";
    case GgufValueType::STRING:
      return "STRING";
    case GgufValueType::ARRAY:
      return "ARRAY";
    case GgufValueType::UINT64:
      return "UINT64";
    case GgufValueType::INT64:
      return "INT64";
    case GgufValueType::FLOAT64:
      return "FLOAT64";
  }
  return "unknown";
}

// ---- GgufValue ---------------------------------------------------------------------------------

namespace {
bool is_int_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}
bool is_float_type(GgufValueType t) {
  return t == GgufValueType::FLOAT32 || t == GgufValueType::FLOAT64;
}
}  // namespace

bool GgufValue::is_integer() const { return is_int_type(type_); }
bool GgufValue::is_float() const { return is_float_type(type_); }

std::size_t GgufValue::size() const {
  if (!is_array()) return 1;
  if (elem_ == GgufValueType::STRING) return strings_.size();
  if (is_float_type(elem_)) return floats_.size();
  return ints_.size();
}

std::string GgufValue::describe() const {
  if (!is_array()) return gguf_value_type_name(type_);
  return detail::concat("ARRAY[", gguf_value_type_name(elem_), "] of ", size());
}

void GgufValue::wrong_type(const char* wanted) const {
  fail(where_, " is ", describe(), ", not ", wanted);
}

const std::string& GgufValue::as_string() const {
  if (!is_string()) wrong_type("a string");
  return strings_[0];
}

namespace {
int64_t checked_int(const std::string& where, GgufValueType t, int64_t v) {
  // UINT64 values are stored bit-cast; a negative one was above INT64_MAX in the file.
  UNIATTN_CHECK(!(t == GgufValueType::UINT64 && v < 0), where, " holds UINT64 value ",
                static_cast<uint64_t>(v), ", which does not fit in int64");
  return v;
}
}  // namespace

int64_t GgufValue::as_int() const {
  if (!is_integer()) wrong_type("an integer");
  return checked_int(where_, type_, ints_[0]);
}

double GgufValue::as_float() const {
  if (is_float()) return floats_[0];
  if (is_integer()) {
    return type_ == GgufValueType::UINT64 ? static_cast<double>(static_cast<uint64_t>(ints_[0]))
                                          : static_cast<double>(ints_[0]);
  }
  wrong_type("a number");
}

bool GgufValue::as_bool() const {
  if (!is_bool()) wrong_type("a bool");
  return ints_[0] != 0;
}

const std::vector<std::string>& GgufValue::as_string_array() const {
  if (!is_array() || elem_ != GgufValueType::STRING) wrong_type("an array of strings");
  return strings_;
}

std::vector<int64_t> GgufValue::as_int_array() const {
  if (!is_array() || !(is_int_type(elem_) || elem_ == GgufValueType::BOOL)) {
    wrong_type("an array of integers");
  }
  for (int64_t v : ints_) checked_int(where_, elem_, v);
  return ints_;
}

std::vector<double> GgufValue::as_float_array() const {
  if (!is_array()) wrong_type("an array of numbers");
  if (is_float_type(elem_)) return floats_;
  if (!is_int_type(elem_)) wrong_type("an array of numbers");
  std::vector<double> out;
  out.reserve(ints_.size());
  for (int64_t v : ints_) {
    out.push_back(elem_ == GgufValueType::UINT64 ? static_cast<double>(static_cast<uint64_t>(v))
                                                 : static_cast<double>(v));
  }
  return out;
}

// ---- GgufTensorInfo ----------------------------------------------------------------------------

std::vector<int64_t> GgufTensorInfo::torch_shape() const { return {ne.rbegin(), ne.rend()}; }

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // validated against overflow when the file was opened
  return n;
}

int64_t GgufTensorInfo::num_rows() const { return ne.empty() ? 0 : numel() / ne[0]; }

}  // namespace uniattn
