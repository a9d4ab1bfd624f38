// GGUF -> our model: config from metadata, llama.cpp tensor names mapped to Hugging Face's, and
// the two transformations llama.cpp's converter applies undone (LLaMA q/k row permutation,
// Gemma's "+1" folded into norm weights).
#include <regex>

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

}  // namespace

ModelConfig gguf_config(const std::filesystem::path& path) {
  auto f = GgufFile::open(path);
  ModelConfig c;
  c.arch = gguf_arch(f);
  const std::string a = f.get_string("general.architecture") + ".";
  c.num_layers = f.get_int(a + "block_count");
  c.hidden_size = f.get_int(a + "embedding_length");
  c.intermediate_size = f.get_int(a + "feed_forward_length");
  c.num_heads = f.get_int(a + "attention.head_count");
  c.num_kv_heads = f.get_int(a + "attention.head_count_kv", c.num_heads);
  UNIATTN_CHECK(c.num_heads > 0, path.string(), ": attention.head_count must be positive");
  c.head_dim = f.get_int(a + "attention.key_length", c.hidden_size / c.num_heads);
  c.max_position_embeddings = f.get_int(a + "context_length", 4096);
  c.rms_norm_eps = f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-6);
  const auto* tokens = f.has("tokenizer.ggml.tokens") ? &f.at("tokenizer.ggml.tokens") : nullptr;
  c.vocab_size = f.get_int(a + "vocab_size",
                           tokens ? static_cast<int64_t>(tokens->size()) : 0);
  c.rope.theta = f.get_float(a + "rope.freq_base", 10000.0);
  if (f.has(a + "rope.scaling.type")) {
    auto t = f.get_string(a + "rope.scaling.type");
    if (t == "linear") {
      c.rope.type = RopeConfig::Type::Linear;
      c.rope.factor = f.get_float(a + "rope.scaling.factor");
    } else if (t != "none") {
      fail(path.string(), ": unsupported rope scaling '", t, "'");
    }
  }
  c.rope_local = c.rope;
  c.tie_word_embeddings = f.find("output.weight") == nullptr;
  c.sliding_layers.assign(c.num_layers, false);
  if (f.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = f.get_int("tokenizer.ggml.bos_token_id");
  if (f.has("tokenizer.ggml.eos_token_id"))
    c.eos_token_ids.push_back(f.get_int("tokenizer.ggml.eos_token_id"));
  if (f.has("tokenizer.ggml.padding_token_id"))
    c.pad_token_id = f.get_int("tokenizer.ggml.padding_token_id");
  if (c.arch == Arch::Gemma2 || c.arch == Arch::Gemma3) {
    c.activation = Activation::GeluTanh;
    c.norm_plus_one = c.scale_embeddings = c.sandwich_norms = true;
    c.qk_norm = c.arch == Arch::Gemma3;
    c.query_pre_attn_scalar = static_cast<double>(c.head_dim);
    c.attn_logit_softcap = f.get_float(a + "attn_logit_softcapping", 0.0);
    c.final_logit_softcap = f.get_float(a + "final_logit_softcapping", 0.0);
    c.sliding_window = f.get_int(a + "attention.sliding_window", 4096);
    const int64_t pattern = c.arch == Arch::Gemma2 ? 2 : 6;
    for (int64_t l = 0; l < c.num_layers; ++l)
      c.sliding_layers[l] = c.arch == Arch::Gemma2 ? l % 2 == 0 : (l + 1) % pattern != 0;
    if (c.arch == Arch::Gemma3) c.rope_local = RopeConfig{};  // local layers: theta 10000
  }
  c.validate();
  return c;
}

WeightSource gguf_source(const std::filesystem::path& path, const ModelConfig& c) {
  auto f = std::make_shared<GgufFile>(GgufFile::open(path));
  auto by_hf = std::make_shared<std::map<std::string, const GgufTensorInfo*>>();
  for (const auto& t : f->tensors()) {
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
    v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", true);
    v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
    v.remove_extra_whitespaces = f.get_bool("tokenizer.ggml.remove_extra_whitespaces", false);
    return make_spm_tokenizer(v);
  }
  fail(path.string(), ": tokenizer model '", model,
       "' is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are)");
}

}  // namespace uniattn
