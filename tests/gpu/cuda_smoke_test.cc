// Proves the GPU build: a CUDA kernel of ours and a LibTorch CUDA op run and
// give the right numbers. Skips (not fails) on machines without a GPU.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "attention/cuda/smoke.h"
#include "tests/gpu/cuda_device.h"

namespace rainserve {
namespace {

using ::rainserve::testing::HasCudaDevice;

TEST(GpuSmokeTest, SaxpyKernelComputesOnDevice) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  auto desc = cuda::DeviceDescription();
  ASSERT_TRUE(desc.ok()) << desc.status().ToString();
  std::printf("device: %s\n", desc->c_str());

  const int64_t n = 100003;  // not a multiple of the block size
  std::vector<float> x(n), y(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(i % 97) - 48.0f;
    y[i] = static_cast<float>(i % 13);
  }
  float *dx = nullptr, *dy = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(cuda::Saxpy(2.5f, dx, dy, n, nullptr).ok());
  std::vector<float> out(n);
  ASSERT_EQ(cudaMemcpy(out.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dx);
  cudaFree(dy);
  for (int64_t i = 0; i < n; ++i) ASSERT_FLOAT_EQ(out[i], 2.5f * x[i] + y[i]) << "i=" << i;
}

TEST(GpuSmokeTest, LibTorchCudaMatmulMatchesCpu) {
  if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(at::hasCUDA()) << "a GPU is present but LibTorch was built without CUDA";
  at::manual_seed(0);
  const at::Tensor a = at::randn({257, 129});
  const at::Tensor b = at::randn({129, 65});
  const at::Tensor expected = at::matmul(a.to(at::kDouble), b.to(at::kDouble));
  const at::Tensor got = at::matmul(a.to(at::kCUDA), b.to(at::kCUDA)).to(at::kCPU).to(at::kDouble);
  // fp32 (possibly TF32) accumulation over 129 terms of N(0,1) products.
  EXPECT_LT((got - expected).abs().max().item<double>(), 5e-2);
}

}  // namespace
}  // namespace rainserve
