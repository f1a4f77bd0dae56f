// ModelManager: the configured models, their loading state and pipelines.
//
// Models load on background threads (at start-up for entries with
// load_at_startup, later through Models.Load), so the server answers health
// checks and RPCs while a big checkpoint loads. A model that fails to load is
// FAILED with the reason; the others keep serving.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/config.h"
#include "common/status.h"
#include "pipelines/core/pipeline.h"

namespace rainserve {

enum class ModelState { kNotLoaded, kLoading, kReady, kFailed };

// A snapshot of one model for Models.List/Describe.
struct ModelView {
  ModelEntry entry;
  ModelState state = ModelState::kNotLoaded;
  std::string reason;                              // why FAILED / NOT_LOADED
  std::optional<PipelineDescription> description;  // when READY
};

class ModelManager {
 public:
  struct Hooks {
    // A model became ready: the server starts its worker.
    std::function<void(const std::string& name, std::shared_ptr<Pipeline>)> on_ready;
    // A model is being unloaded: the server stops its worker (fails its
    // queued jobs, waits for the running one) before the pipeline is freed.
    std::function<void(const std::string& name)> on_unload;
    // Any state change (health and metrics follow it).
    std::function<void()> on_change;
  };

  ModelManager(std::vector<ModelEntry> entries, PipelineFactory factory, Hooks hooks);
  ~ModelManager();  // Shutdown()

  // Starts loading every entry with load_at_startup. Called once by ServerApp.
  void LoadAtStartup();
  // Starts loading `name` unless it is READY or LOADING; `done` runs (on the
  // loader thread, or at once when nothing is to be done) with the outcome.
  // NOT_FOUND for an unknown name.
  Status Load(const std::string& name, std::function<void(const ModelView&)> done);
  // Takes a READY model out of service after a device fault: FAILED with
  // `reason`, so new requests get UNAVAILABLE and its health NOT_SERVING. The
  // pipeline stays allocated until Unload (or shutdown). Any thread.
  void MarkFailed(const std::string& name, const std::string& reason);
  // Stops the worker and frees the pipeline; NOT_LOADED afterwards.
  // NOT_FOUND for an unknown name; FAILED_PRECONDITION while LOADING.
  StatusOr<ModelView> Unload(const std::string& name);

  std::vector<ModelView> List() const;
  StatusOr<ModelView> Get(const std::string& name) const;
  // The description of a READY model: NOT_FOUND (unknown), UNAVAILABLE (not ready).
  StatusOr<PipelineDescription> Ready(const std::string& name) const;
  bool AnyReady() const;
  // Blocks until no model is LOADING and the last load's on_change (health,
  // metrics) has run (tests, start-up scripts).
  void WaitIdle() const;
  // Joins the loader threads. Idempotent.
  void Shutdown();

 private:
  struct Slot {
    ModelView view;
    std::shared_ptr<Pipeline> pipeline;
    std::vector<std::function<void(const ModelView&)>> waiters;
  };
  void LoadOnThread(const std::string& name);
  Slot* Find(const std::string& name);
  const Slot* Find(const std::string& name) const;

  PipelineFactory factory_;
  Hooks hooks_;
  mutable std::mutex mu_;
  mutable std::condition_variable idle_;
  int publishing_ = 0;  // loads that ended but whose on_change has not run yet
  std::map<std::string, Slot> slots_;
  std::vector<std::string> order_;  // configuration order
  std::vector<std::thread> loaders_;
  bool shut_down_ = false;
};

const char* ModelStateName(ModelState state);

}  // namespace rainserve
