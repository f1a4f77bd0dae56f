// Tests for pipelines/core/schedulers.h: the flow-matching UniPC and Euler
// schedulers against values derived by hand from diffusers' formulas, exact
// integration of a constant velocity, convergence order, config parsing and
// argument checks. Run: build/tests/pipelines/scheduler_test
//
// Notation: n inference steps, N = 1000 training timesteps, shift s,
// f_s(x) = s x / (1 + (s - 1) x) the flow shift, alpha = 1 - sigma,
// lambda = log(alpha / sigma). Latents at sigma: x = (1 - sigma) x0 +
// sigma * noise, velocity v = noise - x0, data prediction m = x - sigma v.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pipelines/core/schedulers.h"

namespace rainserve {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The published Wan-AI/Wan2.1-T2V-*-Diffusers scheduler/scheduler_config.json.
constexpr const char* kWan21SchedulerJson = R"({
  "_class_name": "UniPCMultistepScheduler",
  "_diffusers_version": "0.33.0.dev0",
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "beta_start": 0.0001,
  "disable_corrector": [],
  "dynamic_thresholding_ratio": 0.995,
  "final_sigmas_type": "zero",
  "flow_shift": 3.0,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "predict_x0": true,
  "prediction_type": "flow_prediction",
  "rescale_betas_zero_snr": false,
  "sample_max_value": 1.0,
  "solver_order": 2,
  "solver_p": null,
  "solver_type": "bh2",
  "steps_offset": 0,
  "thresholding": false,
  "timestep_spacing": "linspace",
  "trained_betas": null,
  "use_beta_sigmas": false,
  "use_exponential_sigmas": false,
  "use_flow_sigmas": true,
  "use_karras_sigmas": false
})";

// [1, 1, 1, 1, W] float32 latents from values.
at::Tensor Latent(std::vector<float> values) {
  const int64_t w = static_cast<int64_t>(values.size());
  return at::from_blob(values.data(), {1, 1, 1, 1, w}, at::kFloat).clone();
}

std::vector<double> Values(const at::Tensor& t) {
  const at::Tensor flat = t.to(at::kDouble).contiguous().view({-1});
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

void ExpectNear(const at::Tensor& actual, const std::vector<double>& expected, double tol) {
  ASSERT_TRUE(actual.defined());
  const std::vector<double> got = Values(actual);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], tol) << "element " << i;
}

std::unique_ptr<FlowScheduler> Make(const std::string& kind, const SchedulerConfig& config = {}) {
  auto made = MakeScheduler(kind, config);
  EXPECT_TRUE(made.ok()) << made.status().ToString();
  return made.ok() ? std::move(made).value() : nullptr;
}

std::unique_ptr<FlowScheduler> MakeWithSteps(const std::string& kind, int steps, double shift,
                                             const SchedulerConfig& config = {}) {
  std::unique_ptr<FlowScheduler> s = Make(kind, config);
  if (s != nullptr) {
    const Status st = s->SetTimesteps(steps, shift);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  return s;
}

void ExpectSchedule(const FlowScheduler& s, const std::vector<double>& sigmas,
                    const std::vector<double>& timesteps, double sigma_tol, double timestep_tol) {
  ASSERT_EQ(s.sigmas().size(), sigmas.size());
  ASSERT_EQ(s.timesteps().size(), timesteps.size());
  for (size_t i = 0; i < sigmas.size(); ++i)
    EXPECT_NEAR(s.sigmas()[i], sigmas[i], sigma_tol) << "sigma " << i;
  for (size_t i = 0; i < timesteps.size(); ++i) {
    EXPECT_NEAR(s.timesteps()[i], timesteps[i], timestep_tol) << "timestep " << i;
  }
}

// ---------------------------------------------------------------------------
// Schedules.
//
// UniPC (use_flow_sigmas, diffusers 0.37 and later): raw sigmas
// linspace(1, 1/N, n + 1) without the last point, i.e. 1 - i * 0.999 / n;
// shifted; the first, f_s(1) = 1, lowered by 1e-6; then the final sigma
// appended. Timesteps: int(sigma * N), truncated. For n = 4 the raw sigmas
// are 1, 0.75025, 0.5005, 0.25075. (diffusers up to 0.36, like the original
// Wan sampler, used linspace(0.999, 0, n + 1) instead: 999, 899, 749, 499 at
// shift 3, which these tests reject.)

TEST(UniPCSchedule, FourStepsShift3MatchHandDerivation) {
  // f_3(x) = 3x / (1 + 2x):
  //   f(1)       = 1 -> 1 - 1e-6                          -> t = 999
  //   f(0.75025) = 2.25075 / 2.5005 = 0.90011998...        -> t = 900
  //   f(0.5005)  = 1.5015  / 2.001  = 0.75037481...        -> t = 750
  //   f(0.25075) = 0.75225 / 1.5015 = 0.50099900...        -> t = 500
  // final_sigmas_type "zero" appends 0.
  auto s = MakeWithSteps("unipc", 4, 3.0);
  ASSERT_NE(s, nullptr);
  ExpectSchedule(*s, {1.0 - 1e-6, 2.25075 / 2.5005, 1.5015 / 2.001, 0.75225 / 1.5015, 0.0},
                 {999, 900, 750, 500}, 1e-7, 0.0);
}

TEST(UniPCSchedule, EightStepsShift3AreDiffusersCurrentTimesteps) {
  // The Wan2.1 480p default shift with 8 steps: raw sigmas 1 - i * 0.124875,
  // f_3 of them times 1000, truncated (f_3(0.875125) = 2.625375 / 2.75025 =
  // 0.95459...; f_3(0.125875) = 0.377625 / 1.25175 = 0.30168...).
  auto s = MakeWithSteps("unipc", 8, 3.0);
  ASSERT_NE(s, nullptr);
  std::vector<double> sigmas;
  for (int i = 0; i < 8; ++i) {
    const double raw = 1.0 - i * 0.124875;
    sigmas.push_back(i == 0 ? 1.0 - 1e-6 : 3.0 * raw / (1.0 + 2.0 * raw));
  }
  sigmas.push_back(0.0);
  ExpectSchedule(*s, sigmas, {999, 954, 900, 833, 750, 643, 500, 301}, 1e-7, 0.0);
}

TEST(UniPCSchedule, FourStepsShift1MatchHandDerivation) {
  // f_1 is the identity: sigmas 1 - 1e-6, 0.75025, 0.5005, 0.25075, 0 and
  // timesteps int(999.999) = 999, int(750.25) = 750, int(500.5) = 500,
  // int(250.75) = 250 (truncated, not rounded: diffusers casts float64 to int64).
  auto s = MakeWithSteps("unipc", 4, 1.0);
  ASSERT_NE(s, nullptr);
  ExpectSchedule(*s, {1.0 - 1e-6, 0.75025, 0.5005, 0.25075, 0.0}, {999, 750, 500, 250}, 1e-7,
                 0.0);
}

TEST(UniPCSchedule, Shift5For720pAndSigmaMinFinal) {
  // f_5(x) = 5x / (1 + 4x): f(0.75025) = 3.75125 / 4.001, f(0.5005) = 2.5025 / 3.002,
  // f(0.25075) = 1.25375 / 2.003 -> t = 999, 937, 833, 625.
  // "sigma_min" repeats the last inference sigma instead of 0.
  SchedulerConfig config;
  config.final_sigmas_type = FinalSigmasType::kSigmaMin;
  auto s = MakeWithSteps("unipc", 4, 5.0, config);
  ASSERT_NE(s, nullptr);
  ExpectSchedule(*s,
                 {1.0 - 1e-6, 3.75125 / 4.001, 2.5025 / 3.002, 1.25375 / 2.003, 1.25375 / 2.003},
                 {999, 937, 833, 625}, 1e-7, 0.0);
}

// Euler (diffusers FlowMatchEulerDiscreteScheduler(shift=s)): the
// constructor's training sigmas are f_s(t / N), t = N..1, so sigma_max =
// f_s(1) = 1 and sigma_min = f_s(1/N); set_timesteps takes linspace(1,
// sigma_min, n) and shifts it AGAIN (the endpoint becomes f_s(f_s(1/N)) =
// f_{s^2}(1/N)), appends 0; timesteps = sigma * N as floats.

TEST(EulerSchedule, FourStepsShift3MatchHandDerivation) {
  // sigma_min = f_3(0.001) = 0.003 / 1.002 = 0.00299401...
  // linspace(1, 0.00299401, 4) = 1, 0.66766467, 0.33532934, 0.00299401
  // f_3: 1 -> 1; 0.66766467 -> 2.00299401 / 2.33532934 = 0.85769231;
  //      0.33532934 -> 1.00598802 / 1.67065868 = 0.60215054;
  //      0.00299401 -> f_9(0.001) = 0.009 / 1.008 = 1 / 112.
  auto s = MakeWithSteps("euler", 4, 3.0);
  ASSERT_NE(s, nullptr);
  const double sigma_min = 0.003 / 1.002;
  const double mid1 = 1.0 - (1.0 - sigma_min) / 3.0;
  const double mid2 = 1.0 - 2.0 * (1.0 - sigma_min) / 3.0;
  const std::vector<double> sigmas = {1.0, 3 * mid1 / (1 + 2 * mid1), 3 * mid2 / (1 + 2 * mid2),
                                      1.0 / 112.0, 0.0};
  EXPECT_NEAR(sigmas[1], 0.85769231, 1e-8);
  EXPECT_NEAR(sigmas[2], 0.60215054, 1e-8);
  ExpectSchedule(*s, sigmas, {1000.0, 857.69231, 602.15054, 1000.0 / 112.0}, 1e-6, 1e-3);
}

TEST(EulerSchedule, FourStepsShift1MatchHandDerivation) {
  // sigma_min = 0.001: linspace(1, 0.001, 4) = 1, 0.667, 0.334, 0.001; f_1 = id.
  auto s = MakeWithSteps("euler", 4, 1.0);
  ASSERT_NE(s, nullptr);
  ExpectSchedule(*s, {1.0, 0.667, 0.334, 0.001, 0.0}, {1000.0, 667.0, 334.0, 1.0}, 1e-7, 1e-4);
}

TEST(Schedules, OneStepGoesStraightToTheFinalSigma) {
  // n = 1: UniPC sigma 1 - 1e-6, Euler sigma 1; both end at 0.
  auto unipc = MakeWithSteps("unipc", 1, 3.0);
  auto euler = MakeWithSteps("euler", 1, 3.0);
  ASSERT_NE(unipc, nullptr);
  ASSERT_NE(euler, nullptr);
  ExpectSchedule(*unipc, {1.0 - 1e-6, 0.0}, {999}, 1e-7, 0.0);
  ExpectSchedule(*euler, {1.0, 0.0}, {1000}, 0.0, 0.0);
}

// ---------------------------------------------------------------------------
// Single steps on tiny tensors. Inputs (W = 2):
//   x0 = {1, -0.5}, v0 = {0.25, 2}, v1 = {-1, 0.5}, v2 = {0.5, -0.25}.

const std::vector<float> kX0 = {1.0f, -0.5f};
const std::vector<float> kV0 = {0.25f, 2.0f};
const std::vector<float> kV1 = {-1.0f, 0.5f};
const std::vector<float> kV2 = {0.5f, -0.25f};

TEST(EulerStep, FirstStepMatchesHandComputed) {
  // Shift 1, 4 steps: sigma 1 -> 0.667, x1 = x0 + (0.667 - 1) v0 = x0 - 0.333 v0
  //   = {1 - 0.08325, -0.5 - 0.666} = {0.91675, -1.166}.
  auto s = MakeWithSteps("euler", 4, 1.0);
  ASSERT_NE(s, nullptr);
  ExpectNear(s->Step(Latent(kV0), 0, Latent(kX0)), {0.91675, -1.166}, 1e-6);
}

// UniPC, shift 1, 4 steps: sigma_i = S[i] (1 - 1e-6, 0.75025, 0.5005,
// 0.25075, then 0), as the scheduler stores them (float32), alpha = 1 - sigma,
// lambda = log(alpha / sigma), q_i = sigma_{i+1} / sigma_i. With hh = -h =
// lambda_s - lambda_t:
//   e^hh = (alpha_s / sigma_s) (sigma_t / alpha_t), so
//   alpha_t (e^hh - 1) = alpha_s sigma_t / sigma_s - alpha_t = q - 1,
// and the order-1 update x_t = q x - alpha_t (e^hh - 1) m = q x + (1 - q) m,
// i.e. DDIM = Euler. B(h) = e^hh - 1 (bh2: alpha_t B = q - 1) or hh (bh1).
//
// Step 0 (UniP-1, warm-up): m0 = x0 - S0 v0, x1 = q0 x0 + (1 - q0) m0.
// Step 1: m1 = x1 - S1 v1.
//   UniC-1 (rho = 1/2) re-runs step 0 with m1:
//   x1c = x1 - alpha_1 B(h_01) (1/2) (m1 - m0);  bh1: alpha_1 B = alpha_1 (lambda_0 - lambda_1).
//   UniP-2 from x1c over S1 -> S2 with points m1 (s0) and m0 (s1):
//   r = (lambda_0 - lambda_1) / (lambda_2 - lambda_1),
//   x2 = q1 x1c + (1 - q1) m1 - alpha_2 B(h_12) (1/2) (m0 - m1) / r;
//   bh1: alpha_2 B = alpha_2 (lambda_1 - lambda_2).
const double kS[4] = {static_cast<float>(1.0 - 1e-6), static_cast<float>(0.75025),
                      static_cast<float>(0.5005), static_cast<float>(0.25075)};

double LambdaAt(int i) { return std::log((1.0 - kS[i]) / kS[i]); }
double Ratio(int i) { return kS[i + 1] / kS[i]; }

// m0, x1 (after step 0) and m1, element by element.
struct FirstStep {
  std::vector<double> m0, x1, m1;
};

FirstStep HandFirstStep() {
  FirstStep f;
  for (size_t i = 0; i < 2; ++i) {
    f.m0.push_back(kX0[i] - kS[0] * kV0[i]);
    f.x1.push_back(Ratio(0) * kX0[i] + (1.0 - Ratio(0)) * f.m0[i]);
    f.m1.push_back(f.x1[i] - kS[1] * kV1[i]);
  }
  return f;
}

struct TwoStepExpectation {
  UniPCSolverType type;
  double alpha1_b;  // alpha_1 B(h_01)
  double alpha2_b;  // alpha_2 B(h_12)
};

void CheckFirstTwoUniPCSteps(const TwoStepExpectation& e) {
  SchedulerConfig config;
  config.solver_type = e.type;
  auto s = MakeWithSteps("unipc", 4, 1.0, config);
  ASSERT_NE(s, nullptr);
  const FirstStep f = HandFirstStep();
  EXPECT_NEAR(f.x1[0], 0.93756275, 1e-7);  // the numbers the derivation gives
  EXPECT_NEAR(f.x1[1], -0.99949801, 1e-7);
  const at::Tensor x1 = s->Step(Latent(kV0), 0, Latent(kX0));
  ExpectNear(x1, f.x1, 1e-6);

  const double r = (LambdaAt(0) - LambdaAt(1)) / (LambdaAt(2) - LambdaAt(1));
  EXPECT_NEAR(r, -11.5692151, 1e-6);
  std::vector<double> x2(2);
  for (size_t i = 0; i < 2; ++i) {
    const double x1c = f.x1[i] - e.alpha1_b * 0.5 * (f.m1[i] - f.m0[i]);
    x2[i] = Ratio(1) * x1c + (1.0 - Ratio(1)) * f.m1[i] -
            e.alpha2_b * 0.5 * (f.m0[i] - f.m1[i]) / r;
  }
  ExpectNear(s->Step(Latent(kV1), 1, x1), x2, 2e-6);
}

TEST(UniPCStep, FirstTwoStepsMatchHandComputedBh2) {
  CheckFirstTwoUniPCSteps({UniPCSolverType::kBh2, Ratio(0) - 1.0, Ratio(1) - 1.0});
}

TEST(UniPCStep, FirstTwoStepsMatchHandComputedBh1) {
  const double alpha1_b = (1.0 - kS[1]) * (LambdaAt(0) - LambdaAt(1));
  EXPECT_NEAR(alpha1_b, -3.1724176, 1e-6);
  CheckFirstTwoUniPCSteps(
      {UniPCSolverType::kBh1, alpha1_b, (1.0 - kS[2]) * (LambdaAt(1) - LambdaAt(2))});
}

TEST(UniPCStep, ThirdStepUsesSecondOrderCorrector) {
  // Step 2 (bh2): m2 = x2 - S2 v2. UniC-2 re-runs step 1 from x1c with m0,
  // m1 and m2 over S1 -> S2 (h = lambda_2 - lambda_1, hh = -h, B = e^hh - 1,
  // alpha_2 B = q1 - 1, r as above): solve
  //   [1 1; r 1] [rho0; rho1] = [b1; b2],
  //   b1 = (B / hh - 1) / B,  b2 = 2 ((B / hh - 1) / hh - 1/2) / B,
  //   -> rho0 = (b1 - b2) / (1 - r), rho1 = b1 - rho0;
  //   x2c = q1 x1c + (1 - q1) m1 - (q1 - 1) (rho0 (m0 - m1) / r + rho1 (m2 - m1)).
  // Then UniP-2 over S2 -> S3 with r' = (lambda_1 - lambda_2) / (lambda_3 - lambda_2):
  //   x3 = q2 x2c + (1 - q2) m2 - (q2 - 1) (1/2) (m1 - m2) / r'.
  auto s = MakeWithSteps("unipc", 4, 1.0);
  ASSERT_NE(s, nullptr);
  const at::Tensor x1 = s->Step(Latent(kV0), 0, Latent(kX0));
  const at::Tensor x2 = s->Step(Latent(kV1), 1, x1);
  ASSERT_TRUE(x2.defined());

  const double hh = -(LambdaAt(2) - LambdaAt(1));
  const double b = std::expm1(hh);
  const double r = (LambdaAt(0) - LambdaAt(1)) / (LambdaAt(2) - LambdaAt(1));
  const double b1 = (b / hh - 1.0) / b;
  const double b2 = 2.0 * ((b / hh - 1.0) / hh - 0.5) / b;
  const double rho0 = (b1 - b2) / (1.0 - r), rho1 = b1 - rho0;
  EXPECT_NEAR(rho0, 0.0130009, 1e-6);
  EXPECT_NEAR(rho1, 0.5767075, 1e-6);
  const double r3 = (LambdaAt(1) - LambdaAt(2)) / (std::log((1.0 - kS[3]) / kS[3]) - LambdaAt(2));
  const double q1 = Ratio(1), q2 = Ratio(2);

  const FirstStep f = HandFirstStep();
  const std::vector<double> x2v = Values(x2);
  std::vector<double> x3(2);
  for (size_t i = 0; i < 2; ++i) {
    const double x1c = f.x1[i] - (Ratio(0) - 1.0) * 0.5 * (f.m1[i] - f.m0[i]);
    const double m2 = x2v[i] - kS[2] * kV2[i];
    const double x2c = q1 * x1c + (1.0 - q1) * f.m1[i] -
                       (q1 - 1.0) * (rho0 * (f.m0[i] - f.m1[i]) / r + rho1 * (m2 - f.m1[i]));
    x3[i] = q2 * x2c + (1.0 - q2) * m2 - (q2 - 1.0) * 0.5 * (f.m1[i] - m2) / r3;
  }
  EXPECT_NEAR(x3[0], 0.91981937, 1e-6);  // the numbers the derivation gives
  EXPECT_NEAR(x3[1], -0.79227766, 1e-6);
  ExpectNear(s->Step(Latent(kV2), 2, x2), x3, 2e-6);
}

TEST(UniPCStep, DisabledCorrectorSkipsUniC) {
  // disable_corrector = {0}: step 1 predicts from the uncorrected x1:
  //   x2 = q1 x1 + (1 - q1) m1 - (q1 - 1) (1/2) (m0 - m1) / r.
  SchedulerConfig config;
  config.disable_corrector = {0};
  auto s = MakeWithSteps("unipc", 4, 1.0, config);
  ASSERT_NE(s, nullptr);
  const at::Tensor x1 = s->Step(Latent(kV0), 0, Latent(kX0));
  const double r = (LambdaAt(0) - LambdaAt(1)) / (LambdaAt(2) - LambdaAt(1));
  const double q1 = Ratio(1);
  const FirstStep f = HandFirstStep();
  std::vector<double> x2(2);
  for (size_t i = 0; i < 2; ++i) {
    x2[i] = q1 * f.x1[i] + (1.0 - q1) * f.m1[i] - (q1 - 1.0) * 0.5 * (f.m0[i] - f.m1[i]) / r;
  }
  ExpectNear(s->Step(Latent(kV1), 1, x1), x2, 2e-6);
}

TEST(UniPCStep, LastStepReturnsTheDataPredictionOfItsInput) {
  // lower_order_final: the last step is UniP-1 onto sigma 0, where
  // sigma_t / sigma_s = 0 and alpha_t (e^hh - 1) = -1, so whatever the history,
  // x_final = m = x - sigma_{n-1} v for the sample x it was given (the
  // corrector changes only the discarded x term). A full-order last step
  // would divide by r = 0 instead.
  for (UniPCSolverType type : {UniPCSolverType::kBh2, UniPCSolverType::kBh1}) {
    SchedulerConfig config;
    config.solver_type = type;
    auto s = MakeWithSteps("unipc", 5, 3.0, config);
    ASSERT_NE(s, nullptr);
    at::Tensor x = Latent({0.3f, -1.2f, 2.0f});
    for (int i = 0; i < 4; ++i) {
      x = s->Step(Latent({0.5f * i, -1.0f + i, 0.25f}), i, x);
      ASSERT_TRUE(x.defined());
    }
    const at::Tensor v = Latent({1.5f, -0.75f, 0.1f});
    const std::vector<double> xv = Values(x), vv = Values(v);
    const double sigma = s->sigmas()[4];
    ExpectNear(s->Step(v, 4, x),
               {xv[0] - sigma * vv[0], xv[1] - sigma * vv[1], xv[2] - sigma * vv[2]}, 1e-6);
  }
}

// ---------------------------------------------------------------------------
// Integration.

// [B, C, F, H, W] = [1, 2, 3, 4, 5] deterministic test data.
at::Tensor Pattern(double freq, double phase) {
  return at::sin(at::arange(120, at::kDouble) * freq + phase).to(at::kFloat).view({1, 2, 3, 4, 5});
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

TEST(Integration, ConstantVelocityRecoversX0) {
  // Linear flow x_sigma = (1 - sigma) x0 + sigma noise, v = noise - x0 exactly.
  // Euler: x + (sigma' - sigma) v stays on the line. UniPC: every data
  // prediction is x0, so all differences D = m_i - m0 vanish and the order-1
  // part maps (1 - s) x0 + s noise to (1 - t) x0 + t noise exactly. Both end
  // at sigma 0, i.e. x0, up to float32 rounding.
  const at::Tensor x0 = Pattern(0.37, 0.1);
  const at::Tensor noise = Pattern(0.91, 2.0) * 1.5;
  const at::Tensor v = noise - x0;
  for (const char* kind : {"unipc", "euler"}) {
    for (double shift : {1.0, 3.0, 5.0}) {
      for (int steps : {1, 2, 4, 10, 50}) {
        auto s = MakeWithSteps(kind, steps, shift);
        ASSERT_NE(s, nullptr);
        const double sigma0 = s->sigmas()[0];
        at::Tensor x = x0 * (1.0 - sigma0) + noise * sigma0;
        for (int i = 0; i < steps; ++i) x = s->Step(v, i, x);
        ASSERT_TRUE(x.defined());
        EXPECT_LT(MaxAbsDiff(x, x0), 1e-5) << kind << " shift " << shift << " steps " << steps;
      }
    }
  }
}

// Integrates dx/dsigma = c x (v = c x) from sigmas[0] to 0 and returns the
// max error against the exact x(0) = x(sigma0) e^{-c sigma0}.
double LinearOdeError(const std::string& kind, int steps) {
  constexpr double kC = 1.0;
  auto s = MakeWithSteps(kind, steps, 1.0);
  if (s == nullptr) return kInf;
  const at::Tensor start = Pattern(0.37, 0.1);
  at::Tensor x = start;
  for (int i = 0; i < steps; ++i) x = s->Step(x * kC, i, x);
  return MaxAbsDiff(x, start * std::exp(-kC * s->sigmas()[0]));
}

TEST(Integration, UniPCConvergesAtSecondOrderEulerAtFirst) {
  // Doubling the steps (40 -> 80) halves Euler's global error (order 1) and
  // quarters UniPC's: UniP-2 + UniC-2 between the ends, but the first-order
  // last step onto sigma 0 (lower_order_final: m = x - sigma v, local error
  // ~ (c sigma_{n-1})^2 / 2) leaves order 2. Measured: Euler 4.76e-3 ->
  // 2.34e-3, UniPC 1.41e-4 -> 3.92e-5 (ratio 0.28; 0.25 asymptotically).
  // Dropping UniP-2's second-order term makes UniPC 3.6x less accurate.
  const double euler40 = LinearOdeError("euler", 40), euler80 = LinearOdeError("euler", 80);
  const double unipc40 = LinearOdeError("unipc", 40), unipc80 = LinearOdeError("unipc", 80);
  EXPECT_GT(euler80 / euler40, 0.45);
  EXPECT_LT(euler80 / euler40, 0.55);
  EXPECT_LT(unipc80 / unipc40, 0.32);
  EXPECT_LT(unipc40, euler40 / 10.0);
}

// ---------------------------------------------------------------------------
// State, dtypes and caller bugs.

TEST(UniPCStep, ResetAndSetTimestepsReplayIdentically) {
  auto s = MakeWithSteps("unipc", 6, 3.0);
  ASSERT_NE(s, nullptr);
  auto run = [&]() {
    at::Tensor x = Pattern(0.5, 0.0);
    for (int i = 0; i < 6; ++i) x = s->Step(Pattern(0.2 + 0.1 * i, 1.0), i, x);
    return x;
  };
  const at::Tensor first = run();
  ASSERT_TRUE(first.defined());
  s->Reset();
  EXPECT_EQ(MaxAbsDiff(run(), first), 0.0);
  ASSERT_TRUE(s->SetTimesteps(6, 3.0).ok());
  EXPECT_EQ(MaxAbsDiff(run(), first), 0.0);
  // Without Reset, step 0 is out of order: the history is not silently reused.
  EXPECT_FALSE(s->Step(Pattern(0.2, 1.0), 0, Pattern(0.5, 0.0)).defined());
}

TEST(UniPCStep, HistoryDoesNotAliasTheCallersSample) {
  // The caller may overwrite its latents in place after a step.
  auto a = MakeWithSteps("unipc", 3, 3.0);
  auto b = MakeWithSteps("unipc", 3, 3.0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  at::Tensor xa = Pattern(0.5, 0.0);
  const at::Tensor xb = Pattern(0.5, 0.0);
  const at::Tensor ya = a->Step(Pattern(0.3, 1.0), 0, xa);
  const at::Tensor yb = b->Step(Pattern(0.3, 1.0), 0, xb);
  xa.fill_(100.0);
  EXPECT_EQ(MaxAbsDiff(a->Step(Pattern(0.4, 1.0), 1, ya), b->Step(Pattern(0.4, 1.0), 1, yb)), 0.0);
}

TEST(Step, ReturnsSampleDtypeComputedInFloat32) {
  // bf16 in: the same step on the float32 copies, rounded to bf16 at the end.
  for (const char* kind : {"unipc", "euler"}) {
    auto s16 = MakeWithSteps(kind, 4, 3.0);
    auto s32 = MakeWithSteps(kind, 4, 3.0);
    ASSERT_NE(s16, nullptr);
    ASSERT_NE(s32, nullptr);
    at::Tensor x16 = Pattern(0.5, 0.0).to(at::kBFloat16);
    at::Tensor x32 = x16.to(at::kFloat);
    for (int i = 0; i < 3; ++i) {
      const at::Tensor v16 = Pattern(0.3 + 0.1 * i, 1.0).to(at::kBFloat16);
      x16 = s16->Step(v16, i, x16);
      x32 = s32->Step(v16.to(at::kFloat), i, x32).to(at::kBFloat16).to(at::kFloat);
      ASSERT_TRUE(x16.defined());
      EXPECT_EQ(x16.scalar_type(), at::kBFloat16) << kind;
    }
    // Identical except where the float32 history (not re-rounded) differs.
    EXPECT_LT(MaxAbsDiff(x16, x32), 2e-2) << kind;
  }
  auto s = MakeWithSteps("euler", 4, 3.0);
  ASSERT_NE(s, nullptr);
  const at::Tensor x = Pattern(0.5, 0.0).to(at::kDouble);
  const at::Tensor out = s->Step(Pattern(0.3, 1.0).to(at::kHalf), 0, x);
  EXPECT_EQ(out.scalar_type(), at::kDouble);
}

TEST(Step, CallerBugsGiveAnUndefinedTensorAndKeepState) {
  const at::Tensor x = Latent({1.0f, 2.0f});
  const at::Tensor v = Latent({0.5f, 0.5f});
  for (const char* kind : {"unipc", "euler"}) {
    auto s = Make(kind);
    ASSERT_NE(s, nullptr);
    EXPECT_FALSE(s->Step(v, 0, x).defined()) << kind << ": before SetTimesteps";
    ASSERT_TRUE(s->SetTimesteps(3, 3.0).ok());
    EXPECT_FALSE(s->Step(v, -1, x).defined()) << kind;
    EXPECT_FALSE(s->Step(v, 3, x).defined()) << kind << ": past the last step";
    EXPECT_FALSE(s->Step(Latent({0.5f, 0.5f, 0.5f}), 0, x).defined()) << kind << ": shape";
    EXPECT_FALSE(s->Step(v.to(at::kInt), 0, x).defined()) << kind << ": integer tensor";
    EXPECT_FALSE(s->Step(at::Tensor(), 0, x).defined()) << kind << ": undefined tensor";
    EXPECT_TRUE(s->Step(v, 0, x).defined()) << kind << ": still usable";
  }
  auto unipc = MakeWithSteps("unipc", 3, 3.0);
  ASSERT_NE(unipc, nullptr);
  EXPECT_FALSE(unipc->Step(v, 1, x).defined()) << "UniPC steps must run in order";
  EXPECT_TRUE(unipc->Step(v, 0, x).defined());
}

TEST(SetTimesteps, RejectsBadArgumentsAndKeepsTheSchedule) {
  for (const char* kind : {"unipc", "euler"}) {
    auto s = MakeWithSteps(kind, 4, 3.0);
    ASSERT_NE(s, nullptr);
    const std::vector<float> sigmas = s->sigmas();
    struct Bad {
      int steps;
      double shift;
    };
    for (const Bad& bad : {Bad{0, 3.0}, Bad{-2, 3.0}, Bad{1001, 3.0}, Bad{4, 0.0}, Bad{4, -1.0},
                           Bad{4, kNaN}, Bad{4, kInf}, Bad{4, 1e4}}) {
      const Status st = s->SetTimesteps(bad.steps, bad.shift);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument)
          << kind << " " << bad.steps << " " << bad.shift;
      EXPECT_EQ(s->sigmas(), sigmas) << kind;
    }
    EXPECT_TRUE(s->SetTimesteps(1000, 3.0).ok()) << kind;
    EXPECT_EQ(s->num_steps(), 1000);
    EXPECT_EQ(s->sigmas().size(), 1001u);
  }
}

// ---------------------------------------------------------------------------
// Explicit timesteps (few-step distilled checkpoints). sigma_i = f_s(t_i / N)
// (diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps(timesteps=...),
// and lightx2v's step-distill scheduler, which picks t_i from the shifted
// 1000-step training sigmas), then the final sigma.

TEST(ExplicitSchedule, LightX2VFourStepsShift5MatchHandDerivation) {
  // [1000, 750, 500, 250] / 1000 = 1, 0.75, 0.5, 0.25; f_5(x) = 5x / (1 + 4x):
  //   f(1) = 1, f(0.75) = 3.75 / 4 = 0.9375, f(0.5) = 2.5 / 3, f(0.25) = 1.25 / 2 = 0.625.
  // Euler: timesteps sigma * 1000 = 1000, 937.5, 833.333, 625.
  auto euler = Make("euler");
  ASSERT_NE(euler, nullptr);
  ASSERT_TRUE(euler->SetTimesteps(4, 5.0, {1000, 750, 500, 250}).ok());
  EXPECT_EQ(euler->num_steps(), 4);
  ExpectSchedule(*euler, {1.0, 0.9375, 2.5 / 3.0, 0.625, 0.0}, {1000.0, 937.5, 2500.0 / 3.0, 625.0},
                 1e-7, 1e-4);
  // UniPC: the same sigmas but the first lowered by 1e-6 (alpha = 0 has no
  // log-SNR); timesteps truncated to integers as its own schedule does.
  auto unipc = Make("unipc");
  ASSERT_NE(unipc, nullptr);
  ASSERT_TRUE(unipc->SetTimesteps(4, 5.0, {1000, 750, 500, 250}).ok());
  ExpectSchedule(*unipc, {1.0 - 1e-6, 0.9375, 2.5 / 3.0, 0.625, 0.0}, {999, 937, 833, 625}, 1e-7,
                 0.0);
}

TEST(ExplicitSchedule, ShiftOneKeepsTheTimestepsAndEulerStepsBetweenThem) {
  // f_1 is the identity: sigmas 0.9, 0.6, 0.2, 0; one Euler step from 0.9
  // to 0.6 is x + (0.6 - 0.9) v = {1 - 0.3 * 0.25, -0.5 - 0.3 * 2}
  // (kX0 = {1, -0.5}, kV0 = {0.25, 2}).
  auto s = Make("euler");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->SetTimesteps(3, 1.0, {900, 600, 200}).ok());
  ExpectSchedule(*s, {0.9, 0.6, 0.2, 0.0}, {900.0, 600.0, 200.0}, 1e-7, 1e-4);
  ExpectNear(s->Step(Latent(kV0), 0, Latent(kX0)), {1.0 - 0.3 * 0.25, -0.5 - 0.3 * 2.0}, 1e-6);
}

TEST(ExplicitSchedule, BadListsNameTheEntryAndKeepTheSchedule) {
  for (const char* kind : {"unipc", "euler"}) {
    auto s = MakeWithSteps(kind, 4, 3.0);
    ASSERT_NE(s, nullptr);
    const std::vector<float> sigmas = s->sigmas();
    struct Bad {
      std::vector<double> timesteps;
      const char* field;
    };
    for (const Bad& bad : {Bad{{1000, 750, 750}, "timesteps[2]"},
                           Bad{{500, 750}, "timesteps[1]"},
                           Bad{{1001, 500}, "timesteps[0]"},
                           Bad{{1000, 0}, "timesteps[1]"},
                           Bad{{1000, -5}, "timesteps[1]"},
                           Bad{{kNaN}, "timesteps[0]"},
                           Bad{{1000, 500, kInf}, "timesteps[2]"}}) {
      const Status st = s->SetTimesteps(static_cast<int>(bad.timesteps.size()), 3.0,
                                        bad.timesteps);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << kind << " " << bad.field;
      EXPECT_NE(st.message().find(bad.field), std::string::npos) << st.message();
      EXPECT_EQ(s->sigmas(), sigmas) << kind;
    }
    // The count must be the step count.
    const Status st = s->SetTimesteps(3, 3.0, {1000, 500});
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("timesteps"), std::string::npos) << st.message();
  }
}

// ---------------------------------------------------------------------------
// Config.

// kWan21SchedulerJson with each `from` replaced by its `to`.
std::string Edit(const std::vector<std::pair<std::string, std::string>>& edits) {
  std::string json = kWan21SchedulerJson;
  for (const auto& [from, to] : edits) {
    const size_t at = json.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) json.replace(at, from.size(), to);
  }
  return json;
}
std::string Edit(const std::string& from, const std::string& to) { return Edit({{from, to}}); }

TEST(ParseSchedulerConfig, PublishedWan21ConfigParses) {
  auto c = ParseSchedulerConfig(kWan21SchedulerJson, "scheduler/scheduler_config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_train_timesteps, 1000);
  EXPECT_EQ(c->flow_shift, 3.0);
  EXPECT_EQ(c->solver_order, 2);
  EXPECT_TRUE(c->lower_order_final);
  EXPECT_EQ(c->final_sigmas_type, FinalSigmasType::kZero);
  EXPECT_EQ(c->solver_type, UniPCSolverType::kBh2);
  EXPECT_EQ(c->prediction_type, "flow_prediction");
  EXPECT_TRUE(c->use_flow_sigmas);
  EXPECT_TRUE(c->predict_x0);
  EXPECT_TRUE(c->disable_corrector.empty());
  EXPECT_TRUE(MakeScheduler("unipc", *c).ok());

  auto hd = ParseSchedulerConfig(Edit("\"flow_shift\": 3.0", "\"flow_shift\": 5"), "720p.json");
  ASSERT_TRUE(hd.ok()) << hd.status().ToString();
  EXPECT_EQ(hd->flow_shift, 5.0);
}

TEST(ParseSchedulerConfig, OtherSupportedValues) {
  auto c =
      ParseSchedulerConfig(Edit({{"\"bh2\"", "\"bh1\""},
                                 {"\"zero\"", "\"sigma_min\""},
                                 {"\"solver_order\": 2", "\"solver_order\": 3"},
                                 {"\"disable_corrector\": []", "\"disable_corrector\": [0, 2]"},
                                 {"\"steps_offset\": 0", "\"some_new_key\": {\"a\": [1]}"}}),
                           "s.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->solver_type, UniPCSolverType::kBh1);
  EXPECT_EQ(c->final_sigmas_type, FinalSigmasType::kSigmaMin);
  EXPECT_EQ(c->solver_order, 3);
  EXPECT_EQ(c->disable_corrector, (std::vector<int>{0, 2}));

  // diffusers maps DPM-Solver solver names to bh2.
  auto mid = ParseSchedulerConfig(Edit("\"bh2\"", "\"midpoint\""), "s.json");
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(mid->solver_type, UniPCSolverType::kBh2);

  // Absent flow_shift: diffusers' default 1.0.
  auto no_shift = ParseSchedulerConfig(Edit("\"flow_shift\": 3.0,", ""), "s.json");
  ASSERT_TRUE(no_shift.ok());
  EXPECT_EQ(no_shift->flow_shift, 1.0);

  auto euler = ParseSchedulerConfig(
      R"({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 5.0,
          "use_dynamic_shifting": false, "base_shift": 0.5})",
      "euler.json");
  ASSERT_TRUE(euler.ok()) << euler.status().ToString();
  EXPECT_EQ(euler->flow_shift, 5.0);
  EXPECT_TRUE(MakeScheduler("euler", *euler).ok());
}

void ExpectInvalid(const std::string& json, const std::string& key) {
  auto c = ParseSchedulerConfig(json, "wan/scheduler_config.json");
  ASSERT_FALSE(c.ok()) << "accepted: " << json;
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find(key), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("wan/scheduler_config.json"), std::string::npos)
      << c.status().message();
}

TEST(ParseSchedulerConfig, BadTypesNameTheKeyAndFile) {
  ExpectInvalid(Edit("\"solver_order\": 2", "\"solver_order\": \"2\""), "solver_order");
  ExpectInvalid(Edit("\"solver_order\": 2", "\"solver_order\": 2.5"), "solver_order");
  ExpectInvalid(Edit("\"solver_order\": 2", "\"solver_order\": 4"), "solver_order");
  ExpectInvalid(Edit("\"flow_shift\": 3.0", "\"flow_shift\": \"3\""), "flow_shift");
  ExpectInvalid(Edit("\"flow_shift\": 3.0", "\"flow_shift\": -3.0"), "flow_shift");
  ExpectInvalid(Edit("\"flow_shift\": 3.0", "\"flow_shift\": null"), "flow_shift");
  ExpectInvalid(Edit("\"num_train_timesteps\": 1000", "\"num_train_timesteps\": 0"),
                "num_train_timesteps");
  ExpectInvalid(Edit("\"lower_order_final\": true", "\"lower_order_final\": 1"),
                "lower_order_final");
  ExpectInvalid(Edit("\"final_sigmas_type\": \"zero\"", "\"final_sigmas_type\": \"one\""),
                "final_sigmas_type");
  ExpectInvalid(Edit("\"solver_type\": \"bh2\"", "\"solver_type\": \"bh3\""), "solver_type");
  ExpectInvalid(Edit("\"disable_corrector\": []", "\"disable_corrector\": [-1]"),
                "disable_corrector");
  ExpectInvalid(Edit("\"disable_corrector\": []", "\"disable_corrector\": 0"), "disable_corrector");
  ExpectInvalid(Edit("\"use_flow_sigmas\": true", "\"use_flow_sigmas\": \"yes\""),
                "use_flow_sigmas");
}

TEST(ParseSchedulerConfig, UnsupportedValuesAreRejected) {
  ExpectInvalid(Edit("\"flow_prediction\"", "\"epsilon\""), "prediction_type");
  ExpectInvalid(Edit("\"prediction_type\": \"flow_prediction\",", ""),
                "prediction_type");  // default epsilon
  ExpectInvalid(Edit("\"use_flow_sigmas\": true", "\"use_flow_sigmas\": false"), "use_flow_sigmas");
  ExpectInvalid(Edit("\"predict_x0\": true", "\"predict_x0\": false"), "predict_x0");
  ExpectInvalid(Edit("\"thresholding\": false", "\"thresholding\": true"), "thresholding");
  ExpectInvalid(Edit("\"use_karras_sigmas\": false", "\"use_karras_sigmas\": true"),
                "use_karras_sigmas");
  ExpectInvalid(Edit("\"solver_p\": null", "\"solver_p\": {}"), "solver_p");
  ExpectInvalid(Edit("\"timestep_spacing\": \"linspace\"", "\"timestep_spacing\": \"cosine\""),
                "timestep_spacing");
  ExpectInvalid(Edit("\"steps_offset\": 0", "\"use_dynamic_shifting\": true"),
                "use_dynamic_shifting");
  ExpectInvalid(Edit("\"lower_order_final\": true", "\"lower_order_final\": false"),
                "lower_order_final");
  ExpectInvalid(Edit("UniPCMultistepScheduler", "DDIMScheduler"), "_class_name");
  ExpectInvalid(
      R"({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "invert_sigmas": true})",
      "invert_sigmas");
  ExpectInvalid(
      R"({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "shift_terminal": 0.1})",
      "shift_terminal");
  ExpectInvalid("{\"solver_order\": 2", "bad JSON");
  ExpectInvalid("[1, 2]", "object");
}

TEST(MakeScheduler, KnownKindsAndErrors) {
  auto unipc = MakeScheduler("unipc", SchedulerConfig{});
  auto euler = MakeScheduler("euler", SchedulerConfig{});
  ASSERT_TRUE(unipc.ok());
  ASSERT_TRUE(euler.ok());
  EXPECT_STREQ((*unipc)->kind(), "unipc");
  EXPECT_STREQ((*euler)->kind(), "euler");
  EXPECT_EQ((*unipc)->num_steps(), 0);

  auto unknown = MakeScheduler("ddim", SchedulerConfig{});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);

  SchedulerConfig bad;
  bad.prediction_type = "epsilon";
  EXPECT_EQ(MakeScheduler("unipc", bad).status().code(), StatusCode::kInvalidArgument);
  bad = SchedulerConfig{};
  bad.flow_shift = kNaN;
  EXPECT_EQ(MakeScheduler("euler", bad).status().code(), StatusCode::kInvalidArgument);
  bad = SchedulerConfig{};
  bad.solver_order = 0;
  EXPECT_EQ(MakeScheduler("unipc", bad).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rainserve
