// Helpers shared by the tokenizer tests: the fixture's expected.json and error checks.
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"
#include "uniattn/error.h"
#include "uniattn/io/tokenizer.h"

namespace uniattn::test {

inline std::filesystem::path tok_dir() { return data_dir() / "tokenizer"; }

inline const nlohmann::json& expected() {
  static const nlohmann::json j = [] {
    std::ifstream f(tok_dir() / "expected.json");
    return nlohmann::json::parse(f);
  }();
  return j;
}

inline std::vector<std::string> texts() {
  return expected()["texts"].get<std::vector<std::string>>();
}

// Runs `f`, expecting a uniattn::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no uniattn::Error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace uniattn::test
