#include "pipelines/wan/wan_experts.h"

#include <algorithm>

#include "common/clock.h"
#include "pipelines/core/torch_device.h"

namespace rainserve {

StatusOr<std::unique_ptr<WanExperts>> WanExperts::Load(const std::string& dir,
                                                       const WanModelIndex& index,
                                                       int64_t num_train_timesteps,
                                                       at::ScalarType dtype, at::Device device,
                                                       bool offload_idle,
                                                       const std::vector<LoraFile>& loras,
                                                       bool fp8) {
  std::unique_ptr<WanExperts> e(new WanExperts());
  e->device_ = device;
  e->offload_idle_ = offload_idle && index.has_transformer_2 && !device.is_cpu();
  const char* folders[2] = {"/transformer", "/transformer_2"};
  for (int i = 0; i < (index.has_transformer_2 ? 2 : 1); ++i) {
    // An offloaded idle expert loads straight into host memory.
    const at::Device load_on = (i == 1 && e->offload_idle_) ? at::Device(at::kCPU) : device;
    RAINSERVE_ASSIGN_OR_RETURN(e->experts_[i],
                               WanTransformer::Load(dir + folders[i], dtype, load_on));
    RAINSERVE_RETURN_IF_ERROR(e->experts_[i]->MergeLoras(loras));
    if (fp8) RAINSERVE_RETURN_IF_ERROR(e->experts_[i]->QuantizeLinearsToFp8(device));
  }
  if (e->experts_[1]) {
    if (WanTransformerConfigJson(e->experts_[0]->config()) !=
        WanTransformerConfigJson(e->experts_[1]->config())) {
      return InvalidArgumentError(dir + "/transformer and " + dir +
                                  "/transformer_2: the experts' config.json files differ");
    }
    e->boundary_timestep_ = *index.boundary_ratio * static_cast<double>(num_train_timesteps);
  }
  return e;
}

StatusOr<std::unique_ptr<WanExperts>> WanExperts::FromModels(
    std::unique_ptr<WanTransformer> high, std::unique_ptr<WanTransformer> low,
    double boundary_timestep, at::Device device, bool offload_idle) {
  std::unique_ptr<WanExperts> e(new WanExperts());
  e->device_ = device;
  e->offload_idle_ = offload_idle && !device.is_cpu();
  e->boundary_timestep_ = boundary_timestep;
  RAINSERVE_RETURN_IF_ERROR(high->MoveTo(device));
  RAINSERVE_RETURN_IF_ERROR(low->MoveTo(e->offload_idle_ ? at::Device(at::kCPU) : device));
  e->experts_ = {std::move(high), std::move(low)};
  return e;
}

StatusOr<const WanTransformer*> WanExperts::Resident(int64_t index, double* seconds) {
  WanTransformer* want = experts_[index].get();
  if (want->device() != device_) {
    const auto start = SteadyClock::now();
    WanTransformer* other = experts_[1 - index].get();
    RAINSERVE_RETURN_IF_ERROR(other->MoveTo(at::kCPU));
    RAINSERVE_RETURN_IF_ERROR(want->MoveTo(device_));
    Synchronize(device_);
    if (seconds != nullptr) *seconds += SecondsSince(start);
  }
  return want;
}

uint64_t WanExperts::DeviceParameterBytes() const {
  const uint64_t first = ParameterBytes(experts_[0]->NamedParameters());
  if (!experts_[1]) return first;
  const uint64_t second = ParameterBytes(experts_[1]->NamedParameters());
  return offload_idle_ ? std::max(first, second) : first + second;
}

}  // namespace rainserve
