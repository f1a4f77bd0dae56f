#include "server/metrics.h"

#include <prometheus/gauge.h>

namespace rainserve {

ServerMetrics::ServerMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      build_info_(&prometheus::BuildGauge()
                       .Name("rainserve_build_info")
                       .Help("Build of the running server; the value is always 1.")
                       .Register(*registry_)) {}

void ServerMetrics::SetBuildInfo(const std::string& version, const std::string& git_sha,
                                 const std::string& cuda) {
  build_info_->Add({{"version", version}, {"git_sha", git_sha}, {"cuda", cuda}}).Set(1);
}

}  // namespace rainserve
