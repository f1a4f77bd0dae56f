// Token permutation on the GPU: a row gather used for both directions
// (pass the gather index to permute, the scatter index to un-permute).
// One CTA per destination row; 16-byte copies when rows and pointers allow.
#include <cuda_runtime.h>

#include <string>

#include "attention/cuda/kernels.h"

namespace rainserve::attention::cuda {
namespace {

template <typename Word>
__global__ void GatherRowsKernel(const Word* __restrict__ src, Word* __restrict__ dst,
                                 const int64_t* __restrict__ index, int64_t rows,
                                 int64_t row_words) {
  const int64_t i = blockIdx.x, o = blockIdx.y;
  const Word* s = src + (o * rows + index[i]) * row_words;
  Word* d = dst + (o * rows + i) * row_words;
  for (int64_t w = threadIdx.x; w < row_words; w += blockDim.x) d[w] = s[w];
}

}  // namespace

Status LaunchGatherRows(const void* src, void* dst, const int64_t* index, int64_t outer,
                        int64_t rows, int64_t row_bytes, void* stream) {
  if (rows == 0 || outer == 0) return OkStatus();
  if (rows > 0x7fffffff || outer > 65535) {
    return UnimplementedError("cuda gather: too many rows (" + std::to_string(rows) + " x " +
                              std::to_string(outer) + ")");
  }
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(outer));
  const bool aligned16 = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  if (aligned16) {
    GatherRowsKernel<uint4><<<grid, 128, 0, s>>>(static_cast<const uint4*>(src),
                                                 static_cast<uint4*>(dst), index, rows,
                                                 row_bytes / 16);
  } else {
    GatherRowsKernel<unsigned char><<<grid, 128, 0, s>>>(static_cast<const unsigned char*>(src),
                                                         static_cast<unsigned char*>(dst), index,
                                                         rows, row_bytes);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return InternalError(std::string("gather launch: ") + cudaGetErrorString(err));
  return OkStatus();
}

}  // namespace rainserve::attention::cuda
