// config.json (ModelConfig::load, including uniattn sections) and generation_config.json.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "uniattn/config/generation_config.h"
#include "uniattn/config/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const auto path = fuzz::write_input("config.json", fuzz::as_text(data, size));
  fuzz::expect_ok_or_error([&] {
    auto c = ModelConfig::load(path);
    (void)c.to_json();
  });
  // generation_config.json is read from a model directory.
  std::filesystem::create_directories(fuzz::scratch() / "gen");
  fuzz::write_input("gen/generation_config.json", fuzz::as_text(data, size));
  fuzz::expect_ok_or_error([&] { (void)GenerationConfig::load(fuzz::scratch() / "gen"); });
  return 0;
}
