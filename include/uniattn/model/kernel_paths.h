// Which operations run uniattn's CUDA kernels on a GPU and which take their ATen path, and why.
//
// Every operation with a CUDA kernel (kernels/) also has an ATen path that computes the same
// function. The kernels need sm_80 or newer (mma.sync m16n8k16, cp.async, ldmatrix) and an image
// in the build that the device can run: SASS of the same major version and a minor version not
// above the device's (sm_90a: only sm_90), or PTX of a version not above the device's, which the
// driver compiles (CUDA C++ Programming Guide, "Binary Compatibility" and "PTX Compatibility").
// The choice is made once per device, on its first use, and stays for the process.
//
// UNIATTN_DISABLE_KERNELS forces the ATen path: "1" (or "all") for every operation, or a comma
// list of operation names (kernel_op_name(), e.g. "rms_norm,decode_follower"); "" or "0": none.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace uniattn {

// Operations with a CUDA kernel. PrefillAttention is the prefill leader and follower (one
// kernel); DecodeLeader also serves plain decode attention.
enum class KernelOp {
  PrefillAttention,
  DecodeLeader,
  DecodeFollower,
  RmsNorm,
  Rotary,
  GatedActivation,
  CrossEntropy,  // the training loss over the vocabulary (forward and backward)
  AdamW,         // the optimiser step of the trainer's FusedAdamW
  Gemv           // decode batch 1 projections (one row): y = W x (+ bias) (+ add)
};
inline constexpr int kNumKernelOps = 9;

// "prefill_attention", "decode_leader", "decode_follower", "rms_norm", "rotary",
// "gated_activation", "cross_entropy", "adamw", "gemv": the names UNIATTN_DISABLE_KERNELS takes.
const char* kernel_op_name(KernelOp op);

// What the decision reads from a device (cudaDeviceProp).
struct CudaDeviceInfo {
  int major = 0, minor = 0;          // compute capability
  int64_t smem_per_block_optin = 0;  // bytes of shared memory a block may opt in to
  std::string name;                  // e.g. "NVIDIA H200" (reports only)
};

struct KernelPath {
  bool kernel = false;  // true: the CUDA kernel runs; false: the ATen path
  std::string reason;   // why, e.g. "sm_90a SASS" or "sm_75 is older than sm_80 ..."
};

// The decision table, a pure function. `built_archs` lists the build's images as
// "sm_80 sm_86 sm_89 sm_90a compute_90" ("" = built without kernels; words other than sm_N /
// compute_N, such as CMake's "all", make the image check pass); `disabled` is the value of
// UNIATTN_DISABLE_KERNELS. ATen when the build has no kernels, the op is disabled, the device is
// older than sm_80, it lacks the shared memory the kernel needs (prefill: 64 KiB) or no image fits
// it; otherwise the kernel, with the image it runs named in the reason. Throws uniattn::Error
// naming UNIATTN_DISABLE_KERNELS when `disabled` holds an unknown operation name.
KernelPath choose_kernel_path(KernelOp op, const CudaDeviceInfo& dev, std::string_view built_archs,
                              std::string_view disabled);

// The decision for `device` (a CUDA device; without an index the current one), made on the first
// call for that device from its properties, UNIATTN_DISABLE_KERNELS and a load of the kernel
// image (which also JIT-compiles PTX), then cached. Non-CUDA devices: ATen. kernel_enabled is the
// cheap form the operations call. Throw as choose_kernel_path does.
KernelPath kernel_path(KernelOp op, const c10::Device& device);
bool kernel_enabled(KernelOp op, const c10::Device& device);

// Several lines for logs (uniattn-generate --verbose): the device, the build's images and one
// "  <op>: kernel|aten (<reason>)" line per operation. Non-CUDA devices: one line.
std::string kernel_path_report(const c10::Device& device);

// The build's kernel images as choose_kernel_path reads them ("" without CUDA kernels).
std::string kernel_build_archs();

// Tests: replaces UNIATTN_DISABLE_KERNELS and/or every device's compute capability, and drops the
// cached decisions (the next call decides again). A default-constructed override restores both.
struct KernelPathOverride {
  std::optional<std::string> disabled;
  std::optional<std::pair<int, int>> capability;  // {major, minor}
};
void set_kernel_path_override(const KernelPathOverride& o);

// How often op's CUDA kernel was called in this process (tests check which path ran).
uint64_t kernel_call_count(KernelOp op);

}  // namespace uniattn
