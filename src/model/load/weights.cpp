#include "weights.h"

#include <cstring>
#include <set>

#include "model/decoder_layer.h"
#include "tensor_bytes.h"
#include "uniattn/error.h"
#include "uniattn/io/safetensors.h"
#include "uniattn/model/layer_role.h"

namespace uniattn {

namespace {

// Parameters a follower does not own, which a base checkpoint still carries.
bool is_dropped_follower_weight(const std::vector<LayerRole>& roles, const std::string& name) {
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
  // A layer the model does not have is not a follower: the caller reports the tensor.
  if (layer < 0 || layer >= static_cast<int64_t>(roles.size())) return false;
  const LayerRole& r = roles[static_cast<size_t>(layer)];
  const std::string rest = name.substr(dot + 1);
  auto is = [&](const char* module) {
    return rest.rfind(std::string("self_attn.") + module + ".", 0) == 0;
  };
  // q/k norms (Gemma-3) go with their projections.
  return (!r.owns_q && (is("q_proj") || is("q_norm"))) ||
         (!r.owns_k && (is("k_proj") || is("k_norm"))) || (!r.owns_v && is("v_proj"));
}

bool is_wc(const std::string& name) { return name.find(".self_attn.w_c.") != std::string::npos; }

}  // namespace

void load_weights(CausalLM& model, const WeightSource& src, LoadReport* report) {
  const auto& c = model->config();
  const auto roles = layer_roles(c);
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
      fail(src.origin, ": checkpoint lacks tensor '", name, "' required by the ", arch_name(c.arch),
           " model");
    }
    auto shape = src.shape(name);
    UNIATTN_CHECK(at::IntArrayRef(shape) == p.sizes(), src.origin, ": tensor '", name,
                  "' has shape ", at::IntArrayRef(shape), " but the config needs ", p.sizes());
    p.copy_(src.get(name).to(p.device(), p.scalar_type()));
    used.insert(name);
  }
  for (const auto& name : src.names) {
    if (used.count(name)) continue;
    if (is_dropped_follower_weight(roles, name)) {
      if (report) report->dropped.push_back(name);
      continue;
    }
    // Checkpoints with tied embeddings sometimes store lm_head too; rotary tables are derived.
    if ((name == "lm_head.weight" && c.tie_word_embeddings) ||
        name.find("rotary_emb.inv_freq") != std::string::npos)
      continue;
    fail(src.origin, ": unexpected tensor '", name, "' (not a parameter of the ", arch_name(c.arch),
         " model", c.uniattn.enabled() ? " with " + c.uniattn.describe() : "", ")");
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
