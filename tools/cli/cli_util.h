// Helpers shared by the command-line tools (each tool stays a thin shell over the library).
#pragma once
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "uniattn/error_message.h"

namespace uniattn::cli {

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    auto c = s.find(',', pos);
    if (c == std::string::npos) c = s.size();
    if (c > pos) out.push_back(s.substr(pos, c - pos));
    pos = c + 1;
  }
  return out;
}

// A tool's main(): runs `run(argc, argv)`; an exception becomes "<tool>: <message>" on stderr
// (after whatever the tool already streamed to stdout) and exit status 1.
template <typename Run>
int guarded_main(const char* tool, Run run, int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %s\n", tool, error_message(e).c_str());
    return 1;
  }
}

}  // namespace uniattn::cli
