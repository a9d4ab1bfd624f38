#include "tensor_bytes.h"

#include <cstring>

#include "uniattn/error.h"

namespace uniattn {

at::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
  }
  fail("unknown dtype");
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default: fail("dtype ", t, " cannot be stored in safetensors");
  }
}

at::Tensor tensor_from_view(const TensorView& v) {
  auto t = at::empty(v.shape, at::TensorOptions().dtype(to_scalar_type(v.dtype)));
  UNIATTN_CHECK(static_cast<size_t>(t.nbytes()) == v.data.size(), "tensor '", v.name,
                "': byte size mismatch");
  if (!v.data.empty()) std::memcpy(t.data_ptr(), v.data.data(), v.data.size());
  return t;
}

TensorToWrite tensor_to_write(const std::string& name, const at::Tensor& t, at::Tensor& keep) {
  keep = t.detach().to(at::kCPU).contiguous();
  TensorToWrite w;
  w.name = name;
  w.dtype = to_dtype(keep.scalar_type());
  w.shape = keep.sizes().vec();
  w.data = {static_cast<const std::byte*>(keep.data_ptr()), static_cast<size_t>(keep.nbytes())};
  return w;
}

}  // namespace uniattn
