#include "uniattn/config/model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "uniattn/error.h"
#include "uniattn/io/file_io.h"
#include "uniattn/io/json_depth.h"

namespace uniattn {

using nlohmann::json;

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Mistral: return "mistral";
    case Arch::Gemma2: return "gemma2";
    case Arch::Gemma3: return "gemma3_text";
  }
  return "?";
}

namespace {

constexpr const char* kUniAttnPrefix = "uniattn_";

// Keys transformers writes into every config.json that say nothing about the network itself.
const std::set<std::string>& generic_keys() {
  static const std::set<std::string> keys = {
      "_name_or_path", "architectures", "attention_dropout", "chunk_size_feed_forward", "dtype",
      "torch_dtype", "id2label", "label2id", "initializer_range", "is_encoder_decoder",
      "output_attentions", "output_hidden_states", "problem_type", "return_dict",
      "transformers_version", "use_cache", "pretraining_tp", "quantization_config",
      "tf_legacy_loss", "pruned_heads", "torchscript", "tie_encoder_decoder", "add_cross_attention",
      "bad_words_ids", "begin_suppress_tokens", "cross_attention_hidden_size",
      "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping",
      "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "finetuning_task",
      "forced_bos_token_id", "forced_eos_token_id", "is_decoder", "length_penalty", "max_length",
      "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
      "num_return_sequences", "output_scores", "prefix", "remove_invalid_values",
      "repetition_penalty", "return_dict_in_generate", "sep_token_id", "suppress_tokens",
      "task_specific_params", "temperature", "tokenizer_class", "top_k", "top_p", "typical_p",
      "use_bfloat16", "cache_implementation", "_attn_implementation_autoset",
      "unk_token_id", "use_bidirectional_attention", "model_type", "base_model_type", "uniattn",
      "auto_map"};
  return keys;
}

const std::set<std::string>& keys_for(Arch a) {
  static const std::set<std::string> common = {
      "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
      "rms_norm_eps", "tie_word_embeddings", "attention_bias", "rope_parameters", "rope_theta",
      "rope_scaling", "bos_token_id", "eos_token_id", "pad_token_id"};
  static const std::set<std::string> llama = [] {
    auto s = common;
    s.insert({"hidden_act", "mlp_bias"});
    return s;
  }();
  static const std::set<std::string> mistral = [] {
    auto s = common;
    s.insert({"hidden_act", "sliding_window"});
    return s;
  }();
  static const std::set<std::string> gemma2 = [] {
    auto s = common;
    s.insert({"hidden_act", "hidden_activation", "attn_logit_softcapping",
              "final_logit_softcapping", "query_pre_attn_scalar", "sliding_window",
              "layer_types"});
    return s;
  }();
  static const std::set<std::string> gemma3 = [] {
    auto s = gemma2;
    s.insert({"rope_local_base_freq", "sliding_window_pattern", "_sliding_window_pattern"});
    return s;
  }();
  switch (a) {
    case Arch::Llama: return llama;
    case Arch::Mistral: return mistral;
    case Arch::Gemma2: return gemma2;
    case Arch::Gemma3: return gemma3;
  }
  return common;
}

Arch parse_arch(const std::string& t, const std::string& origin) {
  if (t == "llama") return Arch::Llama;
  if (t == "mistral") return Arch::Mistral;
  if (t == "gemma2") return Arch::Gemma2;
  if (t == "gemma3_text" || t == "gemma3") return Arch::Gemma3;
  fail(origin, ": unsupported model_type '", t,
       "' (supported: llama, mistral, gemma2, gemma3_text and their uniattn_ forms)");
}

// Typed getters that name the key on a type mismatch.
int64_t get_int(const json& j, const char* key, const std::string& origin) {
  UNIATTN_CHECK(j.contains(key), origin, ": missing required key '", key, "'");
  const auto& v = j.at(key);
  UNIATTN_CHECK(v.is_number_integer(), origin, ": key '", key, "' must be an integer, got ",
                v.dump());
  return v.get<int64_t>();
}
int64_t get_int(const json& j, const char* key, int64_t def, const std::string& origin) {
  if (!j.contains(key) || j.at(key).is_null()) return def;
  return get_int(j, key, origin);
}
double get_double(const json& j, const char* key, double def, const std::string& origin) {
  if (!j.contains(key) || j.at(key).is_null()) return def;
  const auto& v = j.at(key);
  UNIATTN_CHECK(v.is_number(), origin, ": key '", key, "' must be a number, got ", v.dump());
  return v.get<double>();
}
bool get_bool(const json& j, const char* key, bool def, const std::string& origin) {
  if (!j.contains(key) || j.at(key).is_null()) return def;
  const auto& v = j.at(key);
  UNIATTN_CHECK(v.is_boolean(), origin, ": key '", key, "' must be true or false, got ", v.dump());
  return v.get<bool>();
}
std::optional<int64_t> get_opt_int(const json& j, const char* key, const std::string& origin) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  return get_int(j, key, origin);
}
// transformers distinguishes an absent key (the config class default applies) from an explicit
// null (None: the feature is off). These return `absent` for a missing key and `null_value` for
// null.
int64_t get_int_or_null(const json& j, const char* key, int64_t absent, int64_t null_value,
                        const std::string& origin) {
  if (!j.contains(key)) return absent;
  if (j.at(key).is_null()) return null_value;
  return get_int(j, key, origin);
}
double get_double_or_null(const json& j, const char* key, double absent, double null_value,
                          const std::string& origin) {
  if (!j.contains(key)) return absent;
  if (j.at(key).is_null()) return null_value;
  return get_double(j, key, absent, origin);
}

// One rope parameter dict as transformers' RotaryEmbeddingConfigMixin standardises it: rope_type
// (or the legacy "type"), rope_theta defaulting to the config's default_theta, and for llama3
// original_max_position_embeddings defaulting to max_position_embeddings
// (modeling_rope_utils.py standardize_rope_params).
RopeConfig parse_rope(const json& p, double theta_default, int64_t max_position,
                      const std::string& where) {
  UNIATTN_CHECK(p.is_object(), where, " must be an object");
  RopeConfig r;
  r.theta = get_double(p, "rope_theta", theta_default, where);
  std::string type = "default";
  for (const char* k : {"type", "rope_type"})
    if (p.contains(k) && !p.at(k).is_null()) {
      UNIATTN_CHECK(p.at(k).is_string(), where, ": '", k, "' must be a string");
      type = p.at(k).get<std::string>();
    }
  if (type == "default") {
    r.type = RopeConfig::Type::Default;
  } else if (type == "linear") {
    r.type = RopeConfig::Type::Linear;
    r.factor = get_double(p, "factor", 1.0, where);
  } else if (type == "llama3") {
    r.type = RopeConfig::Type::Llama3;
    r.factor = get_double(p, "factor", 8.0, where);
    r.low_freq_factor = get_double(p, "low_freq_factor", 1.0, where);
    r.high_freq_factor = get_double(p, "high_freq_factor", 4.0, where);
    r.original_max_position = get_int(p, "original_max_position_embeddings", max_position, where);
  } else {
    fail(where, ": unsupported rope_type '", type, "' (supported: default, linear, llama3)");
  }
  UNIATTN_CHECK(r.theta > 0, where, ": rope_theta must be positive");
  UNIATTN_CHECK(r.factor > 0, where, ": rope factor must be positive");
  return r;
}

// RoPE from config.json the way transformers 5 reads it (modeling_rope_utils.py
// RotaryEmbeddingConfigMixin.convert_rope_params_to_dict): a legacy `rope_scaling` dict takes
// precedence over `rope_parameters`; rope_theta missing from the dict comes from the top-level
// `rope_theta`, else default_theta (10000). Gemma-3 (Gemma3TextConfig.convert_rope_params_to_dict)
// keeps one dict per attention type: `rope_scaling` updates full_attention, whose theta defaults
// to rope_theta or 1e6; sliding_attention's theta defaults to rope_local_base_freq or 10000.
void parse_rope_keys(const json& j, ModelConfig& c, const std::string& origin) {
  auto obj = [&](const char* key) -> json {
    if (!j.contains(key) || j.at(key).is_null()) return json();
    UNIATTN_CHECK(j.at(key).is_object(), origin, ": '", key, "' must be an object or null");
    return j.at(key);
  };
  const json scaling = obj("rope_scaling"), params = obj("rope_parameters");
  if (c.arch == Arch::Gemma3) {
    // Gemma3TextConfig.default_theta = {"global": 1_000_000.0, "local": 10_000.0}.
    json full = json::object(), sliding = json::object();
    if (!params.is_null()) {
      for (auto it = params.begin(); it != params.end(); ++it)
        UNIATTN_CHECK(it.key() == "full_attention" || it.key() == "sliding_attention", origin,
                      ": Gemma-3 'rope_parameters' must hold 'full_attention' and/or "
                      "'sliding_attention', not '",
                      it.key(), "'");
      if (params.contains("full_attention") && !params.at("full_attention").is_null())
        full = params.at("full_attention");
      if (params.contains("sliding_attention") && !params.at("sliding_attention").is_null())
        sliding = params.at("sliding_attention");
    }
    UNIATTN_CHECK(full.is_object() && sliding.is_object(), origin,
                  ": 'rope_parameters' entries must be objects");
    if (!scaling.is_null()) full.update(scaling);
    if (!full.contains("rope_theta")) full["rope_theta"] = get_double(j, "rope_theta", 1e6, origin);
    if (!sliding.contains("rope_theta"))
      sliding["rope_theta"] = get_double(j, "rope_local_base_freq", 10000.0, origin);
    c.rope = parse_rope(full, 1e6, c.max_position_embeddings, origin + " rope (full_attention)");
    c.rope_local = parse_rope(sliding, 10000.0, c.max_position_embeddings,
                              origin + " rope (sliding_attention)");
    return;
  }
  json p = !scaling.is_null() ? scaling : !params.is_null() ? params : json::object();
  if (p.contains("full_attention") || p.contains("sliding_attention")) {
    // Nested per attention type; LLaMA, Mistral and Gemma-2 rotate every layer alike.
    for (auto it = p.begin(); it != p.end(); ++it)
      UNIATTN_CHECK(it.key() == "full_attention" || it.key() == "sliding_attention", origin,
                    ": unknown attention type '", it.key(), "' in 'rope_parameters'");
    json full = p.value("full_attention", json::object());
    json sliding = p.value("sliding_attention", full);
    UNIATTN_CHECK(full == sliding || c.arch == Arch::Gemma2, origin, ": ", arch_name(c.arch),
                  " has one rope for every layer");
    for (json* q : {&full, &sliding})
      if (q->is_object() && !q->contains("rope_theta"))
        (*q)["rope_theta"] = get_double(j, "rope_theta", 10000.0, origin);
    c.rope = parse_rope(full, 10000.0, c.max_position_embeddings, origin + " rope_parameters");
    c.rope_local =
        parse_rope(sliding, 10000.0, c.max_position_embeddings, origin + " rope_parameters");
    return;
  }
  if (!p.contains("rope_theta")) p["rope_theta"] = get_double(j, "rope_theta", 10000.0, origin);
  c.rope = parse_rope(p, 10000.0, c.max_position_embeddings,
                      origin + (scaling.is_null() ? " rope_parameters" : " rope_scaling"));
  c.rope_local = c.rope;
}

UniAttnSpec parse_spec(const json& u, int64_t num_layers, const std::string& origin) {
  UNIATTN_CHECK(u.is_object(), origin, ": 'uniattn' must be an object");
  for (auto it = u.begin(); it != u.end(); ++it)
    UNIATTN_CHECK(it.key() == "variant" || it.key() == "groups" || it.key() == "superblocks",
                  origin, ": unknown key 'uniattn.", it.key(), "'");
  UNIATTN_CHECK(u.contains("variant") && u.at("variant").is_string(), origin,
                ": 'uniattn.variant' must be a string");
  Variant v = parse_variant(u.at("variant").get<std::string>());
  UniAttnSpec s;
  s.variant = v;
  if (u.contains("groups")) {
    UNIATTN_CHECK(u.at("groups").is_array(), origin, ": 'uniattn.groups' must be a list of lists");
    for (const auto& g : u.at("groups")) {
      UNIATTN_CHECK(g.is_array(), origin, ": 'uniattn.groups' must be a list of lists");
      std::vector<int64_t> layers;
      for (const auto& l : g) {
        UNIATTN_CHECK(l.is_number_integer(), origin, ": 'uniattn.groups' holds a non-integer ",
                      l.dump());
        layers.push_back(l.get<int64_t>());
      }
      s.groups.push_back(std::move(layers));
    }
  } else if (u.contains("superblocks")) {
    const auto& sb = u.at("superblocks");
    s = UniAttnSpec::from_range(v, get_int(sb, "size", origin + " uniattn.superblocks"),
                                get_int(sb, "begin", origin + " uniattn.superblocks"),
                                get_int(sb, "end", origin + " uniattn.superblocks"), num_layers);
  }
  s.validate(num_layers);
  return s;
}

}  // namespace

double ModelConfig::attention_scale() const {
  if (query_pre_attn_scalar > 0) return 1.0 / std::sqrt(query_pre_attn_scalar);
  return 1.0 / std::sqrt(static_cast<double>(head_dim));
}

bool ModelConfig::layer_is_sliding(int64_t layer) const {
  return layer >= 0 && layer < static_cast<int64_t>(sliding_layers.size()) &&
         sliding_layers[layer];
}

const RopeConfig& ModelConfig::rope_for(int64_t layer) const {
  return layer_is_sliding(layer) ? rope_local : rope;
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& origin) {
  UNIATTN_CHECK(j.is_object(), origin, ": config must be a JSON object");
  UNIATTN_CHECK(j.contains("model_type") && j.at("model_type").is_string(), origin,
                ": missing 'model_type'");
  std::string mt = j.at("model_type").get<std::string>();
  const bool unified = mt.rfind(kUniAttnPrefix, 0) == 0;
  ModelConfig c;
  c.arch = parse_arch(unified ? mt.substr(std::string(kUniAttnPrefix).size()) : mt, origin);
  UNIATTN_CHECK(!unified || j.contains("uniattn"), origin, ": model_type '", mt,
                "' needs a 'uniattn' section");
  UNIATTN_CHECK(unified || !j.contains("uniattn"), origin, ": 'uniattn' section in a plain '", mt,
                "' config (a unified checkpoint has model_type 'uniattn_", mt, "')");

  const auto& allowed = keys_for(c.arch);
  for (auto it = j.begin(); it != j.end(); ++it)
    UNIATTN_CHECK(allowed.count(it.key()) || generic_keys().count(it.key()), origin,
                  ": unknown config key '", it.key(), "' for model_type '", mt, "'");

  c.vocab_size = get_int(j, "vocab_size", origin);
  c.hidden_size = get_int(j, "hidden_size", origin);
  c.intermediate_size = get_int(j, "intermediate_size", origin);
  c.num_layers = get_int(j, "num_hidden_layers", origin);
  // Bounded before it sizes the per-layer tables below (validate() checks the rest).
  UNIATTN_CHECK(c.num_layers > 0 && c.num_layers <= 1024, origin,
                ": 'num_hidden_layers' must be in [1, 1024], got ", c.num_layers);
  c.num_heads = get_int(j, "num_attention_heads", origin);
  UNIATTN_CHECK(c.num_heads > 0, origin, ": 'num_attention_heads' must be positive");
  // Defaults of transformers' config classes for a missing key (an explicit null falls back as
  // each class's __post_init__ or attention module does):
  //   num_key_value_heads: LlamaConfig None -> num_attention_heads; MistralConfig 8;
  //     Gemma2Config / Gemma3TextConfig 4.
  //   head_dim: Llama/Mistral hidden_size // num_attention_heads; Gemma2/Gemma3 256.
  //   max_position_embeddings: Llama 2048, Mistral 4096 * 32, Gemma2 8192, Gemma3 131072.
  const int64_t kv_default = c.arch == Arch::Llama ? c.num_heads : c.arch == Arch::Mistral ? 8 : 4;
  c.num_kv_heads = get_int_or_null(j, "num_key_value_heads", kv_default, c.num_heads, origin);
  const int64_t split_dim = c.hidden_size / c.num_heads;
  c.head_dim = get_int_or_null(j, "head_dim", c.is_gemma() ? 256 : split_dim, split_dim, origin);
  const int64_t max_pos_default = c.arch == Arch::Llama     ? 2048
                                  : c.arch == Arch::Mistral ? 4096 * 32
                                  : c.arch == Arch::Gemma2  ? 8192
                                                            : 131072;
  c.max_position_embeddings = get_int(j, "max_position_embeddings", max_pos_default, origin);
  c.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6, origin);
  c.attention_bias = get_bool(j, "attention_bias", false, origin);
  c.mlp_bias = get_bool(j, "mlp_bias", false, origin);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", c.is_gemma(), origin);
  c.bos_token_id = get_opt_int(j, "bos_token_id", origin);
  c.pad_token_id = get_opt_int(j, "pad_token_id", origin);
  if (j.contains("eos_token_id") && !j.at("eos_token_id").is_null()) {
    const auto& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const auto& x : e) {
        UNIATTN_CHECK(x.is_number_integer(), origin, ": 'eos_token_id' holds a non-integer");
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(get_int(j, "eos_token_id", origin));
    }
  }
  for (const char* k : {"torch_dtype", "dtype"})
    if (j.contains(k) && j.at(k).is_string()) c.torch_dtype = j.at(k).get<std::string>();

  // Gemma2/Gemma3 MLPs read `hidden_activation` (default gelu_pytorch_tanh) and ignore
  // `hidden_act`; LLaMA and Mistral read `hidden_act` (default silu).
  std::string act = c.is_gemma() ? "gelu_pytorch_tanh" : "silu";
  const char* act_key = c.is_gemma() ? "hidden_activation" : "hidden_act";
  if (j.contains(act_key) && !j.at(act_key).is_null()) {
    UNIATTN_CHECK(j.at(act_key).is_string(), origin, ": '", act_key, "' must be a string");
    act = j.at(act_key).get<std::string>();
  }
  if (act == "silu" || act == "swish")
    c.activation = Activation::Silu;
  else if (act == "gelu_pytorch_tanh" || act == "gelu_tanh")
    c.activation = Activation::GeluTanh;
  else
    fail(origin, ": unsupported activation '", act, "' (key '", act_key, "')");

  parse_rope_keys(j, c, origin);

  // sliding_window: MistralConfig, Gemma2Config and Gemma3TextConfig default to 4096; null turns
  // it off. LlamaConfig has none.
  c.sliding_window =
      c.arch == Arch::Llama ? 0 : get_int_or_null(j, "sliding_window", 4096, 0, origin);
  c.sliding_layers.assign(c.num_layers, false);
  if (j.contains("layer_types") && !j.at("layer_types").is_null()) {
    const auto& lt = j.at("layer_types");
    UNIATTN_CHECK(lt.is_array() && static_cast<int64_t>(lt.size()) == c.num_layers, origin,
                  ": 'layer_types' must list one type per layer (", c.num_layers, ")");
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const auto& t = lt.at(i);
      UNIATTN_CHECK(t.is_string(), origin, ": 'layer_types' entries must be strings");
      auto s = t.get<std::string>();
      UNIATTN_CHECK(s == "sliding_attention" || s == "full_attention", origin,
                    ": unknown layer type '", s, "' in 'layer_types'");
      c.sliding_layers[i] = s == "sliding_attention";
    }
  } else if (c.arch == Arch::Gemma2) {
    // Gemma2Config.__post_init__: sliding where (i + 1) % 2 != 0.
    for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_layers[i] = i % 2 == 0;
  } else if (c.arch == Arch::Gemma3) {
    // Gemma3TextConfig.__post_init__: sliding where (i + 1) % sliding_window_pattern != 0,
    // pattern default 6.
    int64_t pattern = get_int(j, "sliding_window_pattern",
                              get_int(j, "_sliding_window_pattern", 6, origin), origin);
    UNIATTN_CHECK(pattern >= 1, origin, ": 'sliding_window_pattern' must be >= 1");
    for (int64_t i = 0; i < c.num_layers; ++i) c.sliding_layers[i] = (i + 1) % pattern != 0;
  } else if (c.arch == Arch::Mistral && c.sliding_window > 0) {
    c.sliding_layers.assign(c.num_layers, true);
  }

  if (c.is_gemma()) {
    // Gemma2Config: attn_logit_softcapping 50.0, final_logit_softcapping 30.0;
    // Gemma3TextConfig: both None. null is None (no capping) for both.
    const bool g2 = c.arch == Arch::Gemma2;
    c.attn_logit_softcap =
        get_double_or_null(j, "attn_logit_softcapping", g2 ? 50.0 : 0.0, 0.0, origin);
    c.final_logit_softcap =
        get_double_or_null(j, "final_logit_softcapping", g2 ? 30.0 : 0.0, 0.0, origin);
    // Both classes: query_pre_attn_scalar 256 (the attention scales by its -1/2 power).
    c.query_pre_attn_scalar = get_double(j, "query_pre_attn_scalar", 256.0, origin);
    UNIATTN_CHECK(c.query_pre_attn_scalar > 0, origin,
                  ": 'query_pre_attn_scalar' must be positive");
    c.norm_plus_one = true;
    c.scale_embeddings = true;
    c.sandwich_norms = true;
    c.qk_norm = c.arch == Arch::Gemma3;
  }

  if (unified) c.uniattn = parse_spec(j.at("uniattn"), c.num_layers, origin);
  c.validate();
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  std::string text = read_text_file(path, 16u << 20);
  json j;
  try {
    check_json_depth(text, path.string());
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
  try {
    return from_json(j, path.string());
  } catch (const json::exception& e) {
    fail(path.string(), ": malformed config: ", e.what());
  }
}

void ModelConfig::validate() const {
  auto pos = [](int64_t v, const char* key) {
    UNIATTN_CHECK(v > 0, "config: '", key, "' must be positive, got ", v);
  };
  pos(vocab_size, "vocab_size");
  pos(hidden_size, "hidden_size");
  pos(intermediate_size, "intermediate_size");
  pos(num_layers, "num_hidden_layers");
  pos(num_heads, "num_attention_heads");
  pos(num_kv_heads, "num_key_value_heads");
  pos(head_dim, "head_dim");
  UNIATTN_CHECK(num_layers <= 1024 && hidden_size <= (1 << 20) && vocab_size <= (1 << 24),
                "config: implausibly large model dimensions");
  UNIATTN_CHECK(num_heads % num_kv_heads == 0, "config: 'num_attention_heads' (", num_heads,
                ") is not a multiple of 'num_key_value_heads' (", num_kv_heads, ")");
  UNIATTN_CHECK(head_dim % 2 == 0, "config: 'head_dim' must be even for RoPE, got ", head_dim);
  UNIATTN_CHECK(rms_norm_eps > 0, "config: 'rms_norm_eps' must be positive");
  UNIATTN_CHECK(static_cast<int64_t>(sliding_layers.size()) == num_layers,
                "config: layer types do not match 'num_hidden_layers'");
  bool any_sliding = false;
  for (bool s : sliding_layers) any_sliding |= s;
  UNIATTN_CHECK(!any_sliding || sliding_window > 0,
                "config: 'layer_types' has sliding layers but 'sliding_window' is not set");
  UNIATTN_CHECK(sliding_window >= 0, "config: 'sliding_window' must be >= 0");
  UNIATTN_CHECK(attn_logit_softcap >= 0 && final_logit_softcap >= 0,
                "config: softcapping values must be >= 0");

  uniattn.validate(num_layers);
  for (const auto& g : uniattn.groups) {
    for (int64_t l : g) {
      UNIATTN_CHECK(layer_is_sliding(l) == layer_is_sliding(g[0]), "invalid SuperBlocks: group [",
                    g.front(), "..", g.back(), "] crosses a local/global attention boundary: layer ",
                    g[0], " is ", layer_is_sliding(g[0]) ? "sliding-window" : "global",
                    " but layer ", l, " is ", layer_is_sliding(l) ? "sliding-window" : "global",
                    " (give explicit groups of one attention type)");
    }
  }
}

json ModelConfig::to_json() const {
  json j;
  const bool unified = uniattn.variant != Variant::None;
  std::string base = arch_name(arch);
  j["model_type"] = unified ? kUniAttnPrefix + base : base;
  static const char* class_names[] = {"LlamaForCausalLM", "MistralForCausalLM", "Gemma2ForCausalLM",
                                      "Gemma3ForCausalLM"};
  std::string cls = class_names[static_cast<int>(arch)];
  j["architectures"] = {unified ? "UniAttn" + cls : cls};
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j[is_gemma() ? "hidden_activation" : "hidden_act"] =
      activation == Activation::Silu ? "silu" : "gelu_pytorch_tanh";
  if (arch == Arch::Llama) j["mlp_bias"] = mlp_bias;
  // RoPE twice: transformers 5's `rope_parameters` and the legacy `rope_theta` / `rope_scaling`
  // (plus Gemma-3's `rope_local_base_freq`) that transformers 4.x and most other readers use;
  // without `rope_theta` they assume 10000. transformers 5 prefers `rope_scaling` over
  // `rope_parameters`; both say the same here.
  auto scaling_json = [](const RopeConfig& r) {
    json p = json::object();
    switch (r.type) {
      case RopeConfig::Type::Default:
        p["rope_type"] = "default";
        break;
      case RopeConfig::Type::Linear:
        p["rope_type"] = "linear";
        p["factor"] = r.factor;
        break;
      case RopeConfig::Type::Llama3:
        p["rope_type"] = "llama3";
        p["factor"] = r.factor;
        p["low_freq_factor"] = r.low_freq_factor;
        p["high_freq_factor"] = r.high_freq_factor;
        p["original_max_position_embeddings"] = r.original_max_position;
        break;
    }
    return p;
  };
  auto rope_json = [&](const RopeConfig& r) {
    json p = scaling_json(r);
    p["rope_theta"] = r.theta;
    return p;
  };
  auto legacy_scaling = [&](const RopeConfig& r) {
    return r.type == RopeConfig::Type::Default ? json() : scaling_json(r);
  };
  if (arch == Arch::Gemma3) {
    j["rope_parameters"] = {{"full_attention", rope_json(rope)},
                            {"sliding_attention", rope_json(rope_local)}};
    j["rope_local_base_freq"] = rope_local.theta;
  } else {
    j["rope_parameters"] = rope_json(rope);
  }
  j["rope_theta"] = rope.theta;
  j["rope_scaling"] = legacy_scaling(rope);

  // Sliding window: transformers defaults a missing `sliding_window` to 4096 (Mistral, Gemma), so
  // "none" is written as null.
  if (arch != Arch::Llama) j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json();
  bool any_sliding = false;
  for (bool s : sliding_layers) any_sliding |= s;
  // transformers' Gemma models build a sliding-window mask even when no layer uses it and fail
  // on a null window: write the (unused) default window there instead.
  if (is_gemma() && !any_sliding && sliding_window <= 0) j["sliding_window"] = 4096;
  if (is_gemma()) {
    json lt = json::array();
    for (bool s : sliding_layers) lt.push_back(s ? "sliding_attention" : "full_attention");
    j["layer_types"] = lt;
    if (arch == Arch::Gemma3) {
      // transformers < 4.53 derives the layer types from this period: sliding where
      // (i + 1) % pattern != 0 (1: every layer global).
      for (int64_t p = 1; p <= num_layers; ++p) {
        bool match = true;
        for (int64_t i = 0; i < num_layers && match; ++i)
          match = sliding_layers[i] == ((i + 1) % p != 0);
        if (match) {
          j["sliding_window_pattern"] = p;
          break;
        }
      }
    }
    // Soft-capping off is null: a missing key would mean Gemma-2's 50 / 30.
    auto opt = [](double v) { return v > 0 ? json(v) : json(); };
    j["attn_logit_softcapping"] = opt(attn_logit_softcap);
    j["final_logit_softcapping"] = opt(final_logit_softcap);
    // Always written (a missing key means 256); transformers validates it as an integer.
    const double qpas =
        query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<double>(head_dim);
    if (qpas == std::floor(qpas))
      j["query_pre_attn_scalar"] = static_cast<int64_t>(qpas);
    else
      j["query_pre_attn_scalar"] = qpas;
  }
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  if (eos_token_ids.size() == 1)
    j["eos_token_id"] = eos_token_ids[0];
  else if (!eos_token_ids.empty())
    j["eos_token_id"] = eos_token_ids;
  j["torch_dtype"] = torch_dtype;
  if (unified) {
    j["uniattn"] = {{"variant", variant_name(uniattn.variant)}, {"groups", uniattn.groups}};
  }
  return j;
}

void ModelConfig::save(const std::filesystem::path& path) const {
  write_text_atomic(path, to_json().dump(2) + "\n");
}

}  // namespace uniattn
