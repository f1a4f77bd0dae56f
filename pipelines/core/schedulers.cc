// Flow-matching schedulers (UniPC multistep, Euler) and the diffusers
// scheduler_config.json reader. See schedulers.h for the conventions.
//
// Schedules repeat diffusers' float64/float32 arithmetic operation by
// operation, so sigmas and timesteps are bit-identical to diffusers'. Step
// coefficients are computed in double from those float32 sigmas (diffusers
// uses float32 0-dim tensors: results agree to ~1e-6 relative); tensor
// arithmetic is float32.
#include "pipelines/core/schedulers.h"

#include "pipelines/core/pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <nlohmann/json.hpp>
#include <utility>

namespace rainserve {
namespace {

using nlohmann::json;

constexpr double kMaxFlowShift = 1000.0;
constexpr int kMaxTrainTimesteps = 1000000;
constexpr int kMaxSolverOrder = 3;
// UniPC's first flow sigma stays this far below 1 (diffusers' eps).
constexpr double kFirstSigmaMargin = 1e-6;

// Shortest readable form of a number for messages ("3", "0.5", "1e+06").
std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// Larger shifts crowd the first sigmas together in float32 (CheckSchedule).
Status CheckFlowShift(double shift) {
  if (!std::isfinite(shift) || shift <= 0.0 || shift > kMaxFlowShift) {
    return InvalidArgumentError("flow_shift must be finite and in (0, " + Num(kMaxFlowShift) +
                                "], got " + Num(shift));
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------
// Config reading.

// Typed access to the keys of one JSON object; errors name the key and file.
class KeyReader {
 public:
  KeyReader(const json& j, const std::string& source) : j_(j), source_(source) {}

  Status Error(const std::string& key, const std::string& what) const {
    return InvalidArgumentError(source_ + ": " + key + ": " + what);
  }
  bool Has(const char* key) const { return j_.contains(key); }

  Status Int(const char* key, int min, int max, int* out) const {
    if (!Has(key)) return OkStatus();
    const json& v = j_.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < min || v.get<int64_t>() > max) {
      return Error(key, "expected an integer in [" + std::to_string(min) + ", " +
                            std::to_string(max) + "], got " + v.dump());
    }
    *out = static_cast<int>(v.get<int64_t>());
    return OkStatus();
  }

  // A finite number in (0, max].
  Status Positive(const char* key, double max, double* out) const {
    if (!Has(key)) return OkStatus();
    const json& v = j_.at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0.0 ||
        v.get<double>() > max) {
      return Error(key, "expected a number in (0, " + Num(max) + "], got " + v.dump());
    }
    *out = v.get<double>();
    return OkStatus();
  }

  Status Bool(const char* key, bool* out) const {
    if (!Has(key)) return OkStatus();
    const json& v = j_.at(key);
    if (!v.is_boolean()) return Error(key, "expected true or false, got " + v.dump());
    *out = v.get<bool>();
    return OkStatus();
  }

  Status String(const char* key, std::string* out) const {
    if (!Has(key)) return OkStatus();
    const json& v = j_.at(key);
    if (!v.is_string()) return Error(key, "expected a string, got " + v.dump());
    *out = v.get<std::string>();
    return OkStatus();
  }

  // An option whose other value changes sampling in a way not implemented.
  Status BoolMustBe(const char* key, bool supported) const {
    bool value = supported;
    RAINSERVE_RETURN_IF_ERROR(Bool(key, &value));
    if (value != supported) {
      return Error(key, std::string("only ") + (supported ? "true" : "false") +
                            " is supported by RainServe's flow schedulers");
    }
    return OkStatus();
  }

  // A list of integers in [min, max].
  Status IntList(const char* key, int min, int max, std::vector<int>* out) const {
    if (!Has(key)) return OkStatus();
    const json& v = j_.at(key);
    if (!v.is_array()) return Error(key, "expected a list of integers, got " + v.dump());
    std::vector<int> values;
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < min || e.get<int64_t>() > max) {
        return Error(key, "entries must be integers in [" + std::to_string(min) + ", " +
                              std::to_string(max) + "], got " + e.dump());
      }
      values.push_back(static_cast<int>(e.get<int64_t>()));
    }
    *out = std::move(values);
    return OkStatus();
  }

  Status MustBeNull(const char* key) const {
    if (Has(key) && !j_.at(key).is_null()) {
      return Error(key, "only null is supported, got " + j_.at(key).dump());
    }
    return OkStatus();
  }

 private:
  const json& j_;
  const std::string& source_;
};

// Options shared by both diffusers classes that would change the sigmas.
Status RejectOtherSigmaSchedules(const KeyReader& r) {
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("use_karras_sigmas", false));
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("use_exponential_sigmas", false));
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("use_beta_sigmas", false));
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("use_dynamic_shifting", false));
  return r.MustBeNull("shift_terminal");
}

// UniPCMultistepScheduler keys. Absent keys take diffusers' defaults.
Status ReadUniPC(const KeyReader& r, SchedulerConfig* c) {
  c->flow_shift = 1.0;
  RAINSERVE_RETURN_IF_ERROR(
      r.Int("num_train_timesteps", 1, kMaxTrainTimesteps, &c->num_train_timesteps));
  RAINSERVE_RETURN_IF_ERROR(r.Positive("flow_shift", kMaxFlowShift, &c->flow_shift));
  RAINSERVE_RETURN_IF_ERROR(r.Int("solver_order", 1, kMaxSolverOrder, &c->solver_order));
  RAINSERVE_RETURN_IF_ERROR(r.Bool("lower_order_final", &c->lower_order_final));

  std::string final_sigmas = "zero";
  RAINSERVE_RETURN_IF_ERROR(r.String("final_sigmas_type", &final_sigmas));
  if (final_sigmas == "zero") {
    c->final_sigmas_type = FinalSigmasType::kZero;
  } else if (final_sigmas == "sigma_min") {
    c->final_sigmas_type = FinalSigmasType::kSigmaMin;
  } else {
    return r.Error("final_sigmas_type",
                   "expected \"zero\" or \"sigma_min\", got \"" + final_sigmas + "\"");
  }

  c->prediction_type = "epsilon";
  RAINSERVE_RETURN_IF_ERROR(r.String("prediction_type", &c->prediction_type));
  if (c->prediction_type != "flow_prediction") {
    return r.Error("prediction_type",
                   "\"" + c->prediction_type + "\"" +
                       (r.Has("prediction_type") ? "" : " (diffusers' default)") +
                       " is not supported: Wan models need \"flow_prediction\"");
  }
  c->use_flow_sigmas = false;
  RAINSERVE_RETURN_IF_ERROR(r.Bool("use_flow_sigmas", &c->use_flow_sigmas));
  if (!c->use_flow_sigmas) {
    return r.Error("use_flow_sigmas",
                   "must be true for flow_prediction (diffusers' default is false)");
  }

  std::string solver = "bh2";
  RAINSERVE_RETURN_IF_ERROR(r.String("solver_type", &solver));
  if (solver == "bh1") {
    c->solver_type = UniPCSolverType::kBh1;
  } else if (solver == "bh2" || solver == "midpoint" || solver == "heun" || solver == "logrho") {
    c->solver_type = UniPCSolverType::kBh2;  // diffusers maps the DPM-Solver names to bh2
  } else {
    return r.Error("solver_type", "expected \"bh1\" or \"bh2\", got \"" + solver + "\"");
  }
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("predict_x0", true));
  RAINSERVE_RETURN_IF_ERROR(
      r.IntList("disable_corrector", 0, kMaxTrainTimesteps, &c->disable_corrector));
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("thresholding", false));
  RAINSERVE_RETURN_IF_ERROR(r.MustBeNull("solver_p"));
  std::string spacing = "linspace";  // unused with flow sigmas, but diffusers rejects others
  RAINSERVE_RETURN_IF_ERROR(r.String("timestep_spacing", &spacing));
  if (spacing != "linspace" && spacing != "leading" && spacing != "trailing") {
    return r.Error("timestep_spacing",
                   "expected linspace, leading or trailing, got \"" + spacing + "\"");
  }
  return OkStatus();
}

// FlowMatchEulerDiscreteScheduler keys. Absent keys take diffusers' defaults.
Status ReadEuler(const KeyReader& r, SchedulerConfig* c) {
  c->flow_shift = 1.0;
  RAINSERVE_RETURN_IF_ERROR(
      r.Int("num_train_timesteps", 1, kMaxTrainTimesteps, &c->num_train_timesteps));
  RAINSERVE_RETURN_IF_ERROR(r.Positive("shift", kMaxFlowShift, &c->flow_shift));
  RAINSERVE_RETURN_IF_ERROR(r.BoolMustBe("invert_sigmas", false));
  return r.BoolMustBe("stochastic_sampling", false);
}

StatusOr<SchedulerConfig> ParseJson(const json& j, const std::string& source) {
  if (!j.is_object()) return InvalidArgumentError(source + ": expected a JSON object");
  const KeyReader r(j, source);
  std::string class_name = "UniPCMultistepScheduler";
  RAINSERVE_RETURN_IF_ERROR(r.String("_class_name", &class_name));

  SchedulerConfig c;
  if (class_name == "UniPCMultistepScheduler") {
    RAINSERVE_RETURN_IF_ERROR(ReadUniPC(r, &c));
  } else if (class_name == "FlowMatchEulerDiscreteScheduler") {
    RAINSERVE_RETURN_IF_ERROR(ReadEuler(r, &c));
  } else {
    return r.Error("_class_name",
                   "expected UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler, got \"" +
                       class_name + "\"");
  }
  RAINSERVE_RETURN_IF_ERROR(RejectOtherSigmaSchedules(r));
  Status valid = ValidateSchedulerConfig(c);
  if (!valid.ok()) return valid.WithPrefix(source);
  return c;
}

// ---------------------------------------------------------------------------
// Schedules.

// numpy.linspace(start, stop, num)[i], computed the way numpy does: i * step
// + start, with the end point stored exactly.
double LinspaceAt(double start, double stop, int num, int i) {
  if (num == 1) return start;
  if (i == num - 1) return stop;
  const double step = (stop - start) / static_cast<double>(num - 1);
  const double offset = static_cast<double>(i) * step;
  return offset + start;
}

// The flow shift sigma' = shift * sigma / (1 + (shift - 1) * sigma), in the
// operation order diffusers writes it.
double ShiftSigma(double sigma, double shift) {
  return (shift * sigma) / (1.0 + (shift - 1.0) * sigma);
}

// The first n sigmas must be positive, below 1 (Euler: at most 1) and
// strictly decreasing in float32, or the solvers divide by zero.
Status CheckSchedule(const std::vector<float>& sigmas, int n, bool allow_one, double shift) {
  for (int i = 0; i < n; ++i) {
    const float s = sigmas[static_cast<size_t>(i)];
    const bool ok = std::isfinite(s) && s > 0.0f && (allow_one ? s <= 1.0f : s < 1.0f) &&
                    (i == 0 || s < sigmas[static_cast<size_t>(i - 1)]);
    if (!ok) {
      return InvalidArgumentError("flow_shift " + Num(shift) + " with " + std::to_string(n) +
                                  " steps gives a degenerate float32 schedule (sigma[" +
                                  std::to_string(i) + "] = " + Num(s) + ")");
    }
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------
// UniPC coefficients. lambda = log(alpha / sigma) with alpha = 1 - sigma;
// one interval s0 -> t of h = lambda_t - lambda_s0 (h = inf when sigma_t = 0).

double Lambda(double sigma) { return std::log(1.0 - sigma) - std::log(sigma); }

struct Interval {
  double sigma_ratio = 0;  // sigma_t / sigma_s0
  double alpha_t = 0;      // 1 - sigma_t
  double lambda_s0 = 0;
  double h = 0;
  double hh = 0;       // -h: the data-prediction (predict_x0) form
  double h_phi_1 = 0;  // e^hh - 1
  double b_h = 0;      // B(h): hh (bh1) or e^hh - 1 (bh2)
};

Interval MakeInterval(double sigma_s0, double sigma_t, UniPCSolverType type) {
  Interval iv;
  iv.sigma_ratio = sigma_t / sigma_s0;
  iv.alpha_t = 1.0 - sigma_t;
  iv.lambda_s0 = Lambda(sigma_s0);
  iv.h = Lambda(sigma_t) - iv.lambda_s0;
  iv.hh = -iv.h;
  iv.h_phi_1 = std::expm1(iv.hh);
  iv.b_h = type == UniPCSolverType::kBh1 ? iv.hh : std::expm1(iv.hh);
  return iv;
}

// r_k = (lambda_{s_k} - lambda_s0) / h for the older points s_1, s_2, ...
double RatioOf(const Interval& iv, double sigma_sk) {
  return (Lambda(sigma_sk) - iv.lambda_s0) / iv.h;
}

// Solves R rho = b for the first `n` unknowns, where R[i][j] = r_j^i
// (r = `rks`, whose last entry is 1) and b_i = i! * phi_{i+1}(hh) / B(h)
// built by the recurrence phi_{k+1} = phi_k / hh - 1 / (k+1)!.
// n <= rks.size() <= kMaxSolverOrder; Gaussian elimination, partial pivoting.
std::vector<double> SolveRhos(const Interval& iv, const std::vector<double>& rks, int n) {
  const int order = static_cast<int>(rks.size());
  std::vector<double> b(static_cast<size_t>(order));
  double h_phi_k = iv.h_phi_1 / iv.hh - 1.0;
  double factorial = 1.0;
  for (int i = 1; i <= order; ++i) {
    b[static_cast<size_t>(i - 1)] = h_phi_k * factorial / iv.b_h;
    factorial *= i + 1;
    h_phi_k = h_phi_k / iv.hh - 1.0 / factorial;
  }
  double a[kMaxSolverOrder][kMaxSolverOrder + 1];
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) a[i][j] = std::pow(rks[static_cast<size_t>(j)], i);
    a[i][n] = b[static_cast<size_t>(i)];
  }
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    for (int row = col + 1; row < n; ++row) {
      if (std::fabs(a[row][col]) > std::fabs(a[pivot][col])) pivot = row;
    }
    for (int j = 0; j <= n; ++j) std::swap(a[col][j], a[pivot][j]);
    for (int row = col + 1; row < n; ++row) {
      const double f = a[row][col] / a[col][col];
      for (int j = col; j <= n; ++j) a[row][j] -= f * a[col][j];
    }
  }
  std::vector<double> rho(static_cast<size_t>(n));
  for (int i = n - 1; i >= 0; --i) {
    double s = a[i][n];
    for (int j = i + 1; j < n; ++j) s -= a[i][j] * rho[static_cast<size_t>(j)];
    rho[static_cast<size_t>(i)] = s / a[i][i];
  }
  return rho;
}

// One data-prediction point with its weight rho_k / r_k.
struct Term {
  const at::Tensor* m;
  double weight;
};

// x_t = (sigma_t / sigma_s0) x - alpha_t (e^hh - 1) m0
//       - alpha_t B(h) sum_k weight_k (m_k - m0)            (all fp32 tensors)
at::Tensor Combine(const Interval& iv, const at::Tensor& x, const at::Tensor& m0,
                   const std::vector<Term>& terms) {
  at::Tensor out = x.mul(iv.sigma_ratio);
  out.add_(m0, -iv.alpha_t * iv.h_phi_1);
  for (const Term& t : terms) out.add_(t.m->sub(m0), -iv.alpha_t * iv.b_h * t.weight);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------

StatusOr<SchedulerConfig> ParseSchedulerConfig(const std::string& json_text,
                                               const std::string& source) {
  try {
    return ParseJson(json::parse(json_text), source);
  } catch (const json::exception& e) {
    return InvalidArgumentError(source + ": bad JSON: " + e.what());
  } catch (const std::exception& e) {
    return InvalidArgumentError(source + ": " + e.what());
  }
}

Status ValidateSchedulerConfig(const SchedulerConfig& c) {
  if (c.num_train_timesteps < 1 || c.num_train_timesteps > kMaxTrainTimesteps) {
    return InvalidArgumentError("num_train_timesteps must be in [1, " +
                                std::to_string(kMaxTrainTimesteps) + "], got " +
                                std::to_string(c.num_train_timesteps));
  }
  RAINSERVE_RETURN_IF_ERROR(CheckFlowShift(c.flow_shift));
  if (c.solver_order < 1 || c.solver_order > kMaxSolverOrder) {
    return InvalidArgumentError("solver_order must be in [1, " + std::to_string(kMaxSolverOrder) +
                                "], got " + std::to_string(c.solver_order));
  }
  if (c.prediction_type != "flow_prediction") {
    return InvalidArgumentError("prediction_type must be \"flow_prediction\", got \"" +
                                c.prediction_type + "\"");
  }
  if (!c.use_flow_sigmas) return InvalidArgumentError("use_flow_sigmas must be true");
  if (!c.predict_x0) {
    return InvalidArgumentError("predict_x0 must be true (flow_prediction needs it)");
  }
  for (int step : c.disable_corrector) {
    if (step < 0) return InvalidArgumentError("disable_corrector entries must be >= 0");
  }
  // Without lower_order_final the last UniPC step is of full order. Onto
  // sigma 0 that divides by r = 0 (diffusers returns inf); onto a repeated
  // sigma_min, order 3 solves a 0/0 system (NaN).
  if (!c.lower_order_final && c.final_sigmas_type == FinalSigmasType::kZero &&
      c.solver_order >= 2) {
    return InvalidArgumentError(
        "lower_order_final: false with final_sigmas_type \"zero\" and solver_order >= 2 "
        "makes the last step divide by zero");
  }
  if (!c.lower_order_final && c.final_sigmas_type == FinalSigmasType::kSigmaMin &&
      c.solver_order >= 3) {
    return InvalidArgumentError(
        "lower_order_final: false with final_sigmas_type \"sigma_min\" and solver_order 3 "
        "makes the last step 0/0");
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------
// FlowScheduler

Status FlowScheduler::SetTimesteps(int num_inference_steps, double flow_shift,
                                   const std::vector<double>& explicit_timesteps) {
  if (num_inference_steps < 1 || num_inference_steps > config_.num_train_timesteps) {
    return InvalidArgumentError("num_inference_steps must be in [1, " +
                                std::to_string(config_.num_train_timesteps) + "], got " +
                                std::to_string(num_inference_steps));
  }
  RAINSERVE_RETURN_IF_ERROR(CheckFlowShift(flow_shift));
  if (!explicit_timesteps.empty()) {
    if (explicit_timesteps.size() != static_cast<size_t>(num_inference_steps)) {
      return InvalidArgumentError("timesteps: " + std::to_string(explicit_timesteps.size()) +
                                  " values for " + std::to_string(num_inference_steps) +
                                  " steps");
    }
    RAINSERVE_RETURN_IF_ERROR(
        ValidateExplicitTimesteps(explicit_timesteps, config_.num_train_timesteps));
  }
  std::vector<float> sigmas, timesteps;
  RAINSERVE_RETURN_IF_ERROR(BuildSchedule(num_inference_steps, flow_shift, explicit_timesteps,
                                          &sigmas, &timesteps));
  sigmas_ = std::move(sigmas);
  timesteps_ = std::move(timesteps);
  Reset();
  return OkStatus();
}

bool FlowScheduler::StepArgsOk(const at::Tensor& model_output, int step_index,
                               const at::Tensor& sample) const {
  return step_index >= 0 && step_index < num_steps() && model_output.defined() &&
         sample.defined() && c10::isFloatingType(model_output.scalar_type()) &&
         c10::isFloatingType(sample.scalar_type()) && model_output.sizes() == sample.sizes() &&
         model_output.device() == sample.device();
}

// ---------------------------------------------------------------------------
// FlowMatchEulerScheduler

Status FlowMatchEulerScheduler::BuildSchedule(int n, double shift,
                                              const std::vector<double>& explicit_timesteps,
                                              std::vector<float>* sigmas,
                                              std::vector<float>* timesteps) const {
  const int big_n = config_.num_train_timesteps;
  // diffusers' constructor: the training sigmas t / N for t = N..1, shifted,
  // in float32 tensors (python scalars become float32 operands).
  const float shift_f = static_cast<float>(shift);
  const float shift_m1_f = static_cast<float>(shift - 1.0);
  const float n_f = static_cast<float>(big_n);
  auto shift_f32 = [&](float s) { return (shift_f * s) / (1.0f + shift_m1_f * s); };
  const double sigma_max = shift_f32(n_f / n_f);
  const double sigma_min = shift_f32(1.0f / n_f);
  // set_timesteps: linspace over sigma * N in float64, back to sigmas and
  // shifted a second time (the endpoint is shifted twice, as in diffusers).
  sigmas->resize(static_cast<size_t>(n) + 1);
  timesteps->resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    // Explicit timesteps: float32 t / N, shifted in float32 (diffusers'
    // numpy arrays); else the float64 linspace.
    const float s =
        explicit_timesteps.empty()
            ? static_cast<float>(
                  ShiftSigma(LinspaceAt(sigma_max * big_n, sigma_min * big_n, n, i) / big_n, shift))
            : shift_f32(static_cast<float>(explicit_timesteps[static_cast<size_t>(i)]) / n_f);
    (*sigmas)[static_cast<size_t>(i)] = s;
    (*timesteps)[static_cast<size_t>(i)] = s * n_f;
  }
  (*sigmas)[static_cast<size_t>(n)] = 0.0f;
  return CheckSchedule(*sigmas, n, /*allow_one=*/true, shift);
}

at::Tensor FlowMatchEulerScheduler::Step(const at::Tensor& model_output, int step_index,
                                         const at::Tensor& sample) {
  if (!StepArgsOk(model_output, step_index, sample)) return at::Tensor();
  // sigma_next - sigma in float32, as diffusers subtracts its float32 sigmas.
  const float dt =
      sigmas_[static_cast<size_t>(step_index) + 1] - sigmas_[static_cast<size_t>(step_index)];
  // x, v, out: the sample's shape, fp32
  const at::Tensor x = sample.to(at::kFloat);
  const at::Tensor v = model_output.to(at::kFloat);
  return x.add(v, dt).to(sample.scalar_type());
}

// ---------------------------------------------------------------------------
// UniPCScheduler

Status UniPCScheduler::BuildSchedule(int n, double shift,
                                     const std::vector<double>& explicit_timesteps,
                                     std::vector<float>* sigmas,
                                     std::vector<float>* timesteps) const {
  const int big_n = config_.num_train_timesteps;
  // diffusers (use_flow_sigmas, current releases): sigmas = linspace(1, 1/N,
  // n + 1) without its last point, shifted, all in float64; a first sigma
  // within kFirstSigmaMargin of 1 is lowered by it (alpha = 0 would make
  // log(alpha) -inf in the first updates); timesteps = int64(sigma * N).
  sigmas->resize(static_cast<size_t>(n) + 1);
  timesteps->resize(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) {
    const double unshifted = explicit_timesteps.empty()
                                 ? LinspaceAt(1.0, 1.0 / big_n, n + 1, j)
                                 : explicit_timesteps[static_cast<size_t>(j)] / big_n;
    double s = ShiftSigma(unshifted, shift);
    if (j == 0 && std::fabs(s - 1.0) < kFirstSigmaMargin) s -= kFirstSigmaMargin;
    (*sigmas)[static_cast<size_t>(j)] = static_cast<float>(s);
    (*timesteps)[static_cast<size_t>(j)] = static_cast<float>(static_cast<int64_t>(s * big_n));
  }
  (*sigmas)[static_cast<size_t>(n)] = config_.final_sigmas_type == FinalSigmasType::kZero
                                          ? 0.0f
                                          : (*sigmas)[static_cast<size_t>(n) - 1];
  return CheckSchedule(*sigmas, n, /*allow_one=*/false, shift);
}

void UniPCScheduler::Reset() {
  history_.clear();
  last_sample_ = at::Tensor();
  last_order_ = 0;
  lower_order_nums_ = 0;
  next_step_ = 0;
}

at::Tensor UniPCScheduler::Update(int j, int order, const at::Tensor& x,
                                  const at::Tensor* model_t) const {
  // x: fp32 at sigmas[j]; history_.back() is the data prediction m0 there,
  // history_[last - i] the one at sigmas[j - i]; model_t (UniC only) the one
  // at sigmas[j + 1].
  const Interval iv = MakeInterval(sigmas_[static_cast<size_t>(j)],
                                   sigmas_[static_cast<size_t>(j) + 1], config_.solver_type);
  const size_t last = history_.size() - 1;
  std::vector<double> rks;  // r_i for the older points, then 1
  for (int i = 1; i < order; ++i) rks.push_back(RatioOf(iv, sigmas_[static_cast<size_t>(j - i)]));
  rks.push_back(1.0);
  // diffusers fixes rho = 1/2 for UniC-1 and UniP-2 instead of solving; UniP
  // solves only the leading (order - 1) block (it has no point at t).
  std::vector<double> rhos;
  if (model_t != nullptr) {
    rhos = order == 1 ? std::vector<double>{0.5} : SolveRhos(iv, rks, order);
  } else if (order >= 2) {
    rhos = order == 2 ? std::vector<double>{0.5} : SolveRhos(iv, rks, order - 1);
  }
  std::vector<Term> terms;
  for (int i = 1; i < order; ++i) {
    terms.push_back({&history_[last - static_cast<size_t>(i)],
                     rhos[static_cast<size_t>(i - 1)] / rks[static_cast<size_t>(i - 1)]});
  }
  if (model_t != nullptr) terms.push_back({model_t, rhos.back()});
  return Combine(iv, x, history_[last], terms);
}

at::Tensor UniPCScheduler::Step(const at::Tensor& model_output, int step_index,
                                const at::Tensor& sample) {
  if (!StepArgsOk(model_output, step_index, sample) || step_index != next_step_)
    return at::Tensor();
  const int k = step_index;
  // x, v, model_t: the sample's shape, fp32
  at::Tensor x = sample.to(at::kFloat);
  const at::Tensor v = model_output.to(at::kFloat);
  // The data prediction x0 = x - sigma * v (flow_prediction, predict_x0).
  at::Tensor model_t = x.sub(v, sigmas_[static_cast<size_t>(k)]);

  const bool corrector_disabled =
      std::find(config_.disable_corrector.begin(), config_.disable_corrector.end(), k - 1) !=
      config_.disable_corrector.end();
  if (k > 0 && last_sample_.defined() && !corrector_disabled) {
    x = Update(k - 1, last_order_, last_sample_, &model_t);  // UniC
  } else if (x.is_same(sample)) {
    x = x.clone();  // kept as last_sample_: must not alias the caller's tensor
  }

  if (static_cast<int>(history_.size()) == config_.solver_order) history_.erase(history_.begin());
  history_.push_back(std::move(model_t));

  int order = config_.solver_order;
  if (config_.lower_order_final) order = std::min(order, num_steps() - k);
  order = std::min(order, lower_order_nums_ + 1);  // warm-up: not more points than taken
  last_order_ = order;
  last_sample_ = x;
  at::Tensor prev = Update(k, order, x, nullptr);  // UniP

  if (lower_order_nums_ < config_.solver_order) ++lower_order_nums_;
  ++next_step_;
  return prev.to(sample.scalar_type());
}

// ---------------------------------------------------------------------------

StatusOr<std::unique_ptr<FlowScheduler>> MakeScheduler(const std::string& kind,
                                                       const SchedulerConfig& config) {
  RAINSERVE_RETURN_IF_ERROR(ValidateSchedulerConfig(config));
  if (kind == "unipc") return std::unique_ptr<FlowScheduler>(new UniPCScheduler(config));
  if (kind == "euler") return std::unique_ptr<FlowScheduler>(new FlowMatchEulerScheduler(config));
  return InvalidArgumentError("scheduler must be \"unipc\" or \"euler\", got \"" + kind + "\"");
}

}  // namespace rainserve
