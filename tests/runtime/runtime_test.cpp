#include <ATen/Version.h>
#include <torch/torch.h>

#include "runtime/runtime.h"
#include "test_support.h"

namespace attnscope::runtime {
namespace {

TEST(Runtime, SetThreadsUsesEveryCoreByDefault) {
  set_threads(0);
  EXPECT_EQ(threads(), available_cores());
  set_threads(1);
  EXPECT_EQ(threads(), 1);
  set_threads(0);
}

// LibTorch's matrix products must not fall back to the reference BLAS (~30x slower). Which BLAS
// is right depends on the LibTorch, and its own build description says which (at::show_config,
// read here directly): Debian's calls the system libblas (BLAS_INFO=generic), which must be
// OpenBLAS (bootstrap.sh selects it); pytorch.org's links MKL in (BLAS_INFO=mkl).
TEST(Runtime, BlasIsOpenBlasOrTheMklLibTorchWasBuiltWith) {
  // Touch BLAS once so that it is certainly loaded.
  auto a = torch::ones({64, 64});
  auto c = torch::mm(a, a);
  EXPECT_FLOAT_EQ(c[0][0].item<float>(), 64.f);
  const auto info = blas_info();
  EXPECT_TRUE(info.is_optimised()) << "BLAS in use: " << info.name << " at " << info.path;
  const std::string config = at::show_config();
  if (config.find("BLAS_INFO=mkl") != std::string::npos) {
    EXPECT_EQ(info.name, "MKL");
  } else {
    EXPECT_TRUE(info.is_openblas()) << "BLAS in use: " << info.name << " at " << info.path;
    EXPECT_NE(info.config.find("OpenBLAS"), std::string::npos) << info.config;
  }
}

TEST(Runtime, TorchVersionMatchesHeader) {
  EXPECT_EQ(torch_version().rfind(std::to_string(TORCH_VERSION_MAJOR) + ".", 0), 0u);
}

TEST(GpuRuntime, CudaDeviceCountPositiveWhenAvailable) {
  if (!cuda_available()) GTEST_SKIP() << "CUDA is not available";
  EXPECT_GT(cuda_device_count(), 0);
}

}  // namespace
}  // namespace attnscope::runtime
