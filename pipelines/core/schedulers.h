// Flow-matching schedulers for the Wan text-to-video pipelines, matching the
// current diffusers release: UniPCMultistepScheduler with prediction_type
// "flow_prediction" and use_flow_sigmas (what Wan2.1's scheduler_config.json
// selects; the flow sigmas as built since diffusers 0.37), and
// FlowMatchEulerDiscreteScheduler. Plus the scheduler_config.json reader.
// docs/wan.md says how these schedules relate to the original Wan sampler.
//
// Conventions (both schedulers): the latent at noise level sigma is
//   x_sigma = (1 - sigma) * x0 + sigma * noise,
// the transformer predicts the velocity v = noise - x0, and sampling runs
// sigma from ~1 down to the final sigma (0: clean latents). Per request:
//
//   RAINSERVE_RETURN_IF_ERROR(scheduler->SetTimesteps(steps, flow_shift));
//   (or SetTimesteps(timesteps.size(), flow_shift, timesteps): an explicit schedule)
//   for (int i = 0; i < scheduler->num_steps(); ++i) {
//     at::Tensor v = Transformer(latents, scheduler->timesteps()[i]);
//     latents = scheduler->Step(v, i, latents);
//   }
//
// A scheduler object is not thread-safe: one per request in flight, reused
// across requests by the thread that runs them (SetTimesteps resets it).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace rainserve {

// diffusers' `final_sigmas_type`: the sigma the last step lands on.
enum class FinalSigmasType {
  kZero,      // "zero": 0, the last step returns the denoised prediction
  kSigmaMin,  // "sigma_min": the last inference sigma again (the last step is a no-op)
};

// diffusers' UniPC `solver_type`: in the data-prediction form (hh = -h, h
// the step in log-SNR lambda), B(h) = hh (bh1) or e^hh - 1 (bh2).
enum class UniPCSolverType { kBh1, kBh2 };

// The scheduler fields that change sampling. Defaults are Wan2.1 T2V's
// published scheduler_config.json (480p; 720p uses flow_shift 5.0).
struct SchedulerConfig {
  int num_train_timesteps = 1000;
  double flow_shift = 3.0;  // Euler configs call it `shift`
  // UniPC only.
  int solver_order = 2;  // 1..3
  bool lower_order_final = true;
  FinalSigmasType final_sigmas_type = FinalSigmasType::kZero;
  UniPCSolverType solver_type = UniPCSolverType::kBh2;
  std::vector<int> disable_corrector;  // step indices whose successor skips UniC
  // Fixed by the model family; kept so hand-built configs are validated too.
  std::string prediction_type = "flow_prediction";  // the only supported value
  bool use_flow_sigmas = true;                      // must be true
  bool predict_x0 = true;                           // must be true
};

// Reads a diffusers scheduler/scheduler_config.json (`source` names it in
// errors). `_class_name` UniPCMultistepScheduler (or absent) or
// FlowMatchEulerDiscreteScheduler. Known keys are type and range checked;
// unknown keys are ignored; absent keys take diffusers' defaults (so a
// UniPC config without prediction_type means "epsilon", which is rejected).
// Options that change sampling in ways not implemented here (thresholding,
// karras/exponential/beta sigmas, dynamic shifting, solver_p, ...) are
// rejected. Errors are INVALID_ARGUMENT "<source>: <key>: <what>". Never
// throws.
StatusOr<SchedulerConfig> ParseSchedulerConfig(const std::string& json_text,
                                               const std::string& source);

// Checks a config (parsed or hand-built). INVALID_ARGUMENT names the field.
Status ValidateSchedulerConfig(const SchedulerConfig& config);

class FlowScheduler {
 public:
  virtual ~FlowScheduler() = default;
  FlowScheduler(const FlowScheduler&) = delete;
  FlowScheduler& operator=(const FlowScheduler&) = delete;

  // "unipc" or "euler".
  virtual const char* kind() const = 0;

  // Called by the pipeline at the start of each request. Builds the schedule
  // as diffusers' set_timesteps does for a scheduler constructed with
  // flow_shift (the config's flow_shift is only the default the pipeline
  // reads), and calls Reset(). INVALID_ARGUMENT (the scheduler unchanged)
  // unless 1 <= num_inference_steps <= num_train_timesteps and flow_shift is
  // finite and in (0, 1000], or if the schedule degenerates in float32.
  //
  // Explicit schedule (few-step distilled checkpoints): a non-empty
  // `explicit_timesteps` of num_inference_steps values, strictly decreasing,
  // each in (0, num_train_timesteps], replaces the evenly spaced one. Step i
  // then runs at sigma_i = shift(t_i / num_train_timesteps, flow_shift), as
  // diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps(timesteps=...)
  // computes it (float32), and the final sigma follows the scheduler's rule
  // (Euler and UniPC "zero": 0). E.g. [1000, 750, 500, 250] with flow_shift
  // 5 gives sigmas [1, 0.9375, 0.8333, 0.625, 0] (the 4-step lightx2v
  // schedule). The transformer gets each scheduler's timestep of sigma_i
  // (Euler: sigma_i * 1000; UniPC: its int64 truncation, and a first sigma
  // of 1 lowered by 1e-6 as UniPC always does). Errors name
  // "timesteps[i]".
  Status SetTimesteps(int num_inference_steps, double flow_shift,
                      const std::vector<double>& explicit_timesteps = {});

  // 0 before the first successful SetTimesteps.
  int num_steps() const { return static_cast<int>(timesteps_.size()); }
  // num_steps() + 1 values, decreasing, float32 as diffusers stores them;
  // the last is the final sigma.
  const std::vector<float>& sigmas() const { return sigmas_; }
  // num_steps() values: the timestep the transformer gets at each step, as
  // the float it becomes there (UniPC: int64 truncation of sigma * 1000,
  // like diffusers; Euler: float32 sigma * 1000).
  const std::vector<float>& timesteps() const { return timesteps_; }

  // One denoising step: the latents at sigmas()[step_index + 1].
  //   model_output: [B, C, F, H, W] (any shape equal to sample's), the
  //                 velocity predicted at sigmas()[step_index], any float dtype
  //   sample:       same shape, the latents at sigmas()[step_index]
  // Arithmetic is float32 on the tensors' device; the result has sample's
  // dtype. Steps must run in order 0, 1, ... (UniPC keeps a history).
  // Returns an undefined tensor on a caller bug (no SetTimesteps, step out of
  // order or range, shapes/devices differ, non-float tensors); the state is
  // then unchanged.
  virtual at::Tensor Step(const at::Tensor& model_output, int step_index,
                          const at::Tensor& sample) = 0;

  // Forgets the multistep history so the current schedule can be run again
  // (SetTimesteps calls it). Cheap; never fails.
  virtual void Reset() = 0;

  const SchedulerConfig& config() const { return config_; }

 protected:
  // `config` must pass ValidateSchedulerConfig (MakeScheduler checks).
  explicit FlowScheduler(SchedulerConfig config) : config_(std::move(config)) {}

  // Fills `sigmas` (float32 values, final sigma included) and `timesteps`
  // for arguments SetTimesteps has range checked (`explicit_timesteps`:
  // empty, or num_inference_steps checked values); INVALID_ARGUMENT if the
  // float32 schedule cannot be sampled.
  virtual Status BuildSchedule(int num_inference_steps, double flow_shift,
                               const std::vector<double>& explicit_timesteps,
                               std::vector<float>* sigmas, std::vector<float>* timesteps) const = 0;

  // The checks Step documents, except the ordering one.
  bool StepArgsOk(const at::Tensor& model_output, int step_index, const at::Tensor& sample) const;

  SchedulerConfig config_;
  std::vector<float> sigmas_;
  std::vector<float> timesteps_;
};

// x_next = x + (sigma_next - sigma) * v. Schedule: diffusers'
// FlowMatchEulerDiscreteScheduler(shift=flow_shift).set_timesteps(n).
// Unlike diffusers, which casts the result to model_output's dtype, the
// result has the sample's dtype (as UniPC's does in both).
class FlowMatchEulerScheduler final : public FlowScheduler {
 public:
  explicit FlowMatchEulerScheduler(SchedulerConfig config) : FlowScheduler(std::move(config)) {}

  const char* kind() const override { return "euler"; }
  at::Tensor Step(const at::Tensor& model_output, int step_index,
                  const at::Tensor& sample) override;
  void Reset() override {}

 protected:
  Status BuildSchedule(int num_inference_steps, double flow_shift,
                       const std::vector<double>& explicit_timesteps, std::vector<float>* sigmas,
                       std::vector<float>* timesteps) const override;
};

// Multistep UniPC (B(h) predictor UniP + corrector UniC) on data
// predictions x0 = x - sigma * v, as diffusers' UniPCMultistepScheduler with
// flow_prediction, use_flow_sigmas and predict_x0: order warm-up (step k
// uses order min(solver_order, k + 1)), lower_order_final (the last steps
// drop to the orders that remain), disable_corrector. One deliberate
// difference: bh1 onto sigma 0 gives the limit m0 where diffusers computes
// (-inf) * 0 = NaN.
class UniPCScheduler final : public FlowScheduler {
 public:
  explicit UniPCScheduler(SchedulerConfig config) : FlowScheduler(std::move(config)) {}

  const char* kind() const override { return "unipc"; }
  at::Tensor Step(const at::Tensor& model_output, int step_index,
                  const at::Tensor& sample) override;
  void Reset() override;

 protected:
  Status BuildSchedule(int num_inference_steps, double flow_shift,
                       const std::vector<double>& explicit_timesteps, std::vector<float>* sigmas,
                       std::vector<float>* timesteps) const override;

 private:
  // One B(h) update over sigmas[j] -> sigmas[j + 1] from `x` (fp32, at
  // sigmas[j]) using the last `order` data predictions: UniP when model_t is
  // null, else UniC with model_t, the data prediction at sigmas[j + 1].
  at::Tensor Update(int j, int order, const at::Tensor& x, const at::Tensor* model_t) const;

  std::vector<at::Tensor> history_;  // data predictions, oldest first, <= solver_order, fp32
  at::Tensor last_sample_;           // the (corrected) sample the last predictor started from
  int last_order_ = 0;               // the order the last predictor used
  int lower_order_nums_ = 0;         // steps taken, capped at solver_order
  int next_step_ = 0;
};

// "unipc" or "euler" for a config that passes ValidateSchedulerConfig;
// INVALID_ARGUMENT otherwise. The scheduler still needs SetTimesteps.
StatusOr<std::unique_ptr<FlowScheduler>> MakeScheduler(const std::string& kind,
                                                       const SchedulerConfig& config);

}  // namespace rainserve
