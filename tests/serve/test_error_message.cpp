// uniattn::error_message (uniattn/error_message.h): what the tools print and uniattn-serve puts
// in a 500 body. A LibTorch error loses its C++ backtrace and keeps its message.
#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include <stdexcept>
#include <string>

#include "uniattn/error.h"
#include "uniattn/error_message.h"

namespace uniattn {
namespace {

TEST(ErrorMessage, LibTorchErrorWithoutBacktrace) {
  try {
    TORCH_CHECK(false, "CUDA out of memory. Tried to allocate 1.50 GiB");
  } catch (const std::exception& e) {
    const std::string full = e.what(), line = error_message(e);
    EXPECT_NE(line.find("CUDA out of memory. Tried to allocate 1.50 GiB"), std::string::npos);
    EXPECT_EQ(line.find("Exception raised from"), std::string::npos) << line;
    EXPECT_LT(line.size(), full.size()) << "the backtrace was not removed:\n" << full;
    return;
  }
  FAIL() << "TORCH_CHECK(false) did not throw";
}

TEST(ErrorMessage, OtherExceptionsUnchanged) {
  const Error ours("config.yaml: training.lr must be positive");
  EXPECT_EQ(error_message(ours), ours.what());
  const std::runtime_error std_error("plain");
  EXPECT_EQ(error_message(std_error), "plain");
}

}  // namespace
}  // namespace uniattn
