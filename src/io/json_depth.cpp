#include "uniattn/io/json_depth.h"

#include "uniattn/error.h"

namespace uniattn {

void check_json_depth(std::string_view text, const std::string& origin, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;  // the escaped character cannot end the string
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      UNIATTN_CHECK(++depth <= max_depth, origin, ": JSON nested deeper than ", max_depth,
                    " levels (at byte ", i, ")");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

}  // namespace uniattn
