// Name -> factory table for pipeline families ("wan", ...).
//
// A pipeline family registers itself in RegisterBuiltinPipelines(); the server
// looks families up by the `pipeline` key of a model entry.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "pipelines/core/pipeline.h"

namespace rainserve {

class PipelineRegistry {
 public:
  // ALREADY_EXISTS when `family` is taken.
  Status Register(const std::string& family, PipelineFactory factory);
  // NOT_FOUND naming the known families when `entry.pipeline` is unknown.
  StatusOr<std::unique_ptr<Pipeline>> Create(const ModelOptions& entry) const;
  std::vector<std::string> Families() const;

 private:
  std::map<std::string, PipelineFactory> factories_;
};

// Registers every family compiled into this build.
void RegisterBuiltinPipelines(PipelineRegistry* registry);

}  // namespace rainserve
