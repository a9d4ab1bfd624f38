// Internal: programmatic dependent launch (PDL, sm_90+; CUDA C++ Programming Guide, "Programmatic
// Dependent Launch and Synchronization") for the kernels of a decode step.
//
// A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may start before the
// kernel ahead of it in the stream has finished, once every CTA of that one has executed
// griddepcontrol.launch_dependents (or exited); it must execute griddepcontrol.wait, which returns
// when the kernel ahead has completed and its writes are visible, before it reads them. Every
// kernel launched through launch_pdl triggers and waits before it touches memory, so the order of
// all memory accesses is the stream's, and only the launch of the next kernel overlaps the end of
// the one ahead: at decode batch 1, some 400 kernels of a few microseconds each. Both instructions
// are no-ops for a kernel launched without the attribute (behind an ATen kernel, or with
// UNIATTN_PDL=0) and compile to nothing before sm_90.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string_view>
#include <utility>

namespace uniattn::kernels::cuda {

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The first step of a kernel launched through launch_pdl that has nothing to do before it reads
// what the kernel ahead wrote: let the next kernel launch, then wait for the one ahead.
__device__ __forceinline__ void pdl_begin() {
  pdl_launch_dependents();
  pdl_wait();
}

// Whether `kernel` launches with PDL on the current device: unless UNIATTN_PDL=0 (comparisons),
// when the device is sm_90 or newer and the image it runs was compiled for sm_90 or newer (PTX
// version >= 90). A build holding only older images (compute_80 PTX JIT-compiled for an H100, say)
// has the griddepcontrol instructions compiled out, and an early launch there would let a kernel
// read its predecessor's output before it is complete. Decided once per (kernel, device), on a
// launch outside stream capture (the query is not one a capture admits); a launch captured before
// the decision runs without PDL.
inline bool pdl_enabled(const void* kernel, cudaStream_t stream) {
  static const bool allowed = [] {
    const char* e = std::getenv("UNIATTN_PDL");
    return !(e && std::string_view(e) == "0");
  }();
  int dev = 0;
  if (!allowed || cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, bool> decided;
  const std::lock_guard<std::mutex> lock(mu);
  if (const auto it = decided.find({kernel, dev}); it != decided.end()) return it->second;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess ||
      capture != cudaStreamCaptureStatusNone) {
    cudaGetLastError();
    return false;
  }
  int major = 0;
  cudaFuncAttributes attr{};
  bool on = false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaFuncGetAttributes(&attr, kernel) != cudaSuccess)
    cudaGetLastError();  // the error of our own query: the kernel launches without PDL
  else
    on = major >= 9 && attr.ptxVersion >= 90;
  decided.emplace(std::make_pair(kernel, dev), on);
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization where
// pdl_enabled(kernel, stream). The kernel must call pdl_begin() (or pdl_launch_dependents() and
// pdl_wait()) before it touches memory another kernel writes.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                       cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled(reinterpret_cast<const void*>(kernel), stream) ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

}  // namespace uniattn::kernels::cuda
