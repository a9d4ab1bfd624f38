// What a checkpoint says about generating from it: the tokens and strings that end a sequence,
// bos/pad, and the sampling defaults. Read as transformers reads generation_config.json and
// config.json (generation/configuration_utils.py GenerationConfig, from_model_config), and as
// llama.cpp reads a GGUF file (tokenizer.ggml.{eos,eot,eom}_token_id all end generation,
// llama-vocab.cpp; general.sampling.* as gguf-py's metadata.py writes them from
// generation_config.json). No LibTorch.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace uniattn {

struct GenerationConfig {
  // Every id that ends a sequence, each once, in the order the files name them.
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id, pad_token_id;
  // Text that ends a sequence (transformers' stop_strings, StopStringCriteria: one string or a
  // list), each once, in the file's order; an empty list is none (transformers' generate() refuses
  // it). uniattn treats them as it treats a user's stop strings (uniattn-generate --stop, the
  // OpenAI `stop` field): the output is cut before the stop text, as vLLM and the OpenAI API do;
  // transformers instead keeps the stop string at the end of its output.
  std::vector<std::string> stop_strings;
  // Sampling defaults; unset where the checkpoint says nothing, so that the caller's (or
  // transformers' global) defaults apply: see apply_generation_config in uniattn/infer/generate.h.
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens;

  // Parses a generation_config.json object; `origin` names the file in errors. Other keys are
  // ignored (transformers keeps them as attributes uniattn has no use for); null means absent.
  // Throws uniattn::Error naming origin and the key when `j` is not an object, an id is not an
  // integer in [0, 2^31) (eos_token_id: one, or a list of at most 1024), stop_strings is not one
  // string or a list of at most 64 strings each of 1 to 1024 bytes, do_sample is not a boolean,
  // temperature < 0, top_p outside [0, 1], top_k < 0, repetition_penalty <= 0 or
  // max_new_tokens < 0.
  static GenerationConfig from_json(const nlohmann::json& j, const std::string& origin);

  // What the checkpoint at `path` says:
  //  * a directory: generation_config.json, then config.json's end tokens (eos_token_id, one or
  //    a list) added after its own, and config.json's bos/pad where it names none; either file
  //    may be missing. (transformers reads config.json only when generation_config.json is
  //    missing; uniattn stops at the end tokens of both, which differs only for a checkpoint
  //    whose files disagree.)
  //  * a .gguf file (which has no stop strings): tokenizer.ggml.eos_token_id, eot_token_id,
  //  eom_token_id (in that order),
  //    bos_token_id, padding_token_id; general.sampling.temp (do_sample = temp > 0, as llama.cpp
  //    samples at any positive temperature), top_k, top_p and penalty_repeat.
  // Throws uniattn::Error naming the file and the key when a file is unreadable or malformed (as
  // from_json; in a GGUF an id key that is no integer or lies outside tokenizer.ggml.tokens), or
  // when `path` is neither a directory nor a file.
  static GenerationConfig load(const std::filesystem::path& path);

  // Adds `id` to eos_token_ids unless it is there already.
  void add_eos(int64_t id);
  // generation_config.json as transformers writes it: eos_token_id one integer when there is
  // one, a list when there are several; stop_strings a list; unset or empty fields are left out.
  // Never throws.
  nlohmann::json to_json() const;
};

}  // namespace uniattn
