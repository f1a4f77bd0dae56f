// Compares RainServe's Wan components with the reference outputs that
// bench/parity/wan_reference.py writes from diffusers + transformers.
//
//   wan_parity --reference DIR --model MODEL_DIR [--json OUT.json]
//
// DIR holds wan_reference.json (settings and prompts), wan_reference.safetensors
// (inputs and float32 reference outputs) and, optionally,
// wan_reference_f64.safetensors (the same components run in float64).
// MODEL_DIR is the diffusers folder the reference ran (models/wan-tiny).
// Every component runs here on the CPU in fp32 on the reference's inputs:
//
//   tokenizer          ids and mask of every prompt, one of them with
//                      special-token text (exact)
//   umt5               prompt embeddings from the reference ids
//   transformer        one forward, our dense kernel and LibTorch attention
//   vae.decode/encode  decode the reference latents, encode its video
//   scheduler          sigmas and timesteps of every schedule; whole step
//                      sequences on the reference's model outputs
//   pipeline           the seed's noise; whole generations, dense attention
//                      (frames and the final latents)
//
// Error measures: rel = max |ours - ref| / max |ref| (components and the
// pipeline's latents, judged at 1e-5); frames in [0, 1]: max |ours / 255 -
// ref| (judged at 1/255); ids, sigmas and timesteps: exact. With the float64 file each row also gives ours and the
// float32 reference against float64 (round-off vs real differences). Prints
// the rows as JSON (and writes them to --json); exits 1 when a judged row
// fails or a component cannot run.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attention/engine.h"
#include "common/files.h"
#include "pipelines/core/pipeline.h"
#include "pipelines/core/safetensors.h"
#include "pipelines/core/schedulers.h"
#include "pipelines/text/tokenizer.h"
#include "pipelines/text/clip_vision.h"
#include "pipelines/text/umt5.h"
#include "pipelines/wan/wan_pipeline.h"
#include "pipelines/wan/wan_transformer.h"
#include "pipelines/wan/wan_vae.h"

namespace rainserve {
namespace {

using nlohmann::json;

constexpr double kRelTol = 1e-5;
constexpr double kFrameTol = 1.0 / 255.0;

// max |a - b| and max |b| over equal-sized tensors, in float64.
struct Diff {
  double max_abs = 0.0;
  double scale = 0.0;
  double rel() const { return scale > 0.0 ? max_abs / scale : max_abs; }
};

Diff Measure(const at::Tensor& ours, const at::Tensor& ref) {
  const at::Tensor a = ours.to(at::kCPU, at::kDouble).reshape({-1});
  const at::Tensor b = ref.to(at::kCPU, at::kDouble).reshape({-1});
  return {(a - b).abs().max().item<double>(), b.abs().max().item<double>()};
}

struct Row {
  Row(std::string name_in, std::string measure_in, double error_in, double tolerance_in,
      bool judged_in = true)
      : name(std::move(name_in)), measure(std::move(measure_in)), error(error_in),
        tolerance(tolerance_in), judged(judged_in) {}

  std::string name;
  std::string measure;  // "rel", "abs" or "mismatches"
  double error = 0.0;   // the judged number
  double max_abs = 0.0;
  double ref_scale = 0.0;
  double tolerance = 0.0;
  bool judged = true;
  std::optional<double> ours_vs_f64, ref_vs_f64;  // rel against the float64 run
  std::string note;

  bool ok() const { return !judged || error <= tolerance; }
  json ToJson() const {
    json j = {{"component", name}, {"measure", measure}, {"error", error},
              {"max_abs", max_abs}, {"ref_scale", ref_scale}, {"tolerance", tolerance},
              {"judged", judged}, {"ok", ok()}};
    if (ours_vs_f64) j["ours_vs_f64_rel"] = *ours_vs_f64;
    if (ref_vs_f64) j["ref_f32_vs_f64_rel"] = *ref_vs_f64;
    if (!note.empty()) j["note"] = note;
    return j;
  }
};

// The reference files of one run of wan_reference.py.
class Reference {
 public:
  static StatusOr<Reference> Open(const std::string& dir) {
    Reference r;
    std::string text;
    RAINSERVE_RETURN_IF_ERROR(ReadFile(dir + "/wan_reference.json", &text));
    r.info_ = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (r.info_.is_discarded()) return InvalidArgumentError(dir + "/wan_reference.json: bad JSON");
    RAINSERVE_ASSIGN_OR_RETURN(r.f32_, SafetensorsFile::Open(dir + "/wan_reference.safetensors"));
    auto f64 = SafetensorsFile::Open(dir + "/wan_reference_f64.safetensors");
    if (f64.ok()) r.f64_ = *f64;
    return r;
  }

  StatusOr<at::Tensor> Get(const std::string& name) const { return f32_->Get(name); }
  bool Has(const std::string& name) const { return f32_->entries().count(name) > 0; }
  // The float64 run of `name`, or an undefined tensor.
  at::Tensor Get64(const std::string& name) const {
    if (f64_ == nullptr || f64_->entries().count(name) == 0) return at::Tensor();
    auto t = f64_->Get(name);
    return t.ok() ? *t : at::Tensor();
  }
  // components.<component> of the JSON (settings the reference used).
  json Settings(const std::string& component) const {
    const json* c = info_.contains("components") ? &info_.at("components") : nullptr;
    return c != nullptr && c->contains(component) ? c->at(component) : json::object();
  }
  const json& info() const { return info_; }

 private:
  json info_;
  std::shared_ptr<SafetensorsFile> f32_, f64_;
};

class Parity {
 public:
  Parity(Reference ref, std::string model_dir)
      : ref_(std::move(ref)), model_(std::move(model_dir)), engine_(0) {}

  // Runs every component the reference recorded (or tried to); a component
  // that cannot run is recorded as failed.
  void RunAll() {
    Try("tokenizer", [&] { return Tokenizer(); });
    Try("umt5", [&] { return Umt5(); });
    Try("transformer", [&] { return Transformer("transformer"); });
    Try("transformer_2", [&] { return Transformer("transformer_2"); });
    Try("vae", [&] { return Vae(); });
    Try("image_encoder", [&] { return ImageEncoder(); });
    Try("scheduler", [&] { return Schedules(); }, "scheduler");
    Try("scheduler.sequences", [&] { return Sequences(); }, "scheduler");
    Try("pipeline", [&] { return Pipelines(); });
  }

  json Report() const {
    json rows = json::array();
    // A component the reference itself could not run fails the comparison too.
    const json ref_errors = ref_.info().value("errors", json::object());
    bool ok = failures_.empty() && ref_errors.empty();
    for (const Row& r : rows_) {
      rows.push_back(r.ToJson());
      ok = ok && r.ok();
    }
    return {{"ok", ok}, {"reference", ref_.info().value("reference", json::object())},
            {"rows", rows}, {"failures", failures_}, {"reference_errors", ref_errors}};
  }

 private:
  bool Recorded(const std::string& component) const {
    for (const char* key : {"components", "errors"}) {
      if (ref_.info().contains(key) && ref_.info().at(key).contains(component)) return true;
    }
    return false;
  }

  template <typename Fn>
  void Try(const std::string& name, Fn fn, const std::string& component = "") {
    if (!Recorded(component.empty() ? name : component)) return;
    const std::string& key = name;
    Status s;
    try {
      s = fn();
    } catch (const std::exception& e) {
      s = InternalError(e.what());
    }
    if (!s.ok()) failures_[key] = s.ToString();
  }

  // A row for ours against the reference tensor `ref_name` (rel measure).
  Status AddRow(const std::string& name, const at::Tensor& ours, const std::string& ref_name,
                double tolerance = kRelTol, bool judged = true) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor ref, ref_.Get(ref_name));
    if (ours.numel() != ref.numel()) {
      return InvalidArgumentError(name + ": " + std::to_string(ours.numel()) + " values, the " +
                                  "reference has " + std::to_string(ref.numel()));
    }
    const Diff d = Measure(ours, ref);
    Row r(name, "rel", d.rel(), tolerance, judged);
    r.max_abs = d.max_abs;
    r.ref_scale = d.scale;
    const at::Tensor ref64 = ref_.Get64(ref_name);
    if (ref64.defined()) {
      r.ours_vs_f64 = Measure(ours, ref64).rel();
      r.ref_vs_f64 = Measure(ref, ref64).rel();
    }
    rows_.push_back(r);
    return OkStatus();
  }

  Status Tokenizer();
  Status Umt5();
  Status Transformer(const std::string& folder);
  Status Vae();
  Status ImageEncoder();
  Status Schedules();
  Status Sequences();
  Status Pipelines();
  StatusOr<at::Tensor> RunSequence(const json& seq);
  Status PipelineRun(Pipeline& pipeline, const json& settings, const json& run);

  Reference ref_;
  std::string model_;
  attention::AttentionEngine engine_;
  std::vector<Row> rows_;
  std::map<std::string, std::string> failures_;
};

// Positions where our ids or mask differ from the reference's [B, L].
StatusOr<int64_t> Mismatches(const UMT5Tokenizer& tok, const std::vector<std::string>& prompts,
                             const at::Tensor& ids, const at::Tensor& mask) {
  if (ids.dim() != 2 || ids.size(0) != static_cast<int64_t>(prompts.size())) {
    return InvalidArgumentError("tokenizer ids: expected one row per prompt");
  }
  const TokenizedBatch ours = tok.EncodeBatch(prompts, ids.size(1));
  return (ours.ids.ne(ids)).sum().item<int64_t>() + (ours.mask.ne(mask)).sum().item<int64_t>();
}

Status Parity::Tokenizer() {
  const json& s = ref_.Settings("tokenizer");
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<UMT5Tokenizer> tok,
                             UMT5Tokenizer::Load(model_ + "/tokenizer"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor ids, ref_.Get("tokenizer.ids"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor mask, ref_.Get("tokenizer.mask"));
  const auto prompts = s.value("prompts", std::vector<std::string>{});
  RAINSERVE_ASSIGN_OR_RETURN(int64_t bad, Mismatches(*tok, prompts, ids, mask));
  Row r("tokenizer", "mismatches", static_cast<double>(bad), 0.0);
  r.note = std::to_string(prompts.size()) + " prompts, ids and mask at max_length " +
           std::to_string(ids.size(1)) + " (" + s.value("class", "") + ")";
  rows_.push_back(r);

  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor sids, ref_.Get("tokenizer.special.ids"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor smask, ref_.Get("tokenizer.special.mask"));
  RAINSERVE_ASSIGN_OR_RETURN(int64_t sbad,
                             Mismatches(*tok, {s.value("special_prompt", "")}, sids, smask));
  Row sr("tokenizer.special_tokens", "mismatches", static_cast<double>(sbad), 0.0);
  sr.note = "prompt text with special-token strings (" + s.value("special_prompt", "") + ")";
  rows_.push_back(sr);
  return OkStatus();
}

Status Parity::Umt5() {
  // The reference ids of the encoded prompts (they are tokenizer prompts too).
  const auto all = ref_.Settings("tokenizer").value("prompts", std::vector<std::string>{});
  const auto prompts = ref_.Settings("umt5").value("prompts", std::vector<std::string>{});
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor ids, ref_.Get("tokenizer.ids"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor mask, ref_.Get("tokenizer.mask"));
  std::vector<int64_t> rows;
  for (const std::string& p : prompts) {
    const auto it = std::find(all.begin(), all.end(), p);
    if (it == all.end()) return InvalidArgumentError("umt5 prompt not among the tokenizer's");
    rows.push_back(it - all.begin());
  }
  const at::Tensor index = at::tensor(rows, at::kLong);
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<UMT5Encoder> encoder,
                             UMT5Encoder::Load(model_ + "/text_encoder", at::kFloat, at::kCPU));
  const at::Tensor m = mask.index_select(0, index);
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor hidden, encoder->Forward(ids.index_select(0, index), m));
  // Zero past each prompt's length, as the pipeline does. hidden: [B, L, d]
  return AddRow("umt5.prompt_embeds", hidden.masked_fill(m.eq(0).unsqueeze(-1), 0),
                "umt5.prompt_embeds");
}

Status Parity::Transformer(const std::string& folder) {
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<WanTransformer> model,
                             WanTransformer::Load(model_ + "/" + folder, at::kFloat, at::kCPU));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor x, ref_.Get(folder + ".hidden_states"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor t, ref_.Get(folder + ".timestep"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor text, ref_.Get("umt5.prompt_embeds"));
  WanForwardOptions options;  // dense
  options.engine = &engine_;
  if (ref_.Has(folder + ".image_embeds")) {
    RAINSERVE_ASSIGN_OR_RETURN(options.image_embeds, ref_.Get(folder + ".image_embeds"));
  }
  for (auto kernel : {attention::DenseKernel::kOurs, attention::DenseKernel::kTorch}) {
    options.attention.dense_kernel = kernel;
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor out, model->Forward(x, t, text, options));
    RAINSERVE_RETURN_IF_ERROR(AddRow(folder + (kernel == attention::DenseKernel::kTorch
                                                   ? ".torch_attention"
                                                   : ".dense_kernel"),
                                     out, folder + ".output"));
  }
  if (!ref_.Has(folder + ".frame_timesteps")) return OkStatus();
  // Per-frame timesteps (TI2V image mode) against the reference's per-token ones.
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor frame_t, ref_.Get(folder + ".frame_timesteps"));
  options.attention.dense_kernel = attention::DenseKernel::kOurs;
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor out, model->Forward(x, frame_t, text, options));
  return AddRow(folder + ".frame_timesteps", out, folder + ".expanded_output");
}

Status Parity::Vae() {
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<WanVAE> vae,
                             WanVAE::Load(model_ + "/vae", at::kFloat, at::kCPU));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor latents, ref_.Get("vae.latents"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor video, ref_.Get("vae.decoded"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor decoded, vae->Decode(latents));
  RAINSERVE_RETURN_IF_ERROR(AddRow("vae.decode", decoded, "vae.decoded"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor encoded, vae->Encode(video));
  return AddRow("vae.encode", encoded, "vae.encoded");
}

// A reference image tensor [H, W, 3] (stored as int64) as an InputImage.
StatusOr<InputImage> ImageOf(const at::Tensor& t) {
  if (t.dim() != 3 || t.size(2) != 3) return InvalidArgumentError("reference image: not [H, W, 3]");
  const at::Tensor bytes = t.to(at::kByte).contiguous();
  InputImage image;
  image.height = t.size(0);
  image.width = t.size(1);
  image.rgb.assign(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  return image;
}

// CLIP: the processor's pixel values, then hidden_states[-2].
Status Parity::ImageEncoder() {
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<ClipVisionEncoder> encoder,
                             ClipVisionEncoder::Load(model_ + "/image_encoder", at::kFloat,
                                                     at::kCPU));
  RAINSERVE_ASSIGN_OR_RETURN(ClipImageProcessor processor,
                             ClipImageProcessor::Load(model_ + "/image_processor"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor raw, ref_.Get("image_encoder.image"));
  RAINSERVE_ASSIGN_OR_RETURN(InputImage image, ImageOf(raw));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor pixels, processor.Preprocess(image));
  RAINSERVE_RETURN_IF_ERROR(
      AddRow("image_encoder.pixel_values", pixels, "image_encoder.pixel_values"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor hidden, encoder->Forward(pixels));
  return AddRow("image_encoder.hidden_states", hidden, "image_encoder.hidden_states");
}

StatusOr<SchedulerConfig> ModelSchedulerConfig(const std::string& model) {
  const std::string path = model + "/scheduler/scheduler_config.json";
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &text));
  return ParseSchedulerConfig(text, path);
}

at::Tensor FloatTensor(const std::vector<float>& v) {
  return at::tensor(at::ArrayRef<float>(v), at::kFloat);
}

Status Parity::Schedules() {
  RAINSERVE_ASSIGN_OR_RETURN(const SchedulerConfig config, ModelSchedulerConfig(model_));
  const json& list = ref_.Settings("scheduler").value("schedules", json::array());
  for (const char* kind : {"unipc", "euler"}) {
    Diff sigmas, timesteps;
    int count = 0;
    for (const json& s : list) {
      if (s.value("kind", "") != kind) continue;
      RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<FlowScheduler> ours, MakeScheduler(kind, config));
      RAINSERVE_RETURN_IF_ERROR(ours->SetTimesteps(s.value("steps", 0), s.value("shift", 0.0)));
      const std::string name = s.value("name", "");
      RAINSERVE_ASSIGN_OR_RETURN(at::Tensor ref_sigmas, ref_.Get(name + ".sigmas"));
      RAINSERVE_ASSIGN_OR_RETURN(at::Tensor ref_timesteps, ref_.Get(name + ".timesteps"));
      if (ref_sigmas.numel() != static_cast<int64_t>(ours->sigmas().size())) {
        return InvalidArgumentError(name + ": a different number of sigmas");
      }
      const Diff ds = Measure(FloatTensor(ours->sigmas()), ref_sigmas);
      const Diff dt = Measure(FloatTensor(ours->timesteps()), ref_timesteps);
      sigmas = {std::max(sigmas.max_abs, ds.max_abs), std::max(sigmas.scale, ds.scale)};
      timesteps = {std::max(timesteps.max_abs, dt.max_abs), std::max(timesteps.scale, dt.scale)};
      ++count;
    }
    if (count == 0) return InvalidArgumentError(std::string("no ") + kind + " schedules");
    for (const std::pair<const char*, Diff>& p : {std::pair<const char*, Diff>{".sigmas", sigmas},
                                                   {".timesteps", timesteps}}) {
      Row r(std::string("scheduler.") + kind + p.first, "abs", p.second.max_abs, 0.0);
      r.max_abs = p.second.max_abs;
      r.ref_scale = p.second.scale;
      r.note = std::to_string(count) + " schedules (steps x shift), exact";
      rows_.push_back(r);
    }
  }
  return OkStatus();
}

// Our samples after every step of one reference sequence: [steps, ...].
StatusOr<at::Tensor> Parity::RunSequence(const json& seq) {
  RAINSERVE_ASSIGN_OR_RETURN(SchedulerConfig config, ModelSchedulerConfig(model_));
  const std::string kind = seq.value("kind", "");
  if (kind == "unipc") config.solver_order = seq.value("solver_order", 2);
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<FlowScheduler> s, MakeScheduler(kind, config));
  const int steps = seq.value("steps", 0);
  RAINSERVE_RETURN_IF_ERROR(s->SetTimesteps(steps, seq.value("shift", 0.0)));
  const std::string name = seq.value("name", "");
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor x, ref_.Get(name + ".x0"));
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor v, ref_.Get(name + ".v"));  // [steps, ...]
  if (v.size(0) != steps) return InvalidArgumentError(name + ": one model output per step");
  std::vector<at::Tensor> samples;
  for (int i = 0; i < steps; ++i) {
    x = s->Step(v[i], i, x);
    if (!x.defined()) return InternalError(name + ": step " + std::to_string(i) + " failed");
    samples.push_back(x);
  }
  return at::stack(samples);
}

Status Parity::Sequences() {
  const json list = ref_.Settings("scheduler").value("sequences", json::array());
  if (list.empty()) return InvalidArgumentError("the reference has no step sequences");
  for (const json& seq : list) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor samples, RunSequence(seq));
    const std::string name = seq.value("name", "");
    RAINSERVE_RETURN_IF_ERROR(AddRow(name, samples, name + ".samples"));
  }
  return OkStatus();
}

// One reference generation: frames (within 1/255) and the final latents.
Status Parity::PipelineRun(Pipeline& pipeline, const json& s, const json& run) {
  GenerationRequest r = DefaultRequest(pipeline.Describe().defaults);
  r.prompt = s.value("prompt", "");
  r.negative_prompt = s.value("negative_prompt", "");
  r.seed = s.value("seed", uint64_t{0});
  r.steps = s.value("steps", 0);
  r.guidance_scale = s.value("guidance_scale", 0.0);
  if (s.contains("guidance_scale_2") && !s["guidance_scale_2"].is_null()) {
    r.guidance_scale_2 = s["guidance_scale_2"].get<double>();
  }
  r.flow_shift = s.value("flow_shift", 0.0);
  r.width = s.value("width", 0);
  r.height = s.value("height", 0);
  r.num_frames = s.value("num_frames", 0);
  r.scheduler = run.value("scheduler", "");
  r.sparse.mode = AttentionMode::kDense;
  if (run.value("image", false)) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor raw, ref_.Get("pipeline.image"));
    RAINSERVE_ASSIGN_OR_RETURN(r.image, ImageOf(raw));
  }
  const std::string name = run.value("name", "");
  CancelToken cancel;
  RAINSERVE_ASSIGN_OR_RETURN(GenerationOutput frames, pipeline.Generate(r, nullptr, cancel));
  const at::Tensor rgb = at::tensor(frames.rgb, at::kByte).to(at::kDouble);  // [F * H * W * 3]
  RAINSERVE_RETURN_IF_ERROR(AddRow(name + ".frames", rgb / 255.0, name + ".frames", kFrameTol));
  Row& row = rows_.back();
  row.measure = "abs";
  row.error = row.max_abs;
  // Our uint8 values against the reference's [0, 1] floats rounded to 8 bits.
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor ref, ref_.Get(name + ".frames"));
  const at::Tensor ref_u8 = (ref.to(at::kDouble).reshape({-1}) * 255.0).round();
  row.note = std::to_string(rgb.ne(ref_u8).sum().item<int64_t>()) + " of " +
             std::to_string(rgb.numel()) + " 8-bit values differ from round(255 * reference)";
  r.decode_frames = false;
  RAINSERVE_ASSIGN_OR_RETURN(GenerationOutput latents, pipeline.Generate(r, nullptr, cancel));
  return AddRow(name + ".latents", at::tensor(latents.latents, at::kFloat), name + ".latents");
}

Status Parity::Pipelines() {
  const json& s = ref_.Settings("pipeline");
  ModelOptions entry;
  entry.name = "parity";
  entry.path = model_;
  entry.limits.max_prompt_tokens = s.value("max_sequence_length", 512);
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Pipeline> pipeline, LoadWanPipeline(entry));

  // The initial noise: LibTorch's CPU generator against torch's.
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor noise, ref_.Get("pipeline.noise"));
  at::Generator gen = at::detail::createCPUGenerator(s.value("seed", uint64_t{0}));
  RAINSERVE_RETURN_IF_ERROR(AddRow("pipeline.noise",
                                   at::randn(noise.sizes(), gen, at::TensorOptions(at::kFloat)),
                                   "pipeline.noise"));
  const json runs = s.value("runs", json::array());
  if (runs.empty()) return InvalidArgumentError("the reference has no pipeline runs");
  for (const json& run : runs) {
    RAINSERVE_RETURN_IF_ERROR(PipelineRun(*pipeline, s, run));
  }
  return OkStatus();
}

int Usage() {
  std::fprintf(stderr, "usage: wan_parity --reference DIR --model MODEL_DIR [--json OUT.json]\n");
  return 2;
}

}  // namespace
}  // namespace rainserve

int main(int argc, char** argv) {
  using namespace rainserve;
  std::string reference, model, json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--reference") reference = argv[i + 1];
    else if (flag == "--model") model = argv[i + 1];
    else if (flag == "--json") json_path = argv[i + 1];
    else return Usage();
  }
  if (reference.empty() || model.empty() || argc % 2 == 0) return Usage();
  auto ref = Reference::Open(reference);
  if (!ref.ok()) {
    std::fprintf(stderr, "wan_parity: %s\n", ref.status().ToString().c_str());
    return 1;
  }
  Parity parity(std::move(ref).value(), model);
  parity.RunAll();
  const json report = parity.Report();
  const std::string text = report.dump(2);
  std::printf("%s\n", text.c_str());
  if (!json_path.empty()) std::ofstream(json_path) << text << "\n";
  return report.value("ok", false) ? 0 : 1;
}
