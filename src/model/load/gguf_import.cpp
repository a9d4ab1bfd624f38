// GGUF -> our model: config from metadata, llama.cpp tensor names mapped to Hugging Face's, and
// the two transformations llama.cpp's converter applies undone (LLaMA q/k row permutation,
// Gemma's "+1" folded into norm weights).
#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>
#include <regex>

#include "model/layers.h"
#include "uniattn/error.h"
#include "uniattn/io/gguf.h"
#include "weights.h"

namespace uniattn {

namespace {

Arch gguf_arch(const GgufFile& f) {
  auto a = f.get_string("general.architecture");
  if (a == "llama") return Arch::Llama;
  if (a == "gemma2") return Arch::Gemma2;
  if (a == "gemma3") return Arch::Gemma3;
  fail(f.path().string(), ": unsupported general.architecture '", a,
       "' (supported: llama, gemma2, gemma3)");
}

// llama.cpp tensor name -> HF name (empty when unknown).
std::string hf_name(const std::string& g, Arch arch) {
  static const std::regex blk(R"(blk\.(\d+)\.([a-z_]+)\.(weight|bias))");
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  std::smatch m;
  if (!std::regex_match(g, m, blk)) return "";
  const std::string layer = "model.layers." + m[1].str() + ".";
  const std::string part = m[2].str(), suffix = "." + m[3].str();
  const bool gemma = arch == Arch::Gemma2 || arch == Arch::Gemma3;
  static const std::map<std::string, std::string> common = {
      {"attn_norm", "input_layernorm"},      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},        {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},   {"attn_q_norm", "self_attn.q_norm"},
      {"attn_k_norm", "self_attn.k_norm"},   {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},             {"ffn_down", "mlp.down_proj"},
      {"post_attention_norm", "post_attention_layernorm"},
      {"post_ffw_norm", "post_feedforward_layernorm"}};
  if (part == "ffn_norm")
    return layer + (gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm") + suffix;
  auto it = common.find(part);
  return it == common.end() ? "" : layer + it->second + suffix;
}

// Inverse of llama.cpp's permutation of LLaMA q/k rows (HF "rotate half" -> interleaved pairs).
at::Tensor unpermute_rows(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  return w.reshape({heads, rows / heads / 2, 2, -1}).transpose(1, 2).reshape(w.sizes());
}

// The sliding layers as llama.cpp sets them: attention.sliding_window_pattern when present (a
// period n, or one flag per layer), else `period`. llama_hparams::set_swa_pattern(n): layer il
// slides iff n == 0 or il % n < n - 1.
std::vector<bool> swa_layers(const GgufFile& f, const std::string& a, int64_t layers,
                             int64_t period, const std::string& where) {
  std::vector<bool> out(layers, false);
  const std::string key = a + "attention.sliding_window_pattern";
  if (f.has(key) && f.at(key).is_array()) {
    auto flags = f.at(key).as_int_array();
    UNIATTN_CHECK(static_cast<int64_t>(flags.size()) == layers, where, ": ", key, " has ",
                  flags.size(), " entries for ", layers, " layers");
    for (int64_t l = 0; l < layers; ++l) out[l] = flags[l] != 0;
    return out;
  }
  if (f.has(key)) period = f.get_int(key);
  UNIATTN_CHECK(period >= 0, where, ": ", key, " must be >= 0");
  for (int64_t l = 0; l < layers; ++l) out[l] = period == 0 || l % period < period - 1;
  return out;
}

// LLaMA-3 rope scaling from llama.cpp's rope_freqs.weight. convert_hf_to_gguf.py
// (LlamaModel.generate_extra_tensors) writes, per rotary frequency w_i = theta^(-2i/d), the divisor
// 1 where the wavelength 2*pi/w_i is below L/high_freq_factor, `factor` where it is above
// L/low_freq_factor, and 1 / ((1 - s) / factor + s) between, s = (L/wavelength - low) / (high -
// low) (L = original_max_position_embeddings). The divisors fix `factor` and the band edges
// low/L and high/L in inverse wavelength, not L itself: we take L from
// rope.scaling.original_context_length when present, else round(1 / band start) (8192 for the
// LLaMA-3.x releases), and check that the frequencies transformers' llama3 rope then computes
// equal w_i / rope_freqs_i.
RopeConfig llama3_rope_from_factors(const std::vector<float>& factors, double theta,
                                    int64_t head_dim, std::optional<int64_t> orig_ctx,
                                    const std::string& where) {
  const int64_t n = head_dim / 2;
  UNIATTN_CHECK(static_cast<int64_t>(factors.size()) == n, where, ": rope_freqs.weight has ",
                factors.size(), " values for ", n, " rotary frequencies");
  RopeConfig base;
  base.theta = theta;
  std::vector<double> nu(n), f(n);
  double fmax = 0, fmin = INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    f[i] = factors[i];
    UNIATTN_CHECK(std::isfinite(f[i]) && f[i] > 0, where,
                  ": rope_freqs.weight holds a non-positive or non-finite value");
    fmax = std::max(fmax, f[i]);
    fmin = std::min(fmin, f[i]);
    nu[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim)) /
            (2.0 * std::numbers::pi);
  }
  if (fmax <= 1.0 + 1e-6 && fmin >= 1.0 - 1e-6) return base;  // all ones: no scaling
  const double F = fmax;
  // s_i per frequency: 0 in the scaled band, 1 in the kept band, linear in nu in between.
  constexpr double kBand = 1e-4;
  std::vector<double> s(n);
  double nu_low = 0, nu_high = INFINITY;  // largest nu of the scaled band, smallest of the kept
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  std::vector<int64_t> mid;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = (1.0 / f[i] - 1.0 / F) / (1.0 - 1.0 / F);
    if (s[i] <= kBand) {
      nu_low = std::max(nu_low, nu[i]);
    } else if (s[i] >= 1.0 - kBand) {
      nu_high = std::min(nu_high, nu[i]);
    } else {
      mid.push_back(i);
      sx += nu[i], sy += s[i], sxx += nu[i] * nu[i], sxy += nu[i] * s[i];
    }
  }
  double lo = 0, hi = 0;  // band edges in inverse wavelength: low_freq_factor / L, high / L
  if (mid.size() >= 2) {
    const double m = static_cast<double>(mid.size());
    const double slope = (m * sxy - sx * sy) / (m * sxx - sx * sx);
    const double icpt = (sy - slope * sx) / m;
    UNIATTN_CHECK(slope > 0, where, ": rope_freqs.weight is not LLaMA-3 rope scaling");
    lo = -icpt / slope;
    hi = (1.0 - icpt) / slope;
  } else if (mid.size() == 1) {
    // One point inside the band fixes one relation between its edges; take high = 4 * low (the
    // LLaMA-3.x ratio) where the neighbouring points allow it.
    const double x = nu[mid[0]], y = s[mid[0]];
    const double max_width = std::min((x - nu_low) / y, (nu_high - x) / (1.0 - y));
    lo = x / (1.0 + 3.0 * y);
    double width = 3.0 * lo;
    if (width > max_width) {
      width = max_width;
      lo = x - y * width;
    }
    hi = lo + width;
  } else if (std::isinf(nu_high) || 4.0 * nu_low <= nu_high) {
    lo = std::isinf(nu_high) ? nu_low : std::sqrt(nu_low * nu_high / 4.0);
    hi = 4.0 * lo;
  } else {
    lo = nu_low;
    hi = nu_high;
  }
  UNIATTN_CHECK(lo > 0 && hi > lo && std::isfinite(hi), where,
                ": rope_freqs.weight is not LLaMA-3 rope scaling");
  RopeConfig r = base;
  r.type = RopeConfig::Type::Llama3;
  r.factor = F;
  r.original_max_position = orig_ctx ? *orig_ctx : std::max<int64_t>(1, std::llround(1.0 / lo));
  const double L = static_cast<double>(r.original_max_position);
  r.low_freq_factor = lo * L;
  r.high_freq_factor = hi * L;

  // The frequencies llama.cpp uses, and the largest relative difference of ours from them.
  const auto want = (rope_inv_freq(base, head_dim).to(at::kDouble) /
                     at::tensor(factors, at::kFloat).to(at::kDouble));
  auto mismatch = [&](const RopeConfig& cand) {
    auto got = rope_inv_freq(cand, head_dim).to(at::kDouble);
    return ((got / want) - 1.0).abs().max().item<double>();
  };
  constexpr double kTol = 1e-5;
  // Round the factors to 3 decimals (1.0 and 4.0 rather than 0.9999998) where that changes no
  // frequency.
  for (double RopeConfig::*field :
       {&RopeConfig::factor, &RopeConfig::low_freq_factor, &RopeConfig::high_freq_factor}) {
    RopeConfig rounded = r;
    rounded.*field = std::round(r.*field * 1000.0) / 1000.0;
    if (rounded.low_freq_factor < rounded.high_freq_factor && mismatch(rounded) <= kTol)
      r = rounded;
  }
  const double err = mismatch(r);
  UNIATTN_CHECK(err <= kTol, where,
                ": rope_freqs.weight is not LLaMA-3 rope scaling (the closest llama3 parameters, ",
                "factor ", r.factor, ", low_freq_factor ", r.low_freq_factor, ", high_freq_factor ",
                r.high_freq_factor, ", original_max_position_embeddings ", r.original_max_position,
                ", differ from its frequencies by ", err, ")");
  return r;
}

}  // namespace

ModelConfig gguf_config(const std::filesystem::path& path) {
  auto f = GgufFile::open(path);
  const std::string where = path.string();
  ModelConfig c;
  c.arch = gguf_arch(f);
  const std::string a = f.get_string("general.architecture") + ".";
  c.num_layers = f.get_int(a + "block_count");
  UNIATTN_CHECK(c.num_layers > 0 && c.num_layers <= 1024, where, ": ", a,
                "block_count must be in [1, 1024], got ", c.num_layers);
  c.hidden_size = f.get_int(a + "embedding_length");
  c.intermediate_size = f.get_int(a + "feed_forward_length");
  c.num_heads = f.get_int(a + "attention.head_count");
  // llama.cpp (src/llama-model.cpp load_hparams): head_count_kv defaults to head_count,
  // key_length and value_length to n_embd / n_head, rope.dimension_count to key_length.
  c.num_kv_heads = f.get_int(a + "attention.head_count_kv", c.num_heads);
  UNIATTN_CHECK(c.num_heads > 0, where, ": attention.head_count must be positive");
  c.head_dim = f.get_int(a + "attention.key_length", c.hidden_size / c.num_heads);
  const int64_t value_dim = f.get_int(a + "attention.value_length", c.hidden_size / c.num_heads);
  UNIATTN_CHECK(value_dim == c.head_dim, where, ": ", a, "attention.value_length (", value_dim,
                ") differs from attention.key_length (", c.head_dim, "); not supported");
  const int64_t n_rot = f.get_int(a + "rope.dimension_count", c.head_dim);
  UNIATTN_CHECK(n_rot == c.head_dim, where, ": ", a, "rope.dimension_count (", n_rot,
                ") differs from the head size (", c.head_dim, "); partial rotary is not supported");
  c.max_position_embeddings = f.get_int(a + "context_length", 4096);
  c.rms_norm_eps = f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-6);
  const auto* tokens = f.has("tokenizer.ggml.tokens") ? &f.at("tokenizer.ggml.tokens") : nullptr;
  const auto* embd = f.find("token_embd.weight");
  int64_t n_vocab = tokens ? static_cast<int64_t>(tokens->size()) : 0;
  if (n_vocab == 0 && embd) n_vocab = embd->torch_shape().front();
  c.vocab_size = f.get_int(a + "vocab_size", n_vocab);

  // RoPE, as llama.cpp's load_hparams reads it: freq_base defaults to 10000; the scaling type to
  // "linear" (so a factor alone is linear scaling); the factor key falls back to the older
  // rope.scale_linear; a factor of 0 or 1 is no scaling.
  c.rope.theta = f.get_float(a + "rope.freq_base", 10000.0);
  const std::string scaling = f.get_string(a + "rope.scaling.type", "linear");
  double factor = f.get_float(a + "rope.scaling.factor", f.get_float(a + "rope.scale_linear", 0.0));
  if (scaling == "none")
    factor = 0.0;
  else if (scaling != "linear")
    fail(where, ": unsupported rope scaling '", scaling, "' (supported: none, linear, and LLaMA-3 ",
         "scaling as rope_freqs.weight)");
  if (factor != 0.0 && factor != 1.0) {
    UNIATTN_CHECK(factor > 0, where, ": ", a, "rope.scaling.factor must be positive, got ", factor);
    c.rope.type = RopeConfig::Type::Linear;
    c.rope.factor = factor;
  }
  const double attn_factor = f.get_float(a + "rope.scaling.attn_factor", 1.0);
  UNIATTN_CHECK(attn_factor == 1.0, where, ": ", a, "rope.scaling.attn_factor ", attn_factor,
                " is not supported");
  if (const auto* freqs = f.find("rope_freqs.weight")) {
    // LLaMA-3.1/3.2/3.3: llama.cpp's LLaMA graph divides each rotary frequency by this tensor
    // (llama-model.cpp: layer.rope_freqs, ggml_rope_ext's freq_factors).
    UNIATTN_CHECK(c.arch == Arch::Llama, where, ": rope_freqs.weight on a ", arch_name(c.arch),
                  " model is not supported");
    UNIATTN_CHECK(c.rope.type == RopeConfig::Type::Default, where,
                  ": rope_freqs.weight together with linear rope scaling is not supported");
    std::optional<int64_t> orig_ctx;
    if (f.has(a + "rope.scaling.original_context_length"))
      orig_ctx = f.get_int(a + "rope.scaling.original_context_length");
    c.rope =
        llama3_rope_from_factors(f.dequantize(*freqs), c.rope.theta, c.head_dim, orig_ctx, where);
  }
  c.rope_local = c.rope;
  c.tie_word_embeddings = f.find("output.weight") == nullptr;
  // Optional LLaMA biases (llama.cpp creates them TENSOR_NOT_REQUIRED); HF has one flag each.
  c.attention_bias = f.find("blk.0.attn_q.bias") || f.find("blk.0.attn_output.bias");
  c.mlp_bias = f.find("blk.0.ffn_up.bias") || f.find("blk.0.ffn_down.bias");
  // LLaMA (and Mistral, which llama.cpp converts to the "llama" architecture): every layer is
  // global; llama.cpp's LLaMA hparams read no sliding-window key.
  c.sliding_layers.assign(c.num_layers, false);
  if (f.has("tokenizer.ggml.bos_token_id"))
    c.bos_token_id = f.get_int("tokenizer.ggml.bos_token_id");
  if (f.has("tokenizer.ggml.eos_token_id"))
    c.eos_token_ids.push_back(f.get_int("tokenizer.ggml.eos_token_id"));
  if (f.has("tokenizer.ggml.padding_token_id"))
    c.pad_token_id = f.get_int("tokenizer.ggml.padding_token_id");
  if (c.arch == Arch::Gemma2 || c.arch == Arch::Gemma3) {
    c.activation = Activation::GeluTanh;
    c.norm_plus_one = c.scale_embeddings = c.sandwich_norms = true;
    c.qk_norm = c.arch == Arch::Gemma3;
    // llama.cpp (gemma2/gemma3 hparams, after gemma_pytorch's config.py): the 27B models (46
    // layers for Gemma-2, 62 for Gemma-3) scale queries by 1/sqrt(n_embd / n_head), the others
    // by 1/sqrt(head_dim). transformers stores the same as query_pre_attn_scalar (144, 168).
    const int64_t layers_27b = c.arch == Arch::Gemma2 ? 46 : 62;
    c.query_pre_attn_scalar =
        static_cast<double>(c.num_layers == layers_27b ? c.hidden_size / c.num_heads : c.head_dim);
    const std::string swa_key = a + "attention.sliding_window";
    if (c.arch == Arch::Gemma2) {
      // llama-hparams.h defaults f_attn_logit_softcapping = 50, f_final_logit_softcapping = 30;
      // Gemma-2 always caps both and always slides: window 4096 ("default value of gemma 2"),
      // pattern 2 (even layers local); local layers use the global rope base and scale.
      c.attn_logit_softcap = f.get_float(a + "attn_logit_softcapping", 50.0);
      c.final_logit_softcap = f.get_float(a + "final_logit_softcapping", 30.0);
      c.sliding_window = f.get_int(swa_key, 4096);
      c.sliding_layers = swa_layers(f, a, c.num_layers, 2, where);
    } else {
      // Gemma-3: no attention soft-capping in llama.cpp's graph, final soft-capping 0 unless
      // the key is there. Sliding window only when the key is present and positive (otherwise
      // every layer is global); then every 6th layer is global and local layers use rope base
      // 10000 without scaling.
      c.final_logit_softcap = f.get_float(a + "final_logit_softcapping", 0.0);
      c.sliding_window = f.get_int(swa_key, 0);
      if (c.sliding_window > 0) {
        c.sliding_layers = swa_layers(f, a, c.num_layers, 6, where);
        c.rope_local = RopeConfig{};
        c.rope_local.theta = 10000.0;
      } else {
        c.sliding_window = 0;
      }
    }
    // Newer converters may state the local rope base (LLM_KV_ROPE_FREQ_BASE_SWA).
    if (f.has(a + "rope.freq_base_swa")) c.rope_local.theta = f.get_float(a + "rope.freq_base_swa");
    UNIATTN_CHECK(c.attn_logit_softcap >= 0 && c.final_logit_softcap >= 0, where,
                  ": soft-capping values must be >= 0");
  }
  c.validate();
  return c;
}

WeightSource gguf_source(const std::filesystem::path& path, const ModelConfig& c) {
  auto f = std::make_shared<GgufFile>(GgufFile::open(path));
  auto by_hf = std::make_shared<std::map<std::string, const GgufTensorInfo*>>();
  for (const auto& t : f->tensors()) {
    if (t.name == "rope_freqs.weight") continue;  // read into the config by gguf_config
    auto n = hf_name(t.name, c.arch);
    UNIATTN_CHECK(!n.empty(), path.string(), ": unknown GGUF tensor '", t.name, "'");
    (*by_hf)[n] = &t;
  }
  WeightSource s;
  s.origin = path.string();
  for (const auto& [n, _] : *by_hf) s.names.push_back(n);
  s.shape = [by_hf](const std::string& n) { return by_hf->at(n)->torch_shape(); };
  s.get = [f, by_hf, c](const std::string& n) {
    const auto* info = by_hf->at(n);
    auto t = at::empty(info->torch_shape(), at::kFloat);
    f->dequantize_into(*info, t.data_ptr<float>());
    const bool gemma = c.arch == Arch::Gemma2 || c.arch == Arch::Gemma3;
    if (c.arch == Arch::Llama) {
      if (n.ends_with("self_attn.q_proj.weight")) t = unpermute_rows(t, c.num_heads);
      if (n.ends_with("self_attn.k_proj.weight")) t = unpermute_rows(t, c.num_kv_heads);
    }
    if (gemma && n.find("norm.weight") != std::string::npos) t = t - 1.0;
    return t.contiguous();
  };
  return s;
}

std::unique_ptr<Tokenizer> gguf_tokenizer(const std::filesystem::path& path) {
  auto f = GgufFile::open(path);
  auto model = f.get_string("tokenizer.ggml.model");
  auto opt = [&](const char* k) -> std::optional<int32_t> {
    if (!f.has(k)) return std::nullopt;
    return static_cast<int32_t>(f.get_int(k));
  };
  std::vector<int32_t> types;
  if (f.has("tokenizer.ggml.token_type"))
    for (auto x : f.at("tokenizer.ggml.token_type").as_int_array())
      types.push_back(static_cast<int32_t>(x));
  if (model == "gpt2") {  // byte-level BPE (LLaMA-3, SmolLM2, Qwen, ...)
    BpeVocab v;
    v.tokens = f.at("tokenizer.ggml.tokens").as_string_array();
    v.token_types = std::move(types);
    if (f.has("tokenizer.ggml.merges")) v.merges = f.at("tokenizer.ggml.merges").as_string_array();
    v.pre = f.get_string("tokenizer.ggml.pre", "default");
    v.bos = opt("tokenizer.ggml.bos_token_id");
    v.eos = opt("tokenizer.ggml.eos_token_id");
    v.pad = opt("tokenizer.ggml.padding_token_id");
    v.unk = opt("tokenizer.ggml.unknown_token_id");
    v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", false);
    return make_bpe_tokenizer(v);
  }
  if (model == "llama") {  // SentencePiece vocabulary with scores (LLaMA-2, Mistral, Gemma)
    SpmVocab v;
    v.tokens = f.at("tokenizer.ggml.tokens").as_string_array();
    for (double s : f.at("tokenizer.ggml.scores").as_float_array())
      v.scores.push_back(static_cast<float>(s));
    v.token_types = std::move(types);
    v.bos = opt("tokenizer.ggml.bos_token_id");
    v.eos = opt("tokenizer.ggml.eos_token_id");
    v.pad = opt("tokenizer.ggml.padding_token_id");
    v.unk = opt("tokenizer.ggml.unknown_token_id");
    v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", true);
    v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
    v.remove_extra_whitespaces = f.get_bool("tokenizer.ggml.remove_extra_whitespaces", false);
    return make_spm_tokenizer(v);
  }
  fail(path.string(), ": tokenizer model '", model,
       "' is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are)");
}

}  // namespace uniattn
