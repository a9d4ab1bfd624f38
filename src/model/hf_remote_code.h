// config.json of a saved checkpoint and, for unified variants, the transformers modeling files
// (python/uniattn_hf/) that let AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)
// load it.
#pragma once
#include <filesystem>
#include <string_view>

#include "uniattn/config/model_config.h"

namespace uniattn {

namespace detail {
// The files of python/uniattn_hf/, embedded at build time (cmake/embed_hf_remote_code.cmake).
std::string_view hf_configuration_py();
std::string_view hf_modeling_py();
}  // namespace detail

// Writes `dir`/config.json (ModelConfig::to_json). When the variant is not None it also writes
// configuration_uniattn.py and modeling_uniattn.py into `dir` and adds to config.json
//   "auto_map": {"AutoConfig": "configuration_uniattn.UniAttn<Family>Config",
//                "AutoModelForCausalLM": "modeling_uniattn.UniAttn<Family>ForCausalLM"}
// (transformers' remote-code convention, the classes named after `architectures`). Each file is
// written atomically. Throws uniattn::Error when a file cannot be written.
void save_hf_config(const ModelConfig& config, const std::filesystem::path& dir);

}  // namespace uniattn
