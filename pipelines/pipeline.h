// The Pipeline interface: one loaded generation model (text encoder,
// transformer, VAE, scheduler) behind Describe() and Generate().
//
// pipelines/ never sees protobuf types; the server maps its requests onto the
// plain structs here. Pipelines are created by name through the registry
// (pipelines/registry.h) from a model entry of the server configuration.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"

namespace rainserve {

// What a model accepts and what it does by default (Models.Describe).
struct PipelineDescription {
  std::string name;
  std::string pipeline;  // "wan"
  std::string task;      // "text-to-video"
  std::string device;
  std::string dtype;
  std::vector<std::string> attention_backends;
};

// Set by the server (client cancel, deadline, drain); polled by the pipeline
// between denoising steps.
class CancelToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Called by the server on any thread; cheap and const.
  virtual PipelineDescription Describe() const = 0;
};

// Creates a pipeline for a configured model entry. Called by the server's
// model manager on a loading thread; a failure leaves the model not ready
// with the returned reason and the server keeps serving other models.
using PipelineFactory = std::function<StatusOr<std::unique_ptr<Pipeline>>(const ModelEntry&)>;

}  // namespace rainserve
