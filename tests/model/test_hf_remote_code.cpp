// save_model writes the transformers modeling files of python/uniattn_hf/ and auto_map into
// unified checkpoints only; the files are the repository's, byte for byte, and the saved
// config.json (with auto_map) loads back. transformers itself loading them is
// tests/python/test_hf_remote_code.py.
#include <nlohmann/json.hpp>

#include "model_test_util.h"
#include "uniattn/io/file_io.h"
#include "uniattn/model/checkpoint.h"

using namespace uniattn;

namespace {

const char* kFiles[] = {"configuration_uniattn.py", "modeling_uniattn.py"};

std::filesystem::path save_tiny(const std::string& arch, Variant v, const std::string& groups) {
  LoadOptions o;
  if (v != Variant::None) o.uniattn = UniAttnSpec::parse(v, groups, 6);
  auto model = load_model(test::data_dir() / "models" / arch, o);
  const auto dir = test::scratch_dir() / (arch + "-" + variant_name(v));
  save_model(model, dir, at::kFloat);
  return dir;
}

nlohmann::json read_json(const std::filesystem::path& p) {
  return nlohmann::json::parse(read_text_file(p, 1u << 20));
}

TEST(HfRemoteCode, UnifiedCheckpointsCarryTheModelingFiles) {
  const std::pair<const char*, const char*> cases[] = {
      {"llama", "Llama"}, {"mistral", "Mistral"}, {"gemma2", "Gemma2"}, {"gemma3", "Gemma3"}};
  for (const auto& [arch, stem] : cases) {
    for (Variant v : {Variant::Softmax, Variant::UniAttn, Variant::Cla}) {
      SCOPED_TRACE(std::string(arch) + " " + variant_name(v));
      // Groups of one attention type in every tiny model (Gemma-2 slides on even layers,
      // Gemma-3 on 0, 1, 3, 4).
      const auto dir = save_tiny(arch, v, std::string(arch) == "gemma2" ? "0,2;1,3,5" : "3-4");
      for (const char* f : kFiles)
        EXPECT_EQ(read_text_file(dir / f, 1u << 22),
                  read_text_file(test::source_dir() / "python" / "uniattn_hf" / f, 1u << 22))
            << f;
      const auto j = read_json(dir / "config.json");
      const std::string config_class =
          std::string("UniAttn") + stem + (std::string(stem) == "Gemma3" ? "TextConfig" : "Config");
      EXPECT_EQ(j.at("auto_map").at("AutoConfig"), "configuration_uniattn." + config_class);
      EXPECT_EQ(j.at("auto_map").at("AutoModelForCausalLM"),
                std::string("modeling_uniattn.UniAttn") + stem + "ForCausalLM");
      EXPECT_EQ(j.at("architectures").at(0), std::string("UniAttn") + stem + "ForCausalLM");
      // config.json with auto_map is read back (unknown keys would be refused).
      EXPECT_EQ(load_config(dir).uniattn.variant, v);
    }
  }
}

TEST(HfRemoteCode, PlainCheckpointsCarryNone) {
  const auto dir = save_tiny("llama", Variant::None, "");
  for (const char* f : kFiles) EXPECT_FALSE(std::filesystem::exists(dir / f)) << f;
  EXPECT_FALSE(read_json(dir / "config.json").contains("auto_map"));
}

}  // namespace
