#include "hf_remote_code.h"

#include <nlohmann/json.hpp>
#include <string>

#include "uniattn/io/file_io.h"

namespace uniattn {

namespace {

// The class-name stem of each family in python/uniattn_hf/ (UniAttn<stem>Config,
// UniAttn<stem>ForCausalLM); Gemma-3 is the text-only model, model_type gemma3_text.
const char* family_stem(Arch a) {
  switch (a) {
    case Arch::Llama:
      return "Llama";
    case Arch::Mistral:
      return "Mistral";
    case Arch::Gemma2:
      return "Gemma2";
    case Arch::Gemma3:
      return "Gemma3";
  }
  return "?";
}

}  // namespace

void save_hf_config(const ModelConfig& config, const std::filesystem::path& dir) {
  nlohmann::json j = config.to_json();
  if (config.uniattn.variant != Variant::None) {
    const std::string stem = family_stem(config.arch);
    const std::string config_class =
        config.arch == Arch::Gemma3 ? "UniAttnGemma3TextConfig" : "UniAttn" + stem + "Config";
    j["auto_map"] = {{"AutoConfig", "configuration_uniattn." + config_class},
                     {"AutoModelForCausalLM", "modeling_uniattn.UniAttn" + stem + "ForCausalLM"}};
    write_text_atomic(dir / "configuration_uniattn.py", std::string(detail::hf_configuration_py()));
    write_text_atomic(dir / "modeling_uniattn.py", std::string(detail::hf_modeling_py()));
  }
  write_text_atomic(dir / "config.json", j.dump(2) + "\n");
}

}  // namespace uniattn
