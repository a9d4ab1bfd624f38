// Shared by the fuzz targets: the input as a file (the parsers under test take paths), and the
// rule that only uniattn::Error may leave a parser. Any other exception escapes the target, so
// libFuzzer reports it (uncaught exception -> abort) like a sanitizer finding.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "uniattn/error.h"

namespace uniattn::fuzz {

// A directory private to this process (under $TMPDIR, else /tmp).
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    auto d =
        std::filesystem::temp_directory_path() / ("uniattn-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch(), ec);
    });
    return d;
  }();
  return dir;
}

// Writes `bytes` to scratch()/name (replacing it) and returns the path.
inline std::filesystem::path write_input(const std::string& name, std::string_view bytes) {
  auto p = scratch() / name;
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return p;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs f; a uniattn::Error is the expected outcome for bad input and is swallowed.
template <typename F>
void expect_ok_or_error(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

}  // namespace uniattn::fuzz
