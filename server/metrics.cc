#include "server/metrics.h"

#include "pipelines/core/pipeline.h"

namespace rainserve {
namespace {

// Bucket boundaries (docs/service.md):
// whole requests, queue waits and stages: 50 ms .. ~2.8 h, doubling-ish, so
// that a tiny CPU model (seconds) and a 14B GPU video (tens of minutes) both
// land in resolving buckets;
const prometheus::Histogram::BucketBoundaries kRequestBuckets = {
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240};
// one denoising step or one job's mask prediction: 1 ms .. ~8.5 min;
const prometheus::Histogram::BucketBoundaries kStepBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
// ratios (kept fraction of attention block pairs, requested sparsity).
const prometheus::Histogram::BucketBoundaries kRatioBuckets = {
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0};
// quality probe: cosine and kept mass resolve the last percent below 1,
// relative L2 error spans 0.1% .. 200%.
const prometheus::Histogram::BucketBoundaries kProbeCosineBuckets = {
    0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0};
const prometheus::Histogram::BucketBoundaries kProbeMassBuckets = {
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0};
const prometheus::Histogram::BucketBoundaries kProbeRelL2Buckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2};

const char* FormatLabel(const std::string& mime) {
  if (mime == "image/png") return "png";
  if (mime == "video/mp4") return "mp4";
  return "raw";
}

}  // namespace

const char* RequestStatusLabel(StatusCode code, bool ran) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kCancelled: return "cancelled";
    case StatusCode::kDeadlineExceeded: return "deadline";
    case StatusCode::kInvalidArgument: return "invalid";
    case StatusCode::kResourceExhausted:
    case StatusCode::kUnavailable:
    case StatusCode::kNotFound:
    case StatusCode::kAlreadyExists:
    case StatusCode::kUnauthenticated:
    case StatusCode::kPermissionDenied:
      return ran ? "error" : "rejected";
    default: return "error";
  }
}

ServerMetrics::ServerMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      build_info_(&prometheus::BuildGauge()
                       .Name("rainserve_build_info")
                       .Help("Build of the running server; the value is always 1.")
                       .Register(*registry_)),
      model_ready_(&prometheus::BuildGauge()
                        .Name("rainserve_model_ready")
                        .Help("1 when the model is loaded and serving, else 0.")
                        .Register(*registry_)),
      requests_(&prometheus::BuildCounter()
                     .Name("rainserve_requests_total")
                     .Help("Generation requests by model and outcome (ok, error, cancelled, "
                           "deadline, rejected, invalid).")
                     .Register(*registry_)),
      request_seconds_(&prometheus::BuildHistogram()
                            .Name("rainserve_request_duration_seconds")
                            .Help("Job time from acceptance to its final event.")
                            .Register(*registry_)),
      queue_seconds_(&prometheus::BuildHistogram()
                          .Name("rainserve_queue_duration_seconds")
                          .Help("Time jobs waited in the queue.")
                          .Register(*registry_)),
      stage_seconds_(&prometheus::BuildHistogram()
                          .Name("rainserve_stage_duration_seconds")
                          .Help("Time per pipeline stage (text_encode, denoise, decode, encode).")
                          .Register(*registry_)),
      step_seconds_(&prometheus::BuildHistogram()
                         .Name("rainserve_denoise_step_duration_seconds")
                         .Help("Time per denoising step, by attention kind (dense or sparse).")
                         .Register(*registry_)),
      first_progress_seconds_(&prometheus::BuildHistogram()
                                   .Name("rainserve_time_to_first_progress_seconds")
                                   .Help("Time from acceptance to the job's first progress event.")
                                   .Register(*registry_)),
      pending_(&prometheus::BuildGauge()
                    .Name("rainserve_pending_requests")
                    .Help("Jobs waiting in the queue for the model.")
                    .Register(*registry_)),
      running_(&prometheus::BuildGauge()
                    .Name("rainserve_running_requests")
                    .Help("Jobs of the model inside its pipeline.")
                    .Register(*registry_)),
      density_(&prometheus::BuildHistogram()
                    .Name("rainserve_attention_density_ratio")
                    .Help("Fraction of attention block pairs computed per sparse denoising step "
                          "(1 - realized sparsity), by whether a sink frame was on.")
                    .Register(*registry_)),
      mask_seconds_(&prometheus::BuildHistogram()
                         .Name("rainserve_attention_mask_seconds")
                         .Help("Block-mask prediction time per job (summed over steps and layers).")
                         .Register(*registry_)),
      requested_sparsity_(&prometheus::BuildHistogram()
                               .Name("rainserve_requested_sparsity_ratio")
                               .Help("Sparsity requested by jobs (0 for dense requests).")
                               .Register(*registry_)),
      probe_cosine_(&prometheus::BuildHistogram()
                         .Name("rainserve_attention_probe_cosine")
                         .Help("Quality probe: cosine of sparse and exact dense attention "
                               "outputs per probed layer and step.")
                         .Register(*registry_)),
      probe_rel_l2_(&prometheus::BuildHistogram()
                         .Name("rainserve_attention_probe_rel_l2")
                         .Help("Quality probe: relative L2 error of sparse against exact dense "
                               "attention per probed layer and step.")
                         .Register(*registry_)),
      probe_kept_mass_(&prometheus::BuildHistogram()
                            .Name("rainserve_attention_probe_kept_mass_ratio")
                            .Help("Quality probe: dense softmax mass held by the kept key "
                                  "blocks per probed layer and step.")
                            .Register(*registry_)),
      frames_(&prometheus::BuildCounter()
                   .Name("rainserve_generated_frames_total")
                   .Help("Frames generated by successful jobs.")
                   .Register(*registry_)),
      cache_skipped_steps_(&prometheus::BuildCounter()
                                .Name("rainserve_step_cache_skipped_steps_total")
                                .Help("Denoising steps that reused the step cache's residual, "
                                      "by model and step-cache mode.")
                                .Register(*registry_)),
      output_bytes_(&prometheus::BuildCounter()
                         .Name("rainserve_output_bytes_total")
                         .Help("Artifact bytes produced, by format (png, mp4, raw).")
                         .Register(*registry_)),
      peak_memory_(&prometheus::BuildGauge()
                        .Name("rainserve_request_peak_memory_bytes")
                        .Help("Peak memory of the model's last finished job (GPU: CUDA "
                              "allocator peak; CPU: process peak RSS).")
                        .Register(*registry_)),
      device_used_(&prometheus::BuildGauge()
                        .Name("rainserve_device_memory_used_bytes")
                        .Help("Device memory in use (CUDA runtime), all processes.")
                        .Register(*registry_)),
      device_total_(&prometheus::BuildGauge()
                         .Name("rainserve_device_memory_total_bytes")
                         .Help("Device memory size (CUDA runtime).")
                         .Register(*registry_)),
      device_utilization_(&prometheus::BuildGauge()
                               .Name("rainserve_device_utilization_ratio")
                               .Help("GPU busy fraction over NVML's last sample period (only "
                                     "when the driver's NVML library is present).")
                               .Register(*registry_)) {}

void ServerMetrics::SetBuildInfo(const std::string& version, const std::string& git_sha,
                                 const std::string& cuda) {
  build_info_->Add({{"version", version}, {"git_sha", git_sha}, {"cuda", cuda}}).Set(1);
}

void ServerMetrics::SetModelsReady(const std::vector<ModelView>& models) {
  for (const ModelView& m : models) {
    model_ready_->Add({{"model", m.entry.name}}).Set(m.state == ModelState::kReady ? 1 : 0);
    // Make the per-model series visible (at 0) before the first request.
    pending_->Add({{"model", m.entry.name}});
    running_->Add({{"model", m.entry.name}});
  }
}

void ServerMetrics::RefreshDeviceMemory() {
  for (const DeviceMemoryInfo& d : QueryDeviceMemory()) {
    device_used_->Add({{"device", d.device}}).Set(static_cast<double>(d.used_bytes));
    device_total_->Add({{"device", d.device}}).Set(static_cast<double>(d.total_bytes));
    if (d.utilization >= 0) device_utilization_->Add({{"device", d.device}}).Set(d.utilization);
  }
}

void ServerMetrics::OnRequestRefused(const std::string& model, StatusCode code) {
  requests_->Add({{"model", model}, {"status", RequestStatusLabel(code, false)}}).Increment();
}

void ServerMetrics::OnJobFinished(const JobReport& r) {
  const std::string& m = r.model;
  requests_->Add({{"model", m}, {"status", RequestStatusLabel(r.code, r.ran)}}).Increment();
  request_seconds_->Add({{"model", m}}, kRequestBuckets).Observe(r.total_seconds);
  queue_seconds_->Add({{"model", m}}, kRequestBuckets).Observe(r.queue_seconds);
  if (!r.ran) return;
  if (r.first_progress_seconds >= 0) {
    first_progress_seconds_->Add({{"model", m}}, kRequestBuckets).Observe(r.first_progress_seconds);
  }
  requested_sparsity_->Add({{"model", m}}, kRatioBuckets).Observe(r.requested_sparsity);
  for (const QualityProbeStat& p : r.quality_probes) {
    probe_cosine_->Add({{"model", m}}, kProbeCosineBuckets).Observe(p.cosine);
    probe_rel_l2_->Add({{"model", m}}, kProbeRelL2Buckets).Observe(p.rel_l2);
    probe_kept_mass_->Add({{"model", m}}, kProbeMassBuckets).Observe(p.kept_mass);
  }
  const std::pair<const char*, double> stages[] = {{"text_encode", r.text_encode_seconds},
                                                   {"denoise", r.denoise_seconds},
                                                   {"decode", r.decode_seconds},
                                                   {"encode", r.encode_seconds}};
  for (const auto& [stage, seconds] : stages) {
    if (seconds > 0) {
      stage_seconds_->Add({{"model", m}, {"stage", stage}}, kRequestBuckets).Observe(seconds);
    }
  }
  const char* sink = r.sink_frames > 0 ? "true" : "false";
  for (const StepStat& s : r.steps) {
    step_seconds_->Add({{"model", m}, {"attention", s.sparse ? "sparse" : "dense"}}, kStepBuckets)
        .Observe(s.seconds);
    if (s.sparse) {
      density_->Add({{"model", m}, {"sink", sink}}, kRatioBuckets).Observe(1.0 - s.realized_sparsity);
    }
  }
  if (r.step_cache_mode != "off") {
    cache_skipped_steps_->Add({{"model", m}, {"mode", r.step_cache_mode}})
        .Increment(static_cast<double>(r.cache_skipped_steps));
  }
  if (!r.steps.empty()) mask_seconds_->Add({{"model", m}}, kStepBuckets).Observe(r.mask_seconds);
  if (r.code == StatusCode::kOk) {
    frames_->Add({{"model", m}}).Increment(static_cast<double>(r.frames));
    for (const auto& [mime, bytes] : r.outputs) {
      output_bytes_->Add({{"format", FormatLabel(mime)}}).Increment(static_cast<double>(bytes));
    }
  }
  if (r.peak_memory_bytes > 0) {
    peak_memory_->Add({{"model", m}, {"device", r.device}})
        .Set(static_cast<double>(r.peak_memory_bytes));
  }
  RefreshDeviceMemory();
}

void ServerMetrics::OnQueueChanged(const std::string& model, int64_t pending, int64_t running) {
  pending_->Add({{"model", model}}).Set(static_cast<double>(pending));
  running_->Add({{"model", model}}).Set(static_cast<double>(running));
}

}  // namespace rainserve
