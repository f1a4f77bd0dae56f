#include "server/model_manager.h"

#include <chrono>

#include "common/logging.h"

namespace rainserve {

const char* ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kNotLoaded: return "NOT_LOADED";
    case ModelState::kLoading: return "LOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kFailed: return "FAILED";
  }
  return "UNKNOWN";
}

ModelManager::ModelManager(std::vector<ModelEntry> entries, PipelineFactory factory, Hooks hooks)
    : factory_(std::move(factory)), hooks_(std::move(hooks)) {
  for (ModelEntry& e : entries) {
    order_.push_back(e.name);
    Slot& slot = slots_[e.name];
    slot.view.entry = std::move(e);
    slot.view.reason = "not loaded";
  }
}

ModelManager::~ModelManager() { Shutdown(); }

ModelManager::Slot* ModelManager::Find(const std::string& name) {
  auto it = slots_.find(name);
  return it == slots_.end() ? nullptr : &it->second;
}

const ModelManager::Slot* ModelManager::Find(const std::string& name) const {
  auto it = slots_.find(name);
  return it == slots_.end() ? nullptr : &it->second;
}

void ModelManager::LoadAtStartup() {
  for (const std::string& name : order_) {
    bool load = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      load = slots_[name].view.entry.load_at_startup;
    }
    if (load) (void)Load(name, nullptr);
  }
}

Status ModelManager::Load(const std::string& name, std::function<void(const ModelView&)> done) {
  ModelView now;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Slot* slot = Find(name);
    if (slot == nullptr) return NotFoundError("model '" + name + "' is not configured");
    if (shut_down_) return UnavailableError("the server is shutting down");
    if (slot->view.state == ModelState::kLoading) {
      if (done) slot->waiters.push_back(std::move(done));
      return OkStatus();
    }
    if (slot->view.state == ModelState::kFailed && slot->pipeline) {
      return FailedPreconditionError("model '" + name + "' was taken out of service (" +
                                     slot->view.reason + "); unload it, then load it again");
    }
    if (slot->view.state != ModelState::kReady) {
      slot->view.state = ModelState::kLoading;
      slot->view.reason = "loading";
      if (done) slot->waiters.push_back(std::move(done));
      loaders_.emplace_back([this, name] { LoadOnThread(name); });
      done = nullptr;
    }
    now = slot->view;
  }
  if (hooks_.on_change) hooks_.on_change();
  if (done) done(now);  // already READY
  return OkStatus();
}

void ModelManager::LoadOnThread(const std::string& name) {
  ModelEntry entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entry = Find(name)->view.entry;
  }
  RAINSERVE_LOG(INFO) << "loading model '" << name << "' from " << entry.path << " on "
                      << entry.device << " (" << entry.dtype << ")";
  const auto start = std::chrono::steady_clock::now();
  StatusOr<std::unique_ptr<Pipeline>> created = factory_(entry);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::shared_ptr<Pipeline> pipeline;
  if (created.ok()) pipeline = std::move(created).value();
  if (pipeline) {
    RAINSERVE_LOG(INFO) << "model '" << name << "' ready in " << seconds << " s";
    if (hooks_.on_ready) hooks_.on_ready(name, pipeline);
  } else {
    RAINSERVE_LOG(WARNING) << "model '" << name << "' failed to load: "
                           << created.status().ToString();
  }
  ModelView view;
  std::vector<std::function<void(const ModelView&)>> waiters;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Slot* slot = Find(name);
    if (pipeline) {
      slot->pipeline = pipeline;
      slot->view.state = ModelState::kReady;
      slot->view.reason.clear();
      slot->view.description = pipeline->Describe();
    } else {
      slot->view.state = ModelState::kFailed;
      slot->view.reason = created.status().ToString();
    }
    view = slot->view;
    waiters.swap(slot->waiters);
    ++publishing_;
  }
  // Health and metrics first: whoever WaitIdle() releases must find them
  // already saying READY (or FAILED).
  if (hooks_.on_change) hooks_.on_change();
  {
    std::lock_guard<std::mutex> lock(mu_);
    --publishing_;
  }
  idle_.notify_all();
  for (auto& w : waiters) w(view);
}

void ModelManager::MarkFailed(const std::string& name, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Slot* slot = Find(name);
    if (slot == nullptr || slot->view.state != ModelState::kReady) return;
    slot->view.state = ModelState::kFailed;
    slot->view.reason = reason;
  }
  RAINSERVE_LOG(ERROR) << "model '" << name << "' taken out of service: " << reason;
  if (hooks_.on_change) hooks_.on_change();
}

StatusOr<ModelView> ModelManager::Unload(const std::string& name) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Slot* slot = Find(name);
    if (slot == nullptr) return NotFoundError("model '" + name + "' is not configured");
    if (slot->view.state == ModelState::kLoading) {
      return FailedPreconditionError("model '" + name + "' is loading; unload it when it is ready");
    }
    if (slot->view.state != ModelState::kReady && !slot->pipeline) return slot->view;
  }
  if (hooks_.on_unload) hooks_.on_unload(name);
  ModelView view;
  std::shared_ptr<Pipeline> release;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Slot* slot = Find(name);
    release.swap(slot->pipeline);
    slot->view.state = ModelState::kNotLoaded;
    slot->view.reason = "unloaded";
    slot->view.description.reset();
    view = slot->view;
  }
  release.reset();  // frees the weights outside the lock
  if (hooks_.on_change) hooks_.on_change();
  RAINSERVE_LOG(INFO) << "model '" << name << "' unloaded";
  return view;
}

std::vector<ModelView> ModelManager::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelView> out;
  for (const std::string& name : order_) out.push_back(Find(name)->view);
  return out;
}

StatusOr<ModelView> ModelManager::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Slot* slot = Find(name);
  if (slot == nullptr) return NotFoundError("model '" + name + "' is not configured");
  return slot->view;
}

StatusOr<PipelineDescription> ModelManager::Ready(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Slot* slot = Find(name);
  if (slot == nullptr) return NotFoundError("model '" + name + "' is not configured");
  if (slot->view.state != ModelState::kReady) {
    return UnavailableError("model '" + name + "' is not ready (" +
                            ModelStateName(slot->view.state) + ": " + slot->view.reason + ")");
  }
  return *slot->view.description;
}

bool ModelManager::AnyReady() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& kv : slots_) {
    if (kv.second.view.state == ModelState::kReady) return true;
  }
  return false;
}

void ModelManager::WaitIdle() const {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [&] {
    if (publishing_ > 0) return false;
    for (const auto& kv : slots_) {
      if (kv.second.view.state == ModelState::kLoading) return false;
    }
    return true;
  });
}

void ModelManager::Shutdown() {
  std::vector<std::thread> loaders;
  {
    std::lock_guard<std::mutex> lock(mu_);
    shut_down_ = true;
    loaders.swap(loaders_);
  }
  for (std::thread& t : loaders) t.join();
}

}  // namespace rainserve
