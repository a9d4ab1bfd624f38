// The benchmark scripts' own tests, written in Python (unittest) next to this file, run under
// CTest: tests/bench/test_bench_peer.py (scripts/bench_peer.py --tiny on the CPU, and its LLaMA
// against transformers) and tests/bench/test_render_performance.py (docs/performance.md from
// result files of two GPUs). Each passes when its script exits 0; the script's output is shown
// on failure.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

void run_python_test(const std::string& file) {
  const std::filesystem::path source = env_or("UNIATTN_SOURCE_DIR", "..");
  const auto script = source / "tests" / "bench" / file;
  ASSERT_TRUE(std::filesystem::exists(script)) << script << " (set UNIATTN_SOURCE_DIR)";
  const std::string python = env_or("UNIATTN_PYTHON", "python3");
  const std::string cmd = "'" + python + "' '" + script.string() + "' 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr) << cmd;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
  const int status = pclose(p);
  EXPECT_EQ(status, 0) << cmd << "\n" << out;
}

TEST(BenchScripts, PeerTinyCpuRun) { run_python_test("test_bench_peer.py"); }

TEST(BenchScripts, RenderPerformance) { run_python_test("test_render_performance.py"); }

}  // namespace
