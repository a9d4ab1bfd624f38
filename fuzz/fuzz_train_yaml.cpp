// Training YAML and --set overrides: the input is the YAML text, then after a line "#--set" one
// override per line (path=value), as uniattn-train passes them.
#include <sstream>
#include <vector>

#include "fuzz_util.h"
#include "uniattn/config/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace uniattn;
  const std::string in(fuzz::as_text(data, size));
  const auto cut = in.find("#--set\n");
  const std::string yaml = in.substr(0, cut);
  std::vector<std::string> overrides;
  if (cut != std::string::npos) {
    std::istringstream rest(in.substr(cut + 7));
    for (std::string line; std::getline(rest, line);) overrides.push_back(line);
  }
  fuzz::expect_ok_or_error([&] {
    auto c = TrainConfig::parse(yaml, "fuzz.yaml", overrides);
    (void)TrainConfig::parse(c.to_yaml(), "round-trip");
  });
  return 0;
}
