// FakePipeline: a deterministic stand-in for a generation model in server
// tests, plus a trivial artifact encoder.
//
// Frames are a pseudo-random function of (seed, prompt, size), so equal
// requests give equal bytes. FakeImageDescription declares an image-to-video
// model with two experts; the fake then reports expert 1 for the second half
// of the steps and keeps the last request it ran (image included). Generate reports "text_encode", one "denoise"
// progress per step and "decode", sleeps `step_seconds` per step, checks the
// cancel token before every step, can be held at its start (Hold/Release) to
// line up a queue, and can be told to fail or throw.
#pragma once

#include <openssl/sha.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "pipelines/core/pipeline.h"
#include "server/job_manager.h"

namespace rainserve::testing {

// Limits small enough that tests run in milliseconds.
inline PipelineDescription FakeDescription(const std::string& name = "fake") {
  PipelineDescription d;
  d.name = name;
  d.pipeline = "fake";
  d.tasks = {Task::kTextToVideo, Task::kTextToImage};
  d.device = "cpu";
  d.dtype = "fp32";
  d.attention_backends = {"cpu"};
  d.limits.max_width = 64;
  d.limits.max_height = 64;
  d.limits.max_pixels = 64 * 64;
  d.limits.max_frames = 9;
  d.limits.max_steps = 100;
  d.limits.max_prompt_bytes = 64;
  d.limits.max_quality_probe_rate = 0.5;
  d.defaults.width = 32;
  d.defaults.height = 16;
  d.defaults.num_frames = 5;
  d.defaults.fps = 8;
  d.defaults.steps = 4;
  d.defaults.sparse.sparsity = 0.5;
  d.defaults.sparse.dense_warmup_steps = 1;
  return d;
}

// An image-to-video model with two experts (like Wan2.2-I2V-A14B), the fake
// limits above and small image limits.
inline PipelineDescription FakeImageDescription(const std::string& name = "fake-i2v") {
  PipelineDescription d = FakeDescription(name);
  d.tasks = {Task::kImageToVideo};
  d.experts = 2;
  d.boundary_timestep = 900;
  d.limits.max_image_bytes = 64 << 10;
  d.limits.max_image_pixels = 256 * 256;
  return d;
}

inline std::string Sha256Hex(const std::string& data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  std::string hex;
  char byte[3];
  for (unsigned char c : digest) {
    std::snprintf(byte, sizeof(byte), "%02x", c);
    hex += byte;
  }
  return hex;
}

// One raw-RGB artifact holding the frames as they are.
inline ArtifactEncoder RawEncoder() {
  return [](const GenerationOutput& out, const v1::GenerateRequest& resolved)
             -> StatusOr<std::vector<media::Artifact>> {
    media::Artifact a;
    a.mime_type = "application/octet-stream";
    a.data.assign(out.rgb.begin(), out.rgb.end());
    a.sha256 = Sha256Hex(a.data);
    a.width = out.width;
    a.height = out.height;
    a.frames = out.num_frames;
    a.fps = resolved.fps();
    return std::vector<media::Artifact>{std::move(a)};
  };
}

class FakePipeline final : public Pipeline {
 public:
  enum class Failure { kNone, kError, kThrow };

  explicit FakePipeline(PipelineDescription description = FakeDescription(),
                        double step_seconds = 0)
      : description_(std::move(description)), step_seconds_(step_seconds) {}

  PipelineDescription Describe() const override { return description_; }
  Status DeviceStatus() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return device_fault_ ? UnavailableError("fake device fault") : OkStatus();
  }
  void SetDeviceFault(bool fault) {
    std::lock_guard<std::mutex> lock(mu_);
    device_fault_ = fault;
  }

  StatusOr<GenerationOutput> Generate(const GenerationRequest& request,
                                      const ProgressCallback& progress,
                                      const CancelToken& cancel) override {
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    {
      std::unique_lock<std::mutex> lock(mu_);
      prompts_.push_back(request.prompt);
      last_request_ = request;
      ++calls_;
      changed_.notify_all();
      while (held_ && !cancel.cancelled()) changed_.wait_for(lock, std::chrono::milliseconds(2));
    }
    if (failure_ == Failure::kThrow) throw std::runtime_error("fake pipeline exploded");
    if (failure_ == Failure::kError) return InternalError("fake pipeline failed");

    progress({"text_encode", 0, request.steps, elapsed()});
    GenerationOutput out;
    for (int64_t step = 1; step <= request.steps; ++step) {
      if (cancel.cancelled()) return CancelledError("cancelled at step " + std::to_string(step));
      if (step_seconds_ > 0) {
        std::this_thread::sleep_for(std::chrono::duration<double>(step_seconds_));
      }
      const bool sparse = step > request.sparse.dense_warmup_steps;
      StepStat stat{step, sparse, sparse ? request.sparse.sparsity : 0.0, step_seconds_};
      if (description_.experts >= 2 && 2 * step > request.steps) stat.expert = 1;
      out.steps.push_back(stat);
      // A probed request: one record per sparse step, its figures from the step.
      if (sparse && request.sparse.quality_probe_rate > 0) {
        out.quality_probes.push_back({step, step % 2, 64, 0.01 * static_cast<double>(step),
                                      1.0 - 0.001 * static_cast<double>(step), 0.9});
      }
      progress({"denoise", step, request.steps, elapsed()});
    }
    progress({"decode", 0, request.steps, elapsed()});

    out.width = request.width;
    out.height = request.height;
    out.num_frames = request.num_frames;
    out.rgb.resize(static_cast<size_t>(request.num_frames * request.height * request.width * 3));
    uint64_t state = request.seed * 0x9E3779B97F4A7C15ull + 1;
    for (char c : request.prompt) state = (state ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
    for (auto& byte : out.rgb) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      byte = static_cast<uint8_t>(state >> 32);
    }
    out.requested_sparsity = request.sparse.sparsity;
    out.realized_sparsity = request.steps > request.sparse.dense_warmup_steps
                                ? request.sparse.sparsity
                                : 0.0;
    out.denoise_seconds = step_seconds_ * static_cast<double>(request.steps);
    if (!request.image.empty()) out.image_encode_seconds = 0.25;
    out.peak_memory_bytes = out.rgb.size();
    return out;
  }

  // Generate waits at its start until Release (or a cancel).
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    changed_.notify_all();
  }
  // Blocks until Generate has been entered `n` times in all.
  bool WaitForCalls(int n, double timeout_seconds = 10) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                             [&] { return calls_ >= n; });
  }
  void set_failure(Failure failure) { failure_ = failure; }
  int calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  // The request Generate saw last.
  GenerationRequest last_request() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_request_;
  }
  // Prompts in the order Generate saw them.
  std::vector<std::string> prompts() const {
    std::lock_guard<std::mutex> lock(mu_);
    return prompts_;
  }

 private:
  const PipelineDescription description_;
  const double step_seconds_;
  std::atomic<Failure> failure_{Failure::kNone};
  mutable std::mutex mu_;
  std::condition_variable changed_;
  bool held_ = false;
  bool device_fault_ = false;
  int calls_ = 0;
  std::vector<std::string> prompts_;
  GenerationRequest last_request_;
};

}  // namespace rainserve::testing
