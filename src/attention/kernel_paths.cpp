// Kernel-or-ATen decision per operation and device (uniattn/model/kernel_paths.h). Compiled in
// every build: without CUDA the hooks stay empty and every operation takes the ATen path.
#include "uniattn/model/kernel_paths.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <tuple>
#include <vector>

#include "cuda_hooks.h"
#include "uniattn/error.h"

namespace uniattn {
namespace {

constexpr std::array<const char*, kNumKernelOps> kOpNames = {
    "prefill_attention", "decode_leader", "decode_follower",
    "rms_norm",          "rotary",        "gated_activation",
    "cross_entropy",     "adamw",         "gemv"};

// Minimum compute capability (x10) of every kernel: mma.sync m16n8k16 bf16 and cp.async are sm_80.
constexpr int kMinArch = 80;
// Dynamic shared memory of the prefill kernel at head_dim 256: (64 + 2 * 32) rows x 256 x 2 bytes.
constexpr int64_t kPrefillSmem = 64 * 1024;

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  return std::string(s.substr(b, s.find_last_not_of(" \t") - b + 1));
}

// Whether UNIATTN_DISABLE_KERNELS (value `spec`) names op.
bool disabled_by(std::string_view spec, KernelOp op) {
  const std::string all = trim(spec);
  if (all.empty() || all == "0" || all == "false" || all == "off") return false;
  if (all == "1" || all == "all" || all == "true" || all == "on") return true;
  bool hit = false;
  std::stringstream ss(all);
  for (std::string item; std::getline(ss, item, ',');) {
    item = trim(item);
    if (item.empty()) continue;
    const auto it = std::find(kOpNames.begin(), kOpNames.end(), item);
    if (it == kOpNames.end()) {
      std::string names;
      for (const char* n : kOpNames) names += std::string(names.empty() ? "" : ", ") + n;
      fail("UNIATTN_DISABLE_KERNELS: unknown operation '", item,
           "' (expected 1, all, or a comma list of ", names, ")");
    }
    hit = hit || (it - kOpNames.begin()) == static_cast<int>(op);
  }
  return hit;
}

struct Image {
  bool ptx = false;
  int arch = 0;   // 90 for sm_90a
  char suffix{};  // 'a' (this exact GPU only), 'f' (family), or 0
  std::string word;
};

// Parses "sm_90a" / "compute_80"; nullopt for other words.
std::optional<Image> parse_image(const std::string& w) {
  Image im;
  std::string rest;
  if (w.rfind("sm_", 0) == 0) {
    rest = w.substr(3);
  } else if (w.rfind("compute_", 0) == 0) {
    im.ptx = true;
    rest = w.substr(8);
  } else {
    return std::nullopt;
  }
  if (!rest.empty() && (rest.back() == 'a' || rest.back() == 'f')) {
    im.suffix = rest.back();
    rest.pop_back();
  }
  if (rest.empty() || rest.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  im.arch = std::stoi(rest);
  im.word = w;
  return im;
}

// SASS runs on the same major version at a minor version >= its own ('a': only its own); PTX on
// any device at least its version ('a': only its own).
bool image_runs_on(const Image& im, int major, int minor) {
  const int dev = major * 10 + minor;
  if (im.suffix == 'a') return im.arch == dev;
  if (!im.ptx || im.suffix == 'f') return im.arch / 10 == major && im.arch <= dev;
  return im.arch <= dev;
}

// The image the driver would run (SASS before PTX, the newest that fits); "" if none. `unknown`
// is set when the list holds words that are not images (CMake's all/native).
std::string pick_image(std::string_view built, int major, int minor, bool& unknown) {
  std::optional<Image> best_sass, best_ptx;
  std::stringstream ss{std::string(built)};
  unknown = false;
  for (std::string w; ss >> w;) {
    const auto im = parse_image(w);
    if (!im) {
      unknown = true;
      continue;
    }
    if (!image_runs_on(*im, major, minor)) continue;
    auto& best = im->ptx ? best_ptx : best_sass;
    if (!best || im->arch > best->arch) best = im;
  }
  if (best_sass) return best_sass->word + " SASS";
  if (best_ptx) return best_ptx->word + " PTX, compiled by the driver";
  return {};
}

}  // namespace

const char* kernel_op_name(KernelOp op) { return kOpNames.at(static_cast<size_t>(op)); }

KernelPath choose_kernel_path(KernelOp op, const CudaDeviceInfo& dev, std::string_view built_archs,
                              std::string_view disabled) {
  if (trim(built_archs).empty()) return {false, "this build has no CUDA kernels"};
  if (disabled_by(disabled, op)) return {false, "disabled by UNIATTN_DISABLE_KERNELS"};
  const std::string sm = "sm_" + std::to_string(dev.major) + std::to_string(dev.minor);
  if (dev.major * 10 + dev.minor < kMinArch) {
    return {false, sm + " is older than sm_80, which the kernels need (mma.sync bf16, cp.async)"};
  }
  if (op == KernelOp::PrefillAttention && dev.smem_per_block_optin < kPrefillSmem) {
    return {false, sm + " offers " + std::to_string(dev.smem_per_block_optin) +
                       " bytes of shared memory per block; the prefill kernel needs 65536"};
  }
  bool unknown = false;
  std::string image = pick_image(built_archs, dev.major, dev.minor, unknown);
  if (image.empty() && !unknown) {
    return {false, "no kernel image for " + sm + " in this build (" + trim(built_archs) + ")"};
  }
  if (image.empty()) image = "image from '" + trim(built_archs) + "'";
  return {true, image};
}

namespace {

using DevicePaths = std::array<KernelPath, kNumKernelOps>;
constexpr int kMaxDevices = 64;

struct PathCache {
  std::mutex mu;
  std::array<std::atomic<const DevicePaths*>, kMaxDevices> by_device{};
  std::vector<std::unique_ptr<DevicePaths>> store;  // every table handed out stays valid
  KernelPathOverride override_;
};
PathCache& cache() {
  static PathCache c;
  return c;
}

std::array<std::atomic<uint64_t>, kNumKernelOps>& call_counts() {
  static std::array<std::atomic<uint64_t>, kNumKernelOps> counts{};
  return counts;
}

// Decides every op for one device (cache mutex held).
std::unique_ptr<DevicePaths> decide(int index, const KernelPathOverride& ov) {
  const auto& h = kernels::detail::cuda_hooks();
  const std::string archs = h.built_archs ? h.built_archs : "";
  CudaDeviceInfo info;
  if (!archs.empty() && h.device_info) info = h.device_info(index);
  if (ov.capability) std::tie(info.major, info.minor) = *ov.capability;
  std::string disabled;
  if (ov.disabled) {
    disabled = *ov.disabled;
  } else if (const char* e = std::getenv("UNIATTN_DISABLE_KERNELS")) {
    disabled = e;
  }
  auto paths = std::make_unique<DevicePaths>();
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto op = static_cast<KernelOp>(i);
    auto p = choose_kernel_path(op, info, archs, disabled);
    if (p.kernel && h.probe) {
      const std::string err = h.probe(op, index);
      if (!err.empty()) p = {false, "the kernel image does not load on this device: " + err};
    }
    (*paths)[i] = std::move(p);
  }
  return paths;
}

const DevicePaths* paths_for(const c10::Device& device) {
  if (!device.is_cuda()) return nullptr;
  const auto& h = kernels::detail::cuda_hooks();
  int index = device.has_index() ? device.index() : (h.current_device ? h.current_device() : 0);
  UNIATTN_CHECK(index >= 0 && index < kMaxDevices, "CUDA device index ", index, " out of range");
  auto& c = cache();
  if (const DevicePaths* p = c.by_device[index].load(std::memory_order_acquire)) return p;
  std::lock_guard<std::mutex> lock(c.mu);
  if (const DevicePaths* p = c.by_device[index].load(std::memory_order_acquire)) return p;
  c.store.push_back(decide(index, c.override_));
  c.by_device[index].store(c.store.back().get(), std::memory_order_release);
  return c.store.back().get();
}

}  // namespace

KernelPath kernel_path(KernelOp op, const c10::Device& device) {
  const DevicePaths* p = paths_for(device);
  if (!p) return {false, "not a CUDA device"};
  return (*p)[static_cast<size_t>(op)];
}

bool kernel_enabled(KernelOp op, const c10::Device& device) {
  const DevicePaths* p = paths_for(device);
  return p && (*p)[static_cast<size_t>(op)].kernel;
}

std::string kernel_build_archs() {
  const char* a = kernels::detail::cuda_hooks().built_archs;
  return a ? a : "";
}

std::string kernel_path_report(const c10::Device& device) {
  if (!device.is_cuda()) return device.str() + ": every operation takes the ATen path\n";
  const auto& h = kernels::detail::cuda_hooks();
  std::string out = device.str();
  if (!kernel_build_archs().empty() && h.device_info) {
    const int index = device.has_index() ? device.index() : h.current_device();
    const auto info = h.device_info(index);
    out +=
        " (" + info.name + ", sm_" + std::to_string(info.major) + std::to_string(info.minor) + ")";
  }
  out += "; kernel images in this build: " +
         (kernel_build_archs().empty() ? std::string("none") : kernel_build_archs()) + "\n";
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto p = kernel_path(static_cast<KernelOp>(i), device);
    out += std::string("  ") + kOpNames[i] + ": " + (p.kernel ? "kernel" : "aten") + " (" +
           p.reason + ")\n";
  }
  return out;
}

void set_kernel_path_override(const KernelPathOverride& o) {
  auto& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.override_ = o;
  for (auto& p : c.by_device) p.store(nullptr, std::memory_order_release);
}

uint64_t kernel_call_count(KernelOp op) {
  return call_counts().at(static_cast<size_t>(op)).load(std::memory_order_relaxed);
}

namespace kernels::detail {
void count_kernel_call(KernelOp op) {
  call_counts().at(static_cast<size_t>(op)).fetch_add(1, std::memory_order_relaxed);
}
}  // namespace kernels::detail

}  // namespace uniattn
