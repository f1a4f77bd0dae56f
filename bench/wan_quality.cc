// The embedded-model half of attention_quality_bench (see wan_quality.h).
#include "bench/wan_quality.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <utility>

#include "attention/config.h"
#include "attention/testing/inputs.h"
#include "bench/bench_util.h"
#include "bench/topk_match.h"
#include "pipelines/wan/wan_pipeline.h"

namespace rainserve::bench {
namespace {

using attention::AttentionMode;

// One compared setting: its request, the output the comparison reads, and
// the seconds of its timed requests.
struct ModelSetting {
  std::string impl;
  GenerationRequest request;
  GenerationOutput output;
  std::vector<double> seconds;
};

StatusOr<GenerationOutput> RunRequest(Pipeline& pipeline, const GenerationRequest& request) {
  CancelToken cancel;
  return pipeline.Generate(request, nullptr, cancel);
}

double RequestSeconds(const GenerationOutput& o) {
  return o.text_encode_seconds + o.denoise_seconds + o.decode_seconds;
}

// Every setting's request but for its attention mode: latents out, every
// step sparse (no dense warm-up), one sink frame.
GenerationRequest BaseRequest(const ModelQualityOptions& o) {
  GenerationRequest r;
  r.prompt = "a paper boat drifts down a rainy street, cinematic lighting";
  r.negative_prompt = "blurry, low quality";
  r.seed = 42;
  r.width = o.width;
  r.height = o.height;
  r.num_frames = o.frames;
  r.steps = o.steps;
  r.guidance_scale = 5.0;
  r.flow_shift = 3.0;
  r.decode_frames = false;
  r.sparse.mode = AttentionMode::kDense;
  r.sparse.sink_frames = 1;
  r.sparse.dense_warmup_steps = 0;
  r.sparse.min_kept_blocks = o.min_kept_blocks;
  r.sparse.max_kept_blocks = o.max_kept_blocks;
  return r;
}

// The block count of the request's self-attention plan: the latent frames of
// the dense output, the token grid of the model's pixels per token.
StatusOr<int64_t> PlanBlocks(Pipeline& pipeline, const GenerationRequest& r,
                             const GenerationOutput& dense) {
  const int64_t side = std::lround(std::sqrt(double(pipeline.Describe().memory.latent_token_pixels)));
  attention::TokenLayout l;
  l.frames = dense.latent_shape.at(1);
  l.height = r.height / side;
  l.width = r.width / side;
  l.sink_frames = std::min<int64_t>(r.sparse.sink_frames, l.frames);
  RAINSERVE_ASSIGN_OR_RETURN(attention::AttentionPlan plan,
                             attention::AttentionPlan::Build(l, attention::DefaultWindow(l), 128));
  return plan.num_blocks();
}

// The mass request at each kept_mass, and the top-k request matched to its
// realized sparsity (found by TopKMatcher over whole requests), after the
// dense setting in *settings.
Status AddComparedSettings(Pipeline& pipeline, const ModelQualityOptions& o, int64_t nb,
                           std::vector<ModelSetting>* settings) {
  const GenerationRequest base = settings->front().request;
  Status failure;
  std::map<double, GenerationOutput> topk_outputs;  // by requested sparsity
  auto topk_request = [&](double sparsity) {
    GenerationRequest r = base;
    r.sparse.mode = AttentionMode::kRainFusion;
    r.sparse.sparsity = sparsity;
    return r;
  };
  TopKMatcher matcher(nb, [&](double sparsity) {
    auto out = RunRequest(pipeline, topk_request(sparsity));
    if (!out.ok()) {
      failure = out.status();
      return 0.0;
    }
    const double realized = out->realized_sparsity;
    topk_outputs[sparsity] = std::move(out).value();
    return realized;
  });
  for (double kept_mass : o.kept_masses) {
    ModelSetting mass{"rainserve_mass", base, {}, {}};
    mass.request.sparse.mode = AttentionMode::kRainFusionMass;
    mass.request.sparse.kept_mass = kept_mass;
    RAINSERVE_ASSIGN_OR_RETURN(mass.output, RunRequest(pipeline, mass.request));
    if (mass.output.steps.empty() || !mass.output.steps.front().sparse) {
      return FailedPreconditionError("the mass request ran dense: " + std::to_string(nb) +
                                     " blocks; pick a larger size");
    }
    const TopKMatch match = matcher.Match(mass.output.realized_sparsity);
    RAINSERVE_RETURN_IF_ERROR(failure);
    ModelSetting topk{"rainserve_sparse", topk_request(match.sparsity),
                      topk_outputs.at(match.sparsity), {}};
    settings->push_back(std::move(mass));
    settings->push_back(std::move(topk));
  }
  std::printf("  %s: %lld top-k requests to match realized sparsity\n", o.workload.c_str(),
              static_cast<long long>(matcher.probes()));
  return OkStatus();
}

nlohmann::json SettingRow(const ModelQualityOptions& o, int64_t nb, const ModelSetting& s,
                          const GenerationOutput& dense) {
  const GenerationRequest& r = s.request;
  nlohmann::json row = {{"workload", o.workload}, {"impl", s.impl}, {"inputs", "model"},
                        {"width", r.width}, {"height", r.height}, {"frames", r.num_frames},
                        {"steps", r.steps}, {"blocks", nb}, {"dtype", o.dtype},
                        {"realized_sparsity", s.output.realized_sparsity}};
  if (r.sparse.mode == AttentionMode::kRainFusionMass) row["kept_mass"] = r.sparse.kept_mass;
  if (r.sparse.mode == AttentionMode::kRainFusion) row["sparsity"] = r.sparse.sparsity;
  if (r.sparse.mode == AttentionMode::kDense) row["sparsity"] = 0.0;
  const int64_t n = static_cast<int64_t>(dense.latents.size());
  row["cos"] = attention::testing::Cosine(s.output.latents.data(), dense.latents.data(), n);
  row["rel_l2"] = attention::testing::RelativeL2(s.output.latents.data(), dense.latents.data(), n);
  const Timing t = Summarize(s.seconds);
  row["s_per_request"] = t.median_ms;
  row["s_per_request_min"] = t.min_ms;
  row["s_per_request_max"] = t.max_ms;
  char setting[32];
  if (row.contains("kept_mass")) std::snprintf(setting, sizeof(setting), "m=%.2f", r.sparse.kept_mass);
  else std::snprintf(setting, sizeof(setting), "s=%.4f", row["sparsity"].get<double>());
  std::printf("  %-8s %-16s %-8s realized=%.4f cos=%.6f rel_l2=%.5f %.3f s/request\n",
              o.workload.c_str(), s.impl.c_str(), setting,
              s.output.realized_sparsity, row["cos"].get<double>(), row["rel_l2"].get<double>(),
              t.median_ms);
  return row;
}

}  // namespace

StatusOr<nlohmann::json> ModelQualityRows(const ModelQualityOptions& o) {
  ModelOptions entry;
  entry.name = o.workload;
  entry.path = o.model_dir;
  entry.device = o.device;
  entry.dtype = o.dtype;
  entry.threads = o.threads;
  entry.limits.max_prompt_tokens = 64;
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Pipeline> loaded, LoadWanPipeline(entry));
  Pipeline& pipeline = *loaded;

  std::vector<ModelSetting> settings(1);
  settings[0].impl = "rainserve_dense";
  settings[0].request = BaseRequest(o);
  GenerationRequest warm = settings[0].request;  // allocators, kernels, thread pools
  warm.steps = 1;
  RAINSERVE_RETURN_IF_ERROR(RunRequest(pipeline, warm).status());
  RAINSERVE_ASSIGN_OR_RETURN(settings[0].output, RunRequest(pipeline, settings[0].request));
  RAINSERVE_ASSIGN_OR_RETURN(const int64_t nb,
                             PlanBlocks(pipeline, settings[0].request, settings[0].output));
  RAINSERVE_RETURN_IF_ERROR(AddComparedSettings(pipeline, o, nb, &settings));

  // Timing: `reps` rounds, each running every setting once, in turn.
  for (int i = 0; i < o.reps; ++i) {
    for (ModelSetting& s : settings) {
      RAINSERVE_ASSIGN_OR_RETURN(GenerationOutput out, RunRequest(pipeline, s.request));
      s.seconds.push_back(RequestSeconds(out));
    }
  }
  nlohmann::json rows = nlohmann::json::array();
  for (const ModelSetting& s : settings) rows.push_back(SettingRow(o, nb, s, settings[0].output));
  for (size_t i = 1; i + 1 < rows.size(); i += 2) AddPairSummary(rows[i + 1], "s_per_request", &rows[i]);
  return rows;
}

}  // namespace rainserve::bench
