# cmake -P tests/cmake/cuda_archs_test.cmake: the translation of TORCH_CUDA_ARCH_LIST and
# CMAKE_CUDA_ARCHITECTURES into the kernels' architectures (cmake/UniattnCudaArchs.cmake).
# Expected values follow PyTorch's TORCH_CUDA_ARCH_LIST format (X.Y[a][+PTX]: SASS for X.Y, plus
# PTX with +PTX) and CMake's CUDA_ARCHITECTURES (N-real: SASS, N-virtual: PTX, N: both).
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/UniattnCudaArchs.cmake)

function(expect what got want)
  if(NOT "${got}" STREQUAL "${want}")
    message(FATAL_ERROR "${what}: got '${got}', expected '${want}'")
  endif()
endfunction()

uniattn_torch_arch_list_to_cmake("8.0 8.6;8.9 9.0a+PTX" got)
expect("torch list" "${got}" "80-real;86-real;89-real;90a-real;90a-virtual")
uniattn_torch_arch_list_to_cmake("Ampere,Hopper+PTX" got)
expect("torch names" "${got}" "80-real;86-real;90-real;90-virtual")
uniattn_torch_arch_list_to_cmake("8.0+PTX" got)
expect("PTX only as extra" "${got}" "80-real;80-virtual")

uniattn_filter_cuda_archs("75;80-real;70-virtual;90a-real;native" got)
expect("pre-Ampere dropped" "${got}" "80-real;90a-real;native")

uniattn_cuda_archs_description("80-real;86;90a-real;90-virtual" got)
expect("description" "${got}" "sm_80 sm_86 compute_86 sm_90a compute_90")
uniattn_cuda_archs_description("${UNIATTN_DEFAULT_CUDA_ARCHS}" got)
expect("default" "${got}" "sm_80 sm_86 sm_89 sm_90a compute_90")
message(STATUS "cuda_archs_test: all passed")
