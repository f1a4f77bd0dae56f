// The parity suite's CUDA variants in a build without CUDA: the same names
// as parity_cuda.cc, each skipping with the reason, so every run lists every
// (case, variant) row.
#include "tests/attention/parity.h"

namespace rainserve::attention::parity {

std::vector<Variant> CudaVariants() {
  std::vector<Variant> variants;
  for (const char* name : {"cuda-sm90", "cuda-mma"}) {
    Variant v;
    v.name = name;
    v.gpu = true;
    v.make = []() -> StatusOr<std::unique_ptr<Runner>> {
      return UnavailableError("built without CUDA (RAINSERVE_ENABLE_CUDA=OFF)");
    };
    v.documented = CudaDocumented;
    variants.push_back(std::move(v));
  }
  return variants;
}

}  // namespace rainserve::attention::parity
