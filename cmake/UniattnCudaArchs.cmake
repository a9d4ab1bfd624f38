# GPU architectures of the CUDA kernels (kernels/*.cu).
#
# The kernels use sm_80 instructions (mma.sync m16n8k16 in bf16/fp16, cp.async, ldmatrix) and
# nothing newer, so every architecture from sm_80 up gets native code. Default: SASS for sm_80
# (A100; also runs on sm_87), sm_86 (RTX 30xx, A10, A40), sm_89 (L4, L40S, RTX 40xx) and sm_90a
# (H100, H200), plus compute_90 PTX that the driver compiles for newer GPUs (Blackwell).
#
# Precedence: -DCMAKE_CUDA_ARCHITECTURES (or CMake's CUDAARCHS environment variable), then
# TORCH_CUDA_ARCH_LIST (-D or environment, PyTorch's format: "8.0 8.6 9.0a+PTX", ';' or ' '
# separated, also Ampere/Ada/Hopper), then the default. Entries below sm_80 are dropped with a
# message: those GPUs take the ATen path at run time.

set(UNIATTN_DEFAULT_CUDA_ARCHS "80-real;86-real;89-real;90a-real;90-virtual")

# TORCH_CUDA_ARCH_LIST -> CMake's CUDA_ARCHITECTURES list ("9.0a+PTX" -> 90a-real;90a-virtual).
function(uniattn_torch_arch_list_to_cmake spec out)
  string(REPLACE ";" " " spec "${spec}")
  string(REPLACE "," " " spec "${spec}")
  string(REPLACE "Ampere" "8.0 8.6" spec "${spec}")
  string(REPLACE "Ada" "8.9" spec "${spec}")
  string(REPLACE "Hopper" "9.0" spec "${spec}")
  separate_arguments(tokens UNIX_COMMAND "${spec}")
  set(result)
  foreach(tok ${tokens})
    if(NOT tok MATCHES "^([0-9]+)\\.([0-9]+)([af]?)(\\+PTX)?$")
      message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST entry '${tok}' is not of the form 8.6, 9.0a or "
        "9.0+PTX (or Ampere, Ada, Hopper)")
    endif()
    set(arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    list(APPEND result "${arch}-real")
    if(CMAKE_MATCH_4)
      list(APPEND result "${arch}-virtual")
    endif()
  endforeach()
  set(${out} "${result}" PARENT_SCOPE)
endfunction()

# Drops entries below sm_80 (the kernels do not compile there); keeps all/all-major/native as
# given.
function(uniattn_filter_cuda_archs archs out)
  set(kept)
  foreach(a ${archs})
    if(a MATCHES "^([0-9]+)[af]?(-real|-virtual)?$" AND CMAKE_MATCH_1 LESS 80)
      message(STATUS "uniattn: CUDA architecture ${a} dropped: the kernels need sm_80 or newer "
        "(such GPUs take the ATen path)")
    else()
      list(APPEND kept "${a}")
    endif()
  endforeach()
  set(${out} "${kept}" PARENT_SCOPE)
endfunction()

# The list as the run-time check reads it: "sm_80 sm_90a compute_90" (a plain "86" is both
# sm_86 and compute_86); all/all-major/native stay as words (the check then relies on a probe).
function(uniattn_cuda_archs_description archs out)
  set(words)
  foreach(a ${archs})
    if(a MATCHES "^([0-9]+[af]?)-real$")
      list(APPEND words "sm_${CMAKE_MATCH_1}")
    elseif(a MATCHES "^([0-9]+[af]?)-virtual$")
      list(APPEND words "compute_${CMAKE_MATCH_1}")
    elseif(a MATCHES "^([0-9]+[af]?)$")
      list(APPEND words "sm_${CMAKE_MATCH_1}" "compute_${CMAKE_MATCH_1}")
    else()
      list(APPEND words "${a}")
    endif()
  endforeach()
  string(REPLACE ";" " " words "${words}")
  set(${out} "${words}" PARENT_SCOPE)
endfunction()

# Call before enable_language(CUDA): seeds CMAKE_CUDA_ARCHITECTURES from TORCH_CUDA_ARCH_LIST or
# the default unless the user chose it. In an existing build directory the cached value stays,
# except that a value this function chose follows a TORCH_CUDA_ARCH_LIST given now.
macro(uniattn_choose_cuda_archs)
  set(_uniattn_torch_list "")
  if(DEFINED TORCH_CUDA_ARCH_LIST)
    set(_uniattn_torch_list "${TORCH_CUDA_ARCH_LIST}")
  elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(_uniattn_torch_list "$ENV{TORCH_CUDA_ARCH_LIST}")
  endif()
  set(_uniattn_ours FALSE)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
    set(_uniattn_ours TRUE)
  elseif(_uniattn_torch_list AND DEFINED _UNIATTN_CUDA_ARCHS_AUTO AND
         "${CMAKE_CUDA_ARCHITECTURES}" STREQUAL "${_UNIATTN_CUDA_ARCHS_AUTO}")
    set(_uniattn_ours TRUE)
  endif()
  if(_uniattn_ours)
    if(_uniattn_torch_list)
      uniattn_torch_arch_list_to_cmake("${_uniattn_torch_list}" _uniattn_archs)
      message(STATUS "uniattn: CUDA architectures from TORCH_CUDA_ARCH_LIST='${_uniattn_torch_list}'")
    else()
      set(_uniattn_archs "${UNIATTN_DEFAULT_CUDA_ARCHS}")
    endif()
    set(CMAKE_CUDA_ARCHITECTURES "${_uniattn_archs}" CACHE STRING
      "CUDA architectures of the kernels (cmake/UniattnCudaArchs.cmake)" FORCE)
    set(_UNIATTN_CUDA_ARCHS_AUTO "${_uniattn_archs}" CACHE INTERNAL "")
  endif()
endmacro()

# Call after enable_language(CUDA): sets UNIATTN_KERNEL_CUDA_ARCHS (CUDA_ARCHITECTURES of
# uniattn_kernels), UNIATTN_KERNEL_CUDA_ARCHS_DESC and _UNIATTN_CUDA_ARCHS_GIVEN (the value as
# chosen, restored after find_package(Torch)).
macro(uniattn_finish_cuda_archs)
  set(_UNIATTN_CUDA_ARCHS_GIVEN "${CMAKE_CUDA_ARCHITECTURES}")
  uniattn_filter_cuda_archs("${CMAKE_CUDA_ARCHITECTURES}" UNIATTN_KERNEL_CUDA_ARCHS)
  if(NOT UNIATTN_KERNEL_CUDA_ARCHS)
    message(WARNING "uniattn: CMAKE_CUDA_ARCHITECTURES='${CMAKE_CUDA_ARCHITECTURES}' names no "
      "architecture the kernels support (sm_80+); using ${UNIATTN_DEFAULT_CUDA_ARCHS}")
    set(UNIATTN_KERNEL_CUDA_ARCHS "${UNIATTN_DEFAULT_CUDA_ARCHS}")
  endif()
  uniattn_cuda_archs_description("${UNIATTN_KERNEL_CUDA_ARCHS}" UNIATTN_KERNEL_CUDA_ARCHS_DESC)
  message(STATUS "uniattn: CUDA kernels for ${UNIATTN_KERNEL_CUDA_ARCHS_DESC}")
endmacro()

# Call after find_package(Torch): Torch's CMake appends -gencode flags for TORCH_CUDA_ARCH_LIST to
# CMAKE_CUDA_FLAGS and turns CMAKE_CUDA_ARCHITECTURES off; the kernels' architectures come from
# their CUDA_ARCHITECTURES property instead, so those flags are removed.
macro(uniattn_strip_torch_gencode)
  string(REGEX REPLACE "-gencode[ ]+arch=[^ ]+" "" CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")
endmacro()
