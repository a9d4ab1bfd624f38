#include "weights.h"

#include <cstring>
#include <set>

#include "model/decoder_layer.h"
#include "tensor_bytes.h"
#include "uniattn/error.h"
#include "uniattn/io/safetensors.h"

namespace uniattn {

namespace {

// Parameters a follower does not own, which a base checkpoint still carries.
bool is_dropped_follower_weight(const ModelConfig& c, const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return false;
  const auto dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return false;
  int64_t layer = -1;
  try {
    layer = std::stoll(name.substr(prefix.size(), dot - prefix.size()));
  } catch (...) {
    return false;
  }
  if (!c.uniattn.is_follower(layer)) return false;
  const std::string rest = name.substr(dot + 1);
  std::vector<std::string> dropped = c.uniattn.variant == Variant::Cla
                                         ? std::vector<std::string>{"k_proj", "v_proj", "k_norm"}
                                         : std::vector<std::string>{"q_proj", "k_proj", "q_norm",
                                                                    "k_norm"};
  for (const auto& d : dropped)
    if (rest.rfind("self_attn." + d + ".", 0) == 0) return true;
  return false;
}

bool is_wc(const std::string& name) { return name.find(".self_attn.w_c.") != std::string::npos; }

}  // namespace

void load_weights(CausalLM& model, const WeightSource& src, LoadReport* report) {
  const auto& c = model->config();
  at::NoGradGuard no_grad;
  auto params = model->named_parameters(/*recurse=*/true);
  std::set<std::string> available(src.names.begin(), src.names.end());
  std::set<std::string> used;
  for (auto& item : params) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    if (!available.count(name)) {
      if (is_wc(name)) {
        p.zero_();
        if (report) report->zero_filled.push_back(name);
        continue;
      }
      fail(src.origin, ": checkpoint lacks tensor '", name, "' required by the ",
           arch_name(c.arch), " model");
    }
    auto shape = src.shape(name);
    UNIATTN_CHECK(at::IntArrayRef(shape) == p.sizes(), src.origin, ": tensor '", name,
                  "' has shape ", at::IntArrayRef(shape), " but the config needs ", p.sizes());
    p.copy_(src.get(name).to(p.device(), p.scalar_type()));
    used.insert(name);
  }
  for (const auto& name : src.names) {
    if (used.count(name)) continue;
    if (is_dropped_follower_weight(c, name)) {
      if (report) report->dropped.push_back(name);
      continue;
    }
    // Checkpoints with tied embeddings sometimes store lm_head too; rotary tables are derived.
    if ((name == "lm_head.weight" && c.tie_word_embeddings) ||
        name.find("rotary_emb.inv_freq") != std::string::npos)
      continue;
    fail(src.origin, ": unexpected tensor '", name, "' (not a parameter of the ",
         arch_name(c.arch), " model", c.uniattn.enabled() ? " with " + c.uniattn.describe() : "",
         ")");
  }
}

WeightSource safetensors_source(const std::filesystem::path& dir) {
  auto ckpt = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::open(dir));
  WeightSource s;
  s.origin = dir.string();
  s.names = ckpt->names();
  s.shape = [ckpt](const std::string& n) { return ckpt->at(n).shape; };
  s.get = [ckpt](const std::string& n) { return tensor_from_view(ckpt->at(n)); };
  return s;
}

}  // namespace uniattn
