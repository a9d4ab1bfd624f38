// The kernel-or-ATen decision table (uniattn/model/kernel_paths.h) on the GPUs people train on.
// The expected rows follow NVIDIA's compatibility rules (CUDA C++ Programming Guide, "Binary
// Compatibility": SASS sm_XY runs on compute capability X.Z for Z >= Y, sm_90a only on 9.0;
// "PTX Compatibility": compute_XY is compiled by the driver for any capability >= X.Y) and the
// published capabilities (A100 8.0, A10/RTX 3090 8.6, Jetson Orin 8.7, L40S/RTX 4090 8.9,
// H100/H200 9.0, B200 10.0, RTX 5090 12.0, T4 7.5, V100 7.0).
#include <gtest/gtest.h>

#include <string>

#include "test_util.h"
#include "uniattn/model/kernel_paths.h"

namespace uniattn {
namespace {

// The default build (cmake/UniattnCudaArchs.cmake) and the GPU script's PTX-only build.
const std::string kDefault = "sm_80 sm_86 sm_89 sm_90a compute_90";
const std::string kPtx80 = "compute_80";
const std::string kHopperOnly = "sm_90a";

CudaDeviceInfo gpu(int major, int minor, int64_t smem_kib = 99) {
  CudaDeviceInfo d;
  d.major = major;
  d.minor = minor;
  d.smem_per_block_optin = smem_kib * 1024;
  return d;
}

struct Row {
  const char* gpu;
  int major, minor;
  const std::string* build;
  bool kernel;
  const char* reason_part;  // a substring of the reason
};

TEST(KernelPaths, CapabilityAndBuildDecideThePath) {
  const Row rows[] = {
      {"V100", 7, 0, &kDefault, false, "older than sm_80"},
      {"T4", 7, 5, &kDefault, false, "sm_75 is older than sm_80"},
      {"A100", 8, 0, &kDefault, true, "sm_80 SASS"},
      {"A10", 8, 6, &kDefault, true, "sm_86 SASS"},
      {"Orin", 8, 7, &kDefault, true, "sm_86 SASS"},  // same major, newer minor
      {"L40S", 8, 9, &kDefault, true, "sm_89 SASS"},
      {"H200", 9, 0, &kDefault, true, "sm_90a SASS"},
      {"B200", 10, 0, &kDefault, true, "compute_90 PTX"},  // SASS never crosses a major version
      {"RTX 5090", 12, 0, &kDefault, true, "compute_90 PTX"},
      {"A100", 8, 0, &kPtx80, true, "compute_80 PTX"},
      {"H200", 9, 0, &kPtx80, true, "compute_80 PTX"},
      {"T4", 7, 5, &kPtx80, false, "older than sm_80"},
      {"A100", 8, 0, &kHopperOnly, false, "no kernel image for sm_80"},
      {"H200", 9, 0, &kHopperOnly, true, "sm_90a SASS"},
      {"B200", 10, 0, &kHopperOnly, false, "no kernel image for sm_100"},  // 'a' is not portable
  };
  for (const auto& r : rows) {
    for (int i = 0; i < kNumKernelOps; ++i) {
      const auto op = static_cast<KernelOp>(i);
      const auto p = choose_kernel_path(op, gpu(r.major, r.minor), *r.build, "");
      const std::string what = std::string(r.gpu) + " / " + *r.build + " / " + kernel_op_name(op);
      EXPECT_EQ(p.kernel, r.kernel) << what << ": " << p.reason;
      EXPECT_NE(p.reason.find(r.reason_part), std::string::npos) << what << ": " << p.reason;
    }
  }
}

TEST(KernelPaths, NoKernelsInTheBuild) {
  const auto p = choose_kernel_path(KernelOp::RmsNorm, gpu(9, 0), "", "");
  EXPECT_FALSE(p.kernel);
  EXPECT_NE(p.reason.find("no CUDA kernels"), std::string::npos) << p.reason;
}

TEST(KernelPaths, PrefillNeedsItsSharedMemory) {
  const auto small = gpu(8, 6, 48);
  EXPECT_FALSE(choose_kernel_path(KernelOp::PrefillAttention, small, kDefault, "").kernel);
  EXPECT_TRUE(choose_kernel_path(KernelOp::DecodeLeader, small, kDefault, "").kernel);
  EXPECT_TRUE(choose_kernel_path(KernelOp::PrefillAttention, gpu(8, 6, 64), kDefault, "").kernel);
}

TEST(KernelPaths, EnvironmentSwitch) {
  const auto h200 = gpu(9, 0);
  for (const char* all : {"1", "all", " true "}) {
    for (int i = 0; i < kNumKernelOps; ++i) {
      const auto p = choose_kernel_path(static_cast<KernelOp>(i), h200, kDefault, all);
      EXPECT_FALSE(p.kernel) << all;
      EXPECT_NE(p.reason.find("UNIATTN_DISABLE_KERNELS"), std::string::npos) << p.reason;
    }
  }
  for (const char* none : {"", "0", "off"}) {
    EXPECT_TRUE(choose_kernel_path(KernelOp::RmsNorm, h200, kDefault, none).kernel) << none;
  }
  const char* some = "rms_norm, decode_follower";
  for (int i = 0; i < kNumKernelOps; ++i) {
    const auto op = static_cast<KernelOp>(i);
    const bool off = op == KernelOp::RmsNorm || op == KernelOp::DecodeFollower;
    EXPECT_EQ(choose_kernel_path(op, h200, kDefault, some).kernel, !off) << kernel_op_name(op);
  }
  test::expect_error([&] { choose_kernel_path(KernelOp::RmsNorm, h200, kDefault, "rmsnorm"); },
                     "UNIATTN_DISABLE_KERNELS: unknown operation 'rmsnorm'");
}

TEST(KernelPaths, OpNamesAreDistinct) {
  for (int i = 0; i < kNumKernelOps; ++i)
    for (int j = i + 1; j < kNumKernelOps; ++j)
      EXPECT_STRNE(kernel_op_name(static_cast<KernelOp>(i)),
                   kernel_op_name(static_cast<KernelOp>(j)));
}

// CMake's non-image words (all, native) leave the decision to the load probe.
TEST(KernelPaths, UnknownArchWordsPassTheImageCheck) {
  EXPECT_TRUE(choose_kernel_path(KernelOp::Rotary, gpu(8, 9), "all", "").kernel);
  EXPECT_FALSE(choose_kernel_path(KernelOp::Rotary, gpu(7, 5), "all", "").kernel);
}

TEST(KernelPaths, CpuDevicesAndCpuBuildsTakeAten) {
  EXPECT_FALSE(kernel_enabled(KernelOp::RmsNorm, c10::Device(c10::kCPU)));
  EXPECT_NE(kernel_path_report(c10::Device(c10::kCPU)).find("ATen"), std::string::npos);
  if (!kernel_build_archs().empty()) GTEST_SKIP() << "CUDA build: the GPU tests cover devices";
  const auto p = kernel_path(KernelOp::DecodeLeader, c10::Device(c10::kCUDA, 0));
  EXPECT_FALSE(p.kernel);
  EXPECT_NE(p.reason.find("no CUDA kernels"), std::string::npos) << p.reason;
}

}  // namespace
}  // namespace uniattn
