// Prometheus metrics of the server, all named in this file's .cc.
//
// ServerMetrics is created once by ServerApp around a registry it owns and is
// handed (injected) to whatever records: the JobManager and the Generation
// service report through the JobObserver interface, the ModelManager's
// changes set the model gauge. There is no global registry. Labels are model
// names, status classes, stages, attention kinds, step-cache modes, formats
// and devices only:
// never request ids or free text. docs/service.md lists every metric.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <vector>

#include "server/job_manager.h"
#include "server/model_manager.h"

namespace rainserve {

class ServerMetrics final : public JobObserver {
 public:
  explicit ServerMetrics(std::shared_ptr<prometheus::Registry> registry);

  // rainserve_build_info{version,git_sha,cuda} 1
  void SetBuildInfo(const std::string& version, const std::string& git_sha,
                    const std::string& cuda);
  // rainserve_model_ready{model} 1 / 0, from a ModelManager snapshot.
  void SetModelsReady(const std::vector<ModelView>& models);
  // rainserve_device_memory_{used,total}_bytes{device} from the CUDA runtime
  // (nothing on CPU-only machines). Called at start-up and after every job.
  void RefreshDeviceMemory();

  // JobObserver (called by the JobManager and the Generation service).
  void OnJobFinished(const JobReport& report) override;
  void OnRequestRefused(const std::string& model, StatusCode code) override;
  void OnQueueChanged(const std::string& model, int64_t pending, int64_t running) override;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* build_info_;
  prometheus::Family<prometheus::Gauge>* model_ready_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* request_seconds_;
  prometheus::Family<prometheus::Histogram>* queue_seconds_;
  prometheus::Family<prometheus::Histogram>* stage_seconds_;
  prometheus::Family<prometheus::Histogram>* step_seconds_;
  prometheus::Family<prometheus::Histogram>* first_progress_seconds_;
  prometheus::Family<prometheus::Gauge>* pending_;
  prometheus::Family<prometheus::Gauge>* running_;
  prometheus::Family<prometheus::Histogram>* density_;
  prometheus::Family<prometheus::Histogram>* mask_seconds_;
  prometheus::Family<prometheus::Histogram>* requested_sparsity_;
  prometheus::Family<prometheus::Histogram>* probe_cosine_;
  prometheus::Family<prometheus::Histogram>* probe_rel_l2_;
  prometheus::Family<prometheus::Histogram>* probe_kept_mass_;
  prometheus::Family<prometheus::Counter>* frames_;
  prometheus::Family<prometheus::Counter>* cache_skipped_steps_;
  prometheus::Family<prometheus::Counter>* output_bytes_;
  prometheus::Family<prometheus::Gauge>* peak_memory_;
  prometheus::Family<prometheus::Gauge>* device_used_;
  prometheus::Family<prometheus::Gauge>* device_total_;
  prometheus::Family<prometheus::Gauge>* device_utilization_;
};

// The status class of rainserve_requests_total: ok, cancelled, deadline,
// invalid (INVALID_ARGUMENT), rejected (refused before running: queue full,
// unknown or unready model, duplicate request id, draining) or error.
const char* RequestStatusLabel(StatusCode code, bool ran);

}  // namespace rainserve
