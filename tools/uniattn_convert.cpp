// uniattn-convert: GGUF -> Hugging Face directory (config.json, model.safetensors,
// generation_config.json with llama.cpp's end tokens, tokenizer files with the chat template).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "uniattn/error.h"
#include "uniattn/error_message.h"
#include "uniattn/model/checkpoint.h"

int main(int argc, char** argv) {
  CLI::App app{"Convert a GGUF model into a Hugging Face safetensors directory"};
  std::string in, out, dtype = "bf16";
  app.add_option("gguf", in, "input .gguf file")->required()->check(CLI::ExistingFile);
  app.add_option("out", out, "output directory")->required();
  app.add_option("--dtype", dtype, "stored precision")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  CLI11_PARSE(app, argc, argv);
  try {
    auto st = dtype == "f32" ? at::kFloat : dtype == "f16" ? at::kHalf : at::kBFloat16;
    uniattn::convert_gguf(in, out, st);
    std::printf("wrote %s\n", out.c_str());
  } catch (const std::exception& e) {  // uniattn::Error, and LibTorch's or std's (bad_alloc)
    std::fprintf(stderr, "uniattn-convert: %s\n", uniattn::error_message(e).c_str());
    return 1;
  }
  return 0;
}
