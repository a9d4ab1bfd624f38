// uniattn_hf_helper: what tests/python/test_hf_remote_code.py needs from libuniattn.
//   unify MODEL VARIANT GROUPS SEED OUT   load MODEL as VARIANT over GROUPS ("1-3;4,5"), give every
//                                         W_c (and bias) N(0, (0.5 / sqrt(hidden))^2) values from
//                                         SEED, save_model() it in fp32 into OUT (with MODEL's
//                                         tokenizer and generation config)
//   logits MODEL IDS OUT                  fp32 logits [B, T, V] of the checkpoint MODEL on IDS's
//                                         input_ids [B, T] (and attention_mask, 0 = left pad, when
//                                         present), written to OUT as `logits`
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>

#include "model/load/tensor_bytes.h"
#include "uniattn/error.h"
#include "uniattn/io/safetensors.h"
#include "uniattn/model/checkpoint.h"

namespace {

using namespace uniattn;

void unify(const std::string& model, const std::string& variant, const std::string& groups,
           int64_t seed, const std::string& out) {
  LoadOptions o;
  o.uniattn = UniAttnSpec::parse(parse_variant(variant), groups, load_config(model).num_layers);
  auto m = load_model(model, o);
  at::manual_seed(static_cast<uint64_t>(seed));
  const double stddev = 0.5 / std::sqrt(static_cast<double>(m->config().hidden_size));
  at::NoGradGuard ng;
  for (auto& p : m->named_parameters(true))
    if (p.key().find(".w_c.") != std::string::npos) p.value().normal_(0.0, stddev);
  SaveOptions s;
  s.dtype = at::kFloat;
  s.source = model;
  save_model(m, out, s);
}

void logits(const std::string& model, const std::string& ids_file, const std::string& out) {
  auto m = load_model(model);
  const auto f = SafetensorsFile::open(ids_file);
  std::map<std::string, at::Tensor> in;
  for (const auto& v : f.tensors()) in[v.name] = tensor_from_view(v);
  UNIATTN_CHECK(in.count("input_ids"), ids_file, ": no input_ids");
  ForwardOptions fo;
  if (in.count("attention_mask")) fo.attention_mask = in["attention_mask"].to(at::kLong);
  at::NoGradGuard ng;
  at::Tensor keep;
  const auto y = m->forward(in["input_ids"].to(at::kLong), nullptr, fo).to(at::kFloat);
  write_safetensors(out, {tensor_to_write("logits", y, keep)});
}

int run(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "unify" && argc == 7) {
    unify(argv[2], argv[3], argv[4], std::stoll(argv[5]), argv[6]);
    return 0;
  }
  if (cmd == "logits" && argc == 5) {
    logits(argv[2], argv[3], argv[4]);
    return 0;
  }
  std::fprintf(stderr,
               "usage: uniattn_hf_helper unify MODEL VARIANT GROUPS SEED OUT\n"
               "       uniattn_hf_helper logits MODEL IDS.safetensors OUT.safetensors\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "uniattn_hf_helper: %s\n", e.what());
    return 1;
  }
}
