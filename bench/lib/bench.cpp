// Benchmark definitions: the models and shapes measured, the roofline arithmetic and the JSON
// layout. The timing loop is in bench_run.cpp.
#include <nlohmann/json.hpp>

#include <cmath>

#include "bench.h"
#include "model_args.h"
#include "uniattn/error.h"
#include "uniattn/infer/generate.h"

namespace uniattn {

std::string BenchCase::name(const std::string& model) const {
  const char* k = kind == BenchKind::Prefill       ? "/prefill"
                  : kind == BenchKind::Decode      ? "/decode"
                  : kind == BenchKind::PagedDecode ? "/paged_decode"
                                                   : "/paged_prefill";
  return model + k + "/S=" + std::to_string(seq) + "/B=" + std::to_string(batch);
}

namespace {

ModelConfig llama8b_config() {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 500000.0;
  c.rope.type = RopeConfig::Type::Llama3;
  c.rope.factor = 8.0;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position = 8192;
  c.rope_local = c.rope;
  c.tie_word_embeddings = false;
  c.sliding_layers.assign(c.num_layers, false);
  c.torch_dtype = "bfloat16";
  return c;
}

ModelConfig smollm2_config() {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 100000.0;
  c.rope_local = c.rope;
  c.tie_word_embeddings = true;
  c.sliding_layers.assign(c.num_layers, false);
  c.torch_dtype = "bfloat16";
  return c;
}

std::vector<BenchCase> decode_cases(bool quick) {
  if (quick) return {{BenchKind::Decode, 1, 512}, {BenchKind::Decode, 8, 2048}};
  return {
      {BenchKind::Decode, 1, 512}, {BenchKind::Decode, 8, 16384}, {BenchKind::Decode, 32, 4096}};
}

}  // namespace

BenchCase parse_bench_case(const std::string& spec) {
  BenchCase c;
  const auto a = spec.find(':'), b = spec.find(':', a == std::string::npos ? a : a + 1);
  auto bad = [&](const char* why) {
    fail("benchmark case '", spec, "': ", why,
         " (expected prefill:BATCH:SEQ, decode:BATCH:SEQ, paged_decode:BATCH:SEQ or "
         "paged_prefill:BATCH:SEQ)");
  };
  if (a == std::string::npos || b == std::string::npos) bad("wrong form");
  const std::string kind = spec.substr(0, a);
  if (kind == "prefill") {
    c.kind = BenchKind::Prefill;
  } else if (kind == "decode") {
    c.kind = BenchKind::Decode;
  } else if (kind == "paged_decode") {
    c.kind = BenchKind::PagedDecode;
  } else if (kind == "paged_prefill") {
    c.kind = BenchKind::PagedPrefill;
  } else {
    bad("unknown kind");
  }
  auto number = [&](const std::string& s, int64_t max) {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
      bad("batch and sequence must be positive integers");
    const int64_t v = std::stoll(s);
    if (v <= 0 || v > max) bad("batch or sequence out of range");
    return v;
  };
  c.batch = number(spec.substr(a + 1, b - a - 1), 4096);
  c.seq = number(spec.substr(b + 1), 1 << 20);
  return c;
}

BenchModel bench_model(const std::string& name, bool quick) {
  BenchModel m;
  m.name = name;
  if (name == "llama8b") {
    m.config = llama8b_config();
    m.note = "random N(0,0.02) weights, LLaMA-3.1-8B dims";
    if (quick) {
      m.cases = {{BenchKind::Prefill, 1, 1024}};
    } else {
      m.cases = {{BenchKind::Prefill, 1, 1024},
                 {BenchKind::Prefill, 1, 4096},
                 {BenchKind::Prefill, 1, 16384}};
    }
  } else if (name == "smollm2") {
    m.config = smollm2_config();
    try {
      m.weights = cli::default_model_path();
      m.note = "weights: " + m.weights.filename().string();
    } catch (const Error& e) {
      // Speed does not depend on the weight values; the model's dims are enough.
      m.note = "GGUF not found, random weights of SmolLM2-135M dims";
    }
    if (quick) {
      m.cases = {{BenchKind::Prefill, 1, 512}};
    } else {
      m.cases = {{BenchKind::Prefill, 1, 512}, {BenchKind::Prefill, 1, 2048}};
    }
  } else {
    fail("unknown benchmark model '", name, "' (expected llama8b or smollm2)");
  }
  for (const auto& c : decode_cases(quick)) m.cases.push_back(c);
  return m;
}

UniAttnSpec bench_spec(Variant variant, int64_t num_layers, const std::string& superblocks) {
  if (variant == Variant::None) return {};
  if (!superblocks.empty()) return UniAttnSpec::parse(variant, superblocks, num_layers);
  UNIATTN_CHECK(num_layers >= 4, "a UniAttn benchmark needs at least 4 layers, got ", num_layers);
  return UniAttnSpec::from_range(variant, 4, num_layers / 2, num_layers, num_layers);
}

ModelFootprint model_footprint(CausalLM& model) {
  ModelFootprint f;
  const bool tied = model->config().tie_word_embeddings;
  for (const auto& item : model->named_parameters(true)) {
    const auto& t = item.value();
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    f.param_bytes += bytes;
    const auto& key = item.key();
    const bool embed = key == "model.embed_tokens.weight";
    const bool head = key == "lm_head.weight";
    if (!(embed && !tied)) f.decode_read_bytes += bytes;
    if (head || (embed && tied)) f.lm_head_params = t.numel();
    if (!embed && !head && t.dim() == 2) f.matmul_params += t.numel();
  }
  return f;
}

double decode_roofline_ms(int64_t weight_read_bytes, int64_t kv_bytes_per_token, int64_t batch,
                          int64_t seq, double bytes_per_s) {
  const double bytes = static_cast<double>(weight_read_bytes) +
                       static_cast<double>(kv_bytes_per_token) * static_cast<double>(batch) *
                           static_cast<double>(seq);
  return bytes / bytes_per_s * 1e3;
}

double prefill_roofline_ms(int64_t matmul_params, int64_t lm_head_params, int64_t batch,
                           int64_t seq, double flops_per_s) {
  const double flops = 2.0 * (static_cast<double>(matmul_params) * static_cast<double>(batch) *
                                  static_cast<double>(seq) +
                              static_cast<double>(lm_head_params) * static_cast<double>(batch));
  return flops / flops_per_s * 1e3;
}

int64_t max_batch_at(int64_t total_memory, int64_t weight_bytes, int64_t kv_bytes_per_token,
                     int64_t seq, int64_t workspace) {
  UNIATTN_CHECK(kv_bytes_per_token > 0 && seq > 0, "max_batch_at needs positive KV bytes per ",
                "token and sequence length");
  const int64_t free_bytes = total_memory - weight_bytes - workspace;
  if (free_bytes <= 0) return 0;
  return free_bytes / (kv_bytes_per_token * seq);
}

nlohmann::json BenchResult::to_json() const {
  auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nullptr; };
  nlohmann::json rows_j = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json j = {{"case", r.case_name},
                        {"variant", r.variant},
                        {"metric", r.metric},
                        {"value", number(r.value)},
                        {"unit", r.unit}};
    if (!r.note.empty()) j["note"] = r.note;
    if (r.stats.n > 0) {
      j["n"] = r.stats.n;
      j["stdev"] = number(r.stats.stdev);
      j["min"] = number(r.stats.min);
      j["max"] = number(r.stats.max);
    }
    rows_j.push_back(std::move(j));
  }
  nlohmann::json doc = {{"gpu", gpu}, {"commit", commit}, {"command", command}};
  if (!run_id.empty()) doc["run"] = run_id;
  doc["dtype"] = dtype;
  doc["ceilings"] = ceilings.to_json();
  doc["rows"] = std::move(rows_j);
  return doc;
}

}  // namespace uniattn
