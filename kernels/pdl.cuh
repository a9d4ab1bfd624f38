// Internal: programmatic dependent launch (PDL, sm_90+; CUDA C++ Programming Guide, "Programmatic
// Dependent Launch and Synchronization"), as the decode GEMV uses it.
//
// A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may start before the
// kernel ahead of it in the stream has finished, once every CTA of that one has executed
// griddepcontrol.launch_dependents (or exited); it must execute griddepcontrol.wait, which returns
// when the kernel ahead has completed and its writes are visible, before it reads them. The
// kernels that precede a GEMV in a decode step trigger at their start, so the GEMV is launched and
// its CTAs resident when the kernel ahead ends, instead of the launch following the drain. Both
// instructions are no-ops for a kernel launched without the attribute, and compile to nothing
// before sm_90.
#pragma once

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

}  // namespace uniattn::kernels::cuda
