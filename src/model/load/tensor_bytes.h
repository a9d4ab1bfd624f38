// Conversions between at::Tensor and the byte views of the file-format readers and writers.
#pragma once
#include <ATen/ATen.h>

#include "uniattn/io/safetensors.h"

namespace uniattn {

at::ScalarType to_scalar_type(DType d);
DType to_dtype(at::ScalarType t);
// Copies a view's bytes into a new CPU tensor (views may be unaligned for their element type).
at::Tensor tensor_from_view(const TensorView& v);
// A tensor to write; `keep` receives the contiguous CPU tensor the bytes point into.
TensorToWrite tensor_to_write(const std::string& name, const at::Tensor& t, at::Tensor& keep);

}  // namespace uniattn
