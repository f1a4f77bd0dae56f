// Shared by the flash forward kernels (flash_fwd.cu, flash_fwd_sm90.cu): the
// one place where the runtime dtype and head dim become template arguments,
// and the launch with its dynamic shared memory and error check.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "attention/cuda/kernels.h"

namespace rainserve::attention::cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(std::integral_constant<int, D>{}, TypeTag<T>{}) for the
// params' head dim (64 or 128) and dtype (bf16 or fp16).
template <typename Launch>
Status DispatchFlash(const FlashParams& p, const char* name, Launch&& launch) {
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.head_dim == 128) {
    return bf16 ? launch(std::integral_constant<int, 128>{}, TypeTag<__nv_bfloat16>{})
                : launch(std::integral_constant<int, 128>{}, TypeTag<__half>{});
  }
  if (p.head_dim == 64) {
    return bf16 ? launch(std::integral_constant<int, 64>{}, TypeTag<__nv_bfloat16>{})
                : launch(std::integral_constant<int, 64>{}, TypeTag<__half>{});
  }
  return UnimplementedError(std::string(name) + ": head_dim " + std::to_string(p.head_dim) +
                            " (supported: 64, 128)");
}

// This CTA's (query block, head, batch element): the row the params' row
// order gives its launch index, or else FlashTileOf that index.
// The block index is read with volatile moves so that the compiler recomputes
// the tile where a kernel asks for it again (a few integer instructions)
// instead of keeping it live in registers through the main loop.
__device__ __forceinline__ FlashTile TileOf(const FlashParams& p) {
  unsigned x, y, z;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(x));
  asm volatile("mov.u32 %0, %%ctaid.y;" : "=r"(y));
  asm volatile("mov.u32 %0, %%ctaid.z;" : "=r"(z));
  const int linear = static_cast<int>(x + gridDim.x * (y + gridDim.y * z));
  if (p.row_order != nullptr) return FlashTileOfRow(p.row_order[linear], p.num_blocks, p.heads);
  return FlashTileOf(linear, p.num_blocks, p.heavy_rows, p.heads, p.batch);
}

// One CTA per (query block, head, batch element); `extra` follows the params.
template <typename Kernel, typename... Extra>
Status LaunchFlash(Kernel kernel, int threads, int smem_bytes, const FlashParams& p,
                   cudaStream_t stream, const char* name, const Extra&... extra) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err == cudaSuccess) {
    kernel<<<dim3(p.num_blocks, p.heads, p.batch), threads, smem_bytes, stream>>>(p, extra...);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess) {
    return InternalError(std::string(name) + " launch: " + cudaGetErrorString(err));
  }
  return OkStatus();
}

}  // namespace rainserve::attention::cuda
