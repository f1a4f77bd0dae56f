// Prometheus metrics of the server, all named in this file's .cc.
//
// ServerMetrics is created once by ServerApp around a registry it owns and is
// handed (injected) to whatever records; there is no global registry.
#pragma once

#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace rainserve {

class ServerMetrics {
 public:
  explicit ServerMetrics(std::shared_ptr<prometheus::Registry> registry);

  // rainserve_build_info{version,git_sha,cuda} 1
  void SetBuildInfo(const std::string& version, const std::string& git_sha,
                    const std::string& cuda);

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* build_info_;
};

}  // namespace rainserve
