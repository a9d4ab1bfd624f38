#include "uniattn/error_message.h"

#include <c10/util/Exception.h>

namespace uniattn {

std::string error_message(const std::exception& e) noexcept {
  try {
    if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e))
      return c10_error->what_without_backtrace();
    return e.what();
  } catch (...) {  // std::string's allocation
    return "out of memory while formatting an error";
  }
}

}  // namespace uniattn
