// The parity suite's CUDA variants: one per flash kernel of CudaBackend
// (the Hopper TMA + wgmma kernel and the mma.sync kernel), each chosen
// explicitly and run on device copies of the host inputs. Torch-free.
#include <cuda_runtime.h>

#include <string>

#include "attention/cuda/cuda_backend.h"
#include "tests/attention/parity.h"

namespace rainserve::attention::parity {
namespace {

Status CudaCheck(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return OkStatus();
  return InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

// One device allocation, freed (which waits for the device) on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  // `bytes` of device memory with every byte `fill` (0xff: NaN in each float type).
  Status Alloc(size_t bytes, int fill) {
    bytes_ = bytes;
    RAINSERVE_RETURN_IF_ERROR(CudaCheck(cudaMalloc(&ptr_, bytes > 0 ? bytes : 1), "cudaMalloc"));
    return CudaCheck(cudaMemset(ptr_, fill, bytes), "cudaMemset");
  }
  // A device copy of `bytes` of host memory.
  Status Upload(const void* host, size_t bytes) {
    RAINSERVE_RETURN_IF_ERROR(Alloc(bytes, 0));
    return CudaCheck(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice), "upload");
  }
  Status Download(void* host) const {
    return CudaCheck(cudaMemcpy(host, ptr_, bytes_, cudaMemcpyDeviceToHost), "download");
  }
  template <typename T>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Bytes spanned by a [B, N, H, D] view (positive strides).
size_t ViewBytes(const TensorView& t) {
  const int64_t last = (t.batch - 1) * t.stride_batch + (t.tokens - 1) * t.stride_token +
                       (t.heads - 1) * t.stride_head + t.head_dim;
  return static_cast<size_t>(last * DTypeSize(t.dtype));
}

// `host` copied to the device; *dev is the same view over the copy.
Status UploadView(const TensorView& host, DeviceBuffer* buffer, TensorView* dev) {
  RAINSERVE_RETURN_IF_ERROR(buffer->Upload(host.data, ViewBytes(host)));
  *dev = host;
  dev->data = buffer->get<void>();
  return OkStatus();
}

// Device copies of a block table and of a block mask.
struct DeviceTables {
  DeviceBuffer starts, forced, counts, indices;

  Status UploadBlocks(const BlockTableView& host, BlockTableView* dev) {
    RAINSERVE_RETURN_IF_ERROR(starts.Upload(host.starts, sizeof(int32_t) * (host.num_blocks + 1)));
    RAINSERVE_RETURN_IF_ERROR(forced.Upload(host.forced, host.num_blocks));
    *dev = host;
    dev->starts = starts.get<int32_t>();
    dev->forced = forced.get<uint8_t>();
    return OkStatus();
  }
  Status UploadMask(const BlockMaskView& host, BlockMaskView* dev) {
    const size_t rows = static_cast<size_t>(host.batch * host.heads * host.q_blocks);
    RAINSERVE_RETURN_IF_ERROR(counts.Upload(host.counts, sizeof(int32_t) * rows));
    RAINSERVE_RETURN_IF_ERROR(indices.Upload(host.indices, sizeof(int32_t) * rows * host.k_blocks));
    *dev = host;
    dev->counts = counts.get<int32_t>();
    dev->indices = indices.get<int32_t>();
    return OkStatus();
  }
};

Status Finish(const char* what) {
  RAINSERVE_RETURN_IF_ERROR(CudaCheck(cudaGetLastError(), what));
  return CudaCheck(cudaDeviceSynchronize(), what);
}

class CudaRunner final : public Runner {
 public:
  explicit CudaRunner(FlashKernel kernel) : backend_(kernel) {}
  AttentionBackend& backend() override { return backend_; }

  Status Forward(const ForwardArgs& host) override {
    ForwardArgs dev = host;
    DeviceBuffer q, k, v, out, lse;
    DeviceTables tables;
    RAINSERVE_RETURN_IF_ERROR(UploadView(host.q, &q, &dev.q));
    RAINSERVE_RETURN_IF_ERROR(UploadView(host.k, &k, &dev.k));
    RAINSERVE_RETURN_IF_ERROR(UploadView(host.v, &v, &dev.v));
    RAINSERVE_RETURN_IF_ERROR(out.Alloc(ViewBytes(host.out), 0xff));
    dev.out.data = out.get<void>();
    if (host.lse != nullptr) {
      const TensorView& q_view = host.q;
      RAINSERVE_RETURN_IF_ERROR(
          lse.Alloc(sizeof(float) * q_view.batch * q_view.heads * q_view.tokens, 0xff));
      dev.lse = lse.get<float>();
    }
    RAINSERVE_RETURN_IF_ERROR(tables.UploadBlocks(host.blocks, &dev.blocks));
    RAINSERVE_RETURN_IF_ERROR(tables.UploadMask(host.mask, &dev.mask));
    dev.stream = nullptr;
    RAINSERVE_RETURN_IF_ERROR(backend_.Forward(dev));
    RAINSERVE_RETURN_IF_ERROR(Finish("forward"));
    RAINSERVE_RETURN_IF_ERROR(out.Download(host.out.data));
    return host.lse != nullptr ? lse.Download(host.lse) : OkStatus();
  }

  Status PredictMask(const MaskArgs& host) override {
    MaskArgs dev = host;
    DeviceBuffer q, k, kept;
    DeviceTables tables;
    RAINSERVE_RETURN_IF_ERROR(UploadView(host.q, &q, &dev.q));
    RAINSERVE_RETURN_IF_ERROR(UploadView(host.k, &k, &dev.k));
    RAINSERVE_RETURN_IF_ERROR(tables.UploadBlocks(host.blocks, &dev.blocks));
    const size_t rows = static_cast<size_t>(host.q.batch * host.q.heads * host.blocks.num_blocks);
    RAINSERVE_RETURN_IF_ERROR(tables.counts.Alloc(sizeof(int32_t) * rows, 0xff));
    RAINSERVE_RETURN_IF_ERROR(
        tables.indices.Alloc(sizeof(int32_t) * rows * host.blocks.num_blocks, 0xff));
    RAINSERVE_RETURN_IF_ERROR(kept.Alloc(sizeof(int64_t), 0));
    dev.counts = tables.counts.get<int32_t>();
    dev.indices = tables.indices.get<int32_t>();
    dev.kept = kept.get<int64_t>();
    dev.stream = nullptr;
    RAINSERVE_RETURN_IF_ERROR(backend_.PredictMask(dev));
    RAINSERVE_RETURN_IF_ERROR(Finish("mask prediction"));
    RAINSERVE_RETURN_IF_ERROR(tables.counts.Download(host.counts));
    RAINSERVE_RETURN_IF_ERROR(tables.indices.Download(host.indices));
    return kept.Download(host.kept);
  }

  Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer, int64_t rows,
                    int64_t row_bytes) override {
    const size_t bytes = static_cast<size_t>(outer * rows * row_bytes);
    DeviceBuffer dev_src, dev_dst, dev_index;
    RAINSERVE_RETURN_IF_ERROR(dev_src.Upload(src, bytes));
    RAINSERVE_RETURN_IF_ERROR(dev_index.Upload(index, sizeof(int64_t) * rows));
    RAINSERVE_RETURN_IF_ERROR(dev_dst.Alloc(bytes, 0xff));
    RAINSERVE_RETURN_IF_ERROR(backend_.GatherRows(dev_src.get<void>(), dev_dst.get<void>(),
                                                  dev_index.get<int64_t>(), outer, rows,
                                                  row_bytes, nullptr));
    RAINSERVE_RETURN_IF_ERROR(Finish("gather rows"));
    return dev_dst.Download(dst);
  }

 private:
  CudaBackend backend_;
};

}  // namespace

std::vector<Variant> CudaVariants() {
  std::vector<Variant> variants;
  for (FlashKernel kernel : CudaBackend::Kernels()) {
    Variant v;
    v.name = CudaBackend::NameOf(kernel);
    v.gpu = true;
    v.make = [kernel]() -> StatusOr<std::unique_ptr<Runner>> {
      RAINSERVE_RETURN_IF_ERROR(CudaBackend::CanRun(kernel));
      return std::unique_ptr<Runner>(std::make_unique<CudaRunner>(kernel));
    };
    v.documented = CudaDocumented;
    variants.push_back(std::move(v));
  }
  return variants;
}

}  // namespace rainserve::attention::parity
