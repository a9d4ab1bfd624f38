// The one-line message of an exception, for command-line tools and HTTP error bodies.
#pragma once
#include <exception>
#include <string>

namespace uniattn {

// e.what(), except for LibTorch's c10::Error (CUDA out of memory, a failed TORCH_CHECK), whose
// what() appends a C++ backtrace of 20-30 frames: for it the message without the backtrace
// (c10::Error::what_without_backtrace()). Never throws.
std::string error_message(const std::exception& e) noexcept;

}  // namespace uniattn
