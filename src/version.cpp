#include "uniattn/version.h"

namespace uniattn {
const char* version() { return "0.1.0"; }
}  // namespace uniattn
