// Model configuration: what a Hugging Face config.json says about a LLaMA, Mistral or Gemma
// decoder, plus the UniAttn SuperBlock spec a unified checkpoint carries.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "uniattn/config/superblock.h"

namespace uniattn {

enum class Arch { Llama, Mistral, Gemma2, Gemma3 };
const char* arch_name(Arch);  // the HF model_type: "llama", "mistral", "gemma2", "gemma3_text"

enum class Activation { Silu, GeluTanh };

// Rotary embedding of one attention type (Gemma-3 has different ones for local and global layers).
struct RopeConfig {
  double theta = 10000.0;
  enum class Type { Default, Linear, Llama3 } type = Type::Default;
  double factor = 1.0;             // linear and llama3
  double low_freq_factor = 1.0;    // llama3
  double high_freq_factor = 4.0;   // llama3
  int64_t original_max_position = 8192;  // llama3
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  Activation activation = Activation::Silu;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;

  RopeConfig rope;        // global (full-attention) layers
  RopeConfig rope_local;  // sliding-window layers (equals `rope` except on Gemma-3)
  // Per layer: true where the layer uses sliding-window attention of `sliding_window` tokens.
  std::vector<bool> sliding_layers;
  int64_t sliding_window = 0;  // 0: none

  // Gemma family.
  double attn_logit_softcap = 0.0;   // 0: off
  double final_logit_softcap = 0.0;  // 0: off
  double query_pre_attn_scalar = 0.0;  // attention scale is its -1/2 power when set
  bool qk_norm = false;                // Gemma-3 per-head RMSNorm on q and k
  bool norm_plus_one = false;          // Gemma RMSNorm multiplies by (1 + w)
  bool scale_embeddings = false;       // Gemma multiplies embeddings by sqrt(hidden)
  bool sandwich_norms = false;         // Gemma-2/3 post-attention and pre/post-feedforward norms

  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  UniAttnSpec uniattn;  // variant None for a standard model

  double attention_scale() const;
  bool is_gemma() const { return arch == Arch::Gemma2 || arch == Arch::Gemma3; }
  bool layer_is_sliding(int64_t layer) const;
  const RopeConfig& rope_for(int64_t layer) const;

  // Parses a config.json object. Unknown model types, unknown keys and contradictory values throw
  // uniattn::Error naming the key. `uniattn_<arch>` model types read the SuperBlock spec too.
  // A missing key gets the default of transformers' config class for that model type (e.g.
  // Gemma-2 soft-capping 50 / 30, sliding_window 4096, query_pre_attn_scalar 256, Gemma-3 rope
  // bases 1e6 / 10000); an explicit null turns soft-capping or the sliding window off.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& origin = "config.json");
  static ModelConfig load(const std::filesystem::path& config_json);
  // The config.json a checkpoint of this model is written with: model_type `uniattn_<arch>`
  // when the variant is not None (stock transformers then refuses to load it as a plain model).
  // Every value is written explicitly (null for "off"), RoPE both as transformers 5's
  // rope_parameters and as the legacy rope_theta / rope_scaling (/ rope_local_base_freq).
  nlohmann::json to_json() const;
  void save(const std::filesystem::path& config_json) const;  // atomic
  // Checks internal consistency (heads divide, spec valid for this architecture); throws.
  void validate() const;
};

}  // namespace uniattn
