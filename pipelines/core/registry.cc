#include "pipelines/core/registry.h"

#include "pipelines/wan/wan_pipeline.h"

namespace rainserve {

Status PipelineRegistry::Register(const std::string& family, PipelineFactory factory) {
  if (!factories_.emplace(family, std::move(factory)).second) {
    return AlreadyExistsError("pipeline family '" + family + "' is already registered");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<Pipeline>> PipelineRegistry::Create(const ModelOptions& entry) const {
  const auto it = factories_.find(entry.pipeline);
  if (it == factories_.end()) {
    std::string known;
    for (const auto& kv : factories_) known += (known.empty() ? "" : ", ") + kv.first;
    return NotFoundError("model '" + entry.name + "': pipeline family '" + entry.pipeline +
                         "' is not available in this build (available: " +
                         (known.empty() ? "none" : known) + ")");
  }
  return it->second(entry);
}

std::vector<std::string> PipelineRegistry::Families() const {
  std::vector<std::string> names;
  for (const auto& kv : factories_) names.push_back(kv.first);
  return names;
}

void RegisterBuiltinPipelines(PipelineRegistry* registry) {
  (void)registry->Register("wan", LoadWanPipeline);
}

}  // namespace rainserve
