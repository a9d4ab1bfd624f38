// Shared by the GPU tests: skip (not pass) where there is no CUDA device or the build has no
// kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include "shared_softmax.h"

#define SKIP_WITHOUT_GPU()                                                                    \
  do {                                                                                        \
    if (!at::cuda::is_available()) GTEST_SKIP() << "no CUDA device";                          \
    if (!uniattn::kernels::cuda_kernels_available()) GTEST_SKIP() << "built without kernels"; \
  } while (0)
