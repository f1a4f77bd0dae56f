#include "pipelines/text/clip_vision.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include <ATen/CPUGeneratorImpl.h>

#include "attention/torch_adapter.h"
#include "common/files.h"
#include "pipelines/core/json_config.h"
#include "pipelines/core/safetensors.h"

namespace rainserve {
namespace {

using config_json::KeyError;
using config_json::ReadInt;
using nlohmann::json;

constexpr char kPrefix[] = "vision_model.";
constexpr int64_t kPerLayer = 16;  // parameters per encoder layer
constexpr int64_t kMaxBatch = 1024;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Status ReadBool(const json& j, const std::string& source, const char* key, bool* out) {
  if (!j.contains(key)) return OkStatus();
  if (!j[key].is_boolean()) return KeyError(source, key, "expected true or false, got " + j[key].dump());
  *out = j[key].get<bool>();
  return OkStatus();
}

// A finite number > 0 (or >= 0 with allow_zero).
Status ReadPositive(const json& j, const std::string& source, const char* key, bool allow_zero,
                    double* out) {
  if (!j.contains(key)) return OkStatus();
  const json& v = j[key];
  const double d = v.is_number() ? v.get<double>() : -1.0;
  if (!v.is_number() || !std::isfinite(d) || d < 0 || (d == 0 && !allow_zero)) {
    return KeyError(source, key,
                    std::string("expected a finite number ") + (allow_zero ? ">= 0" : "> 0") +
                        ", got " + v.dump());
  }
  *out = d;
  return OkStatus();
}

// `v` (the value of `key`) as a size in [1, kMaxImageSide].
Status ReadSide(const json& v, const std::string& source, const std::string& key, int64_t* out) {
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxImageSide) {
    return KeyError(source, key,
                    "expected an integer in [1, " + std::to_string(kMaxImageSide) + "], got " + v.dump());
  }
  *out = v.get<int64_t>();
  return OkStatus();
}

// image_mean / image_std: three numbers or one for every channel.
Status ReadPerChannel(const json& j, const std::string& source, const char* key,
                      std::array<double, 3>* out) {
  if (!j.contains(key)) return OkStatus();
  const json& v = j[key];
  std::vector<json> items = v.is_array() ? v.get<std::vector<json>>() : std::vector<json>(3, v);
  bool ok = items.size() == 3;
  for (const json& item : items) ok = ok && item.is_number() && std::isfinite(item.get<double>());
  if (!ok) return KeyError(source, key, "expected 3 finite numbers (or one), got " + v.dump());
  for (int c = 0; c < 3; ++c) (*out)[c] = items[c].get<double>();
  return OkStatus();
}

// GELU as transformers' ACT2FN: "gelu" is the exact (erf) form, "quick_gelu"
// x * sigmoid(1.702 x).
at::Tensor Activation(const at::Tensor& x, const std::string& act) {
  if (act == "quick_gelu") return x * at::sigmoid(1.702 * x);
  return at::gelu(x);
}

}  // namespace

StatusOr<ClipVisionConfig> ParseClipVisionConfig(const std::string& json_text,
                                                 const std::string& source) {
  RAINSERVE_ASSIGN_OR_RETURN(json j, config_json::ParseObject(json_text, source));
  std::string where = source;
  if (j.contains("model_type") && j["model_type"] == "clip") {
    if (!j.contains("vision_config") || !j["vision_config"].is_object()) {
      return KeyError(source, "vision_config", "a \"clip\" config needs a vision_config object");
    }
    j = json(j["vision_config"]);
    where = source + ": vision_config";
  }
  if (j.contains("model_type") && j["model_type"] != "clip_vision_model") {
    return UnimplementedError(where + ": model_type: only \"clip_vision_model\" (or \"clip\") is "
                              "supported, got " + j["model_type"].dump());
  }
  ClipVisionConfig c;
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "hidden_size", 1, 65536, &c.hidden_size));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "intermediate_size", 1, 1 << 20, &c.intermediate_size));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "num_hidden_layers", 1, 1024, &c.num_hidden_layers));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "num_attention_heads", 1, 1024, &c.num_attention_heads));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "num_channels", 1, 16, &c.num_channels));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "image_size", 1, 4096, &c.image_size));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "patch_size", 1, 4096, &c.patch_size));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, where, "projection_dim", 1, 65536, &c.projection_dim));
  if (c.hidden_size % c.num_attention_heads != 0) {
    return KeyError(where, "num_attention_heads",
                    "must divide hidden_size " + std::to_string(c.hidden_size) + ", got " +
                        std::to_string(c.num_attention_heads));
  }
  if (c.patch_size > c.image_size) {
    return KeyError(where, "patch_size",
                    "must be at most image_size " + std::to_string(c.image_size) + ", got " +
                        std::to_string(c.patch_size));
  }
  RAINSERVE_RETURN_IF_ERROR(ReadPositive(j, where, "layer_norm_eps", false, &c.layer_norm_eps));
  RAINSERVE_RETURN_IF_ERROR(ReadPositive(j, where, "initializer_range", true, &c.initializer_range));
  RAINSERVE_RETURN_IF_ERROR(ReadPositive(j, where, "initializer_factor", true, &c.initializer_factor));
  if (j.contains("hidden_act")) {
    if (!j["hidden_act"].is_string()) {
      return KeyError(where, "hidden_act", "expected a string, got " + j["hidden_act"].dump());
    }
    c.hidden_act = j["hidden_act"].get<std::string>();
  }
  if (c.hidden_act != "gelu" && c.hidden_act != "quick_gelu") {
    return UnimplementedError(where + ": hidden_act: only \"gelu\" and \"quick_gelu\" are "
                              "supported, got \"" + c.hidden_act + "\"");
  }
  return c;
}

std::string ClipVisionConfigJson(const ClipVisionConfig& c) {
  json j = {{"architectures", {"CLIPVisionModel"}},
            {"model_type", "clip_vision_model"},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_channels", c.num_channels},
            {"image_size", c.image_size},
            {"patch_size", c.patch_size},
            {"hidden_act", c.hidden_act},
            {"layer_norm_eps", c.layer_norm_eps},
            {"projection_dim", c.projection_dim},
            {"initializer_range", c.initializer_range},
            {"initializer_factor", c.initializer_factor},
            {"attention_dropout", 0.0},
            {"dropout", 0.0}};
  return j.dump(2);
}

ClipVisionEncoder::ClipVisionEncoder(ClipVisionConfig config, at::ScalarType dtype, at::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device) {}

std::vector<std::pair<std::string, std::vector<int64_t>>> ClipVisionEncoder::ExpectedParameters(
    const ClipVisionConfig& c) {
  const int64_t d = c.hidden_size, ff = c.intermediate_size;
  const std::string e = std::string(kPrefix) + "embeddings.";
  std::vector<std::pair<std::string, std::vector<int64_t>>> p = {
      {e + "class_embedding", {d}},
      {e + "patch_embedding.weight", {d, c.num_channels, c.patch_size, c.patch_size}},
      {e + "position_embedding.weight", {c.num_positions(), d}},
      {std::string(kPrefix) + "pre_layrnorm.weight", {d}},
      {std::string(kPrefix) + "pre_layrnorm.bias", {d}},
  };
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string l = std::string(kPrefix) + "encoder.layers." + std::to_string(i) + ".";
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      p.push_back({l + "self_attn." + proj + ".weight", {d, d}});
      p.push_back({l + "self_attn." + proj + ".bias", {d}});
    }
    p.push_back({l + "layer_norm1.weight", {d}});
    p.push_back({l + "layer_norm1.bias", {d}});
    p.push_back({l + "mlp.fc1.weight", {ff, d}});
    p.push_back({l + "mlp.fc1.bias", {ff}});
    p.push_back({l + "mlp.fc2.weight", {d, ff}});
    p.push_back({l + "mlp.fc2.bias", {d}});
    p.push_back({l + "layer_norm2.weight", {d}});
    p.push_back({l + "layer_norm2.bias", {d}});
  }
  p.push_back({std::string(kPrefix) + "post_layernorm.weight", {d}});
  p.push_back({std::string(kPrefix) + "post_layernorm.bias", {d}});
  return p;
}

void ClipVisionEncoder::BindWeights() {
  auto P = [&](int64_t i) { return params_[i].second; };
  class_embedding_ = P(0);
  patch_embedding_ = P(1);
  position_embedding_ = P(2);
  pre_ln_w_ = P(3);
  pre_ln_b_ = P(4);
  layers_.clear();
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    const int64_t b = 5 + i * kPerLayer;
    layers_.push_back({P(b + 0), P(b + 1), P(b + 2), P(b + 3), P(b + 4), P(b + 5), P(b + 6),
                       P(b + 7), P(b + 8), P(b + 9), P(b + 10), P(b + 11), P(b + 12), P(b + 13),
                       P(b + 14), P(b + 15)});
  }
}

std::unique_ptr<ClipVisionEncoder> ClipVisionEncoder::Random(const ClipVisionConfig& c,
                                                             at::ScalarType dtype,
                                                             at::Device device, uint64_t seed) {
  std::unique_ptr<ClipVisionEncoder> model(new ClipVisionEncoder(c, dtype, device));
  // A private generator: no global state touched, the same weights on every device.
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const double f = c.initializer_factor;
  const double d = static_cast<double>(c.hidden_size);
  const double depth = std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
  for (const auto& [name, shape] : ExpectedParameters(c)) {
    // transformers' _init_weights: std per tensor.
    double mean = 0.0, std_dev = 0.02;  // biases and LayerNorm biases (ours, see the header)
    if (EndsWith(name, "class_embedding")) {
      std_dev = f / std::sqrt(d);
    } else if (EndsWith(name, "patch_embedding.weight") || EndsWith(name, "position_embedding.weight")) {
      std_dev = c.initializer_range * f;
    } else if (EndsWith(name, "norm.weight") || EndsWith(name, "norm1.weight") ||
               EndsWith(name, "norm2.weight")) {
      mean = 1.0;  // LayerNorm weights (ours, see the header)
    } else if (EndsWith(name, "out_proj.weight")) {
      std_dev = f / std::sqrt(d);
    } else if (EndsWith(name, "_proj.weight") || EndsWith(name, "fc2.weight")) {
      std_dev = f / std::sqrt(d) / depth;
    } else if (EndsWith(name, "fc1.weight")) {
      std_dev = f / std::sqrt(2.0 * d);
    }
    at::Tensor t = at::empty(shape, at::kFloat).normal_(mean, std_dev, gen);
    model->params_.push_back({name, t.to(device, dtype)});
  }
  model->BindWeights();
  return model;
}

StatusOr<std::unique_ptr<ClipVisionEncoder>> ClipVisionEncoder::Load(const std::string& dir,
                                                                     at::ScalarType dtype,
                                                                     at::Device device) {
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(dir + "/config.json", &text));
  RAINSERVE_ASSIGN_OR_RETURN(ClipVisionConfig config, ParseClipVisionConfig(text, dir + "/config.json"));
  RAINSERVE_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(dir, "model"));
  const auto expected = ExpectedParameters(config);
  // transformers 5 saves a CLIPVisionModel without the vision_model. prefix.
  std::map<std::string, std::string> unprefixed;
  for (const auto& [name, shape] : expected) unprefixed[name] = name.substr(std::strlen(kPrefix));
  // What CLIPVisionModelWithProjection / CLIPModel checkpoints add, unused here.
  static const std::set<std::string> kUnused = {"visual_projection.weight", "text_projection.weight",
                                                "logit_scale", "vision_model.embeddings.position_ids",
                                                "embeddings.position_ids"};
  auto unused = [](const std::string& name) {
    return kUnused.count(name) != 0 || name.rfind("text_model.", 0) == 0;
  };
  RAINSERVE_ASSIGN_OR_RETURN(const std::vector<std::string> source_names,
                             MatchCheckpoint(ckpt, dir, expected, unprefixed, unused));
  std::unique_ptr<ClipVisionEncoder> model(new ClipVisionEncoder(config, dtype, device));
  for (size_t i = 0; i < expected.size(); ++i) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor t, ckpt.Get(source_names[i], dtype, device));
    model->params_.push_back({expected[i].first, t});
  }
  model->BindWeights();
  return model;
}

Status ClipVisionEncoder::Save(const std::string& dir, int64_t max_shard_bytes) const {
  return WriteModelFolder(dir, ClipVisionConfigJson(config_), "model", params_, max_shard_bytes);
}

StatusOr<at::Tensor> ClipVisionEncoder::Forward(const at::Tensor& pixel_values) const {
  return HiddenState(pixel_values, config_.num_hidden_layers - 1);
}

StatusOr<at::Tensor> ClipVisionEncoder::HiddenState(const at::Tensor& pixel_values, int64_t index) const {
  const ClipVisionConfig& c = config_;
  const std::vector<int64_t> want = {c.num_channels, c.image_size, c.image_size};
  if (!pixel_values.defined() || pixel_values.dim() != 4 ||
      !at::isFloatingType(pixel_values.scalar_type()) || pixel_values.size(0) < 1 ||
      pixel_values.size(0) > kMaxBatch || pixel_values.sizes().slice(1).vec() != want) {
    return InvalidArgumentError(
        "pixel_values must be a floating [B, " + std::to_string(c.num_channels) + ", " +
        std::to_string(c.image_size) + ", " + std::to_string(c.image_size) + "] tensor with B in [1, " +
        std::to_string(kMaxBatch) + "], got " +
        (pixel_values.defined() ? ShapeText(pixel_values.sizes().vec()) : std::string("none")));
  }
  if (index < 0 || index > c.num_hidden_layers) {
    return InvalidArgumentError("index must be in [0, " + std::to_string(c.num_hidden_layers) +
                                "], got " + std::to_string(index));
  }
  return Run(pixel_values, index);
}

at::Tensor ClipVisionEncoder::Run(const at::Tensor& pixel_values, int64_t layers) const {
  const int64_t B = pixel_values.size(0), D = config_.hidden_size;
  // pixels: [B, C, S, S] -> patches [B, D, g, g] -> [B, g * g, D].
  const at::Tensor pixels = pixel_values.to(device_, dtype_);
  const at::Tensor patches =
      at::conv2d(pixels, patch_embedding_, {}, config_.patch_size).flatten(2).transpose(1, 2);
  // x: [B, N, D], the class token first.
  at::Tensor x = at::cat({class_embedding_.view({1, 1, D}).expand({B, 1, D}), patches}, 1) +
                 position_embedding_.unsqueeze(0);
  x = at::layer_norm(x, {D}, pre_ln_w_, pre_ln_b_, config_.layer_norm_eps);
  for (int64_t i = 0; i < layers; ++i) x = LayerForward(x, layers_[i]);
  return x;
}

at::Tensor ClipVisionEncoder::LayerForward(const at::Tensor& x, const LayerWeights& w) const {
  const int64_t B = x.size(0), N = x.size(1), D = config_.hidden_size;
  const int64_t H = config_.num_attention_heads, K = config_.head_dim();
  const double eps = config_.layer_norm_eps;
  auto heads = [&](const at::Tensor& t) { return t.view({B, N, H, K}); };

  // 1. Self-attention. q, k, v: [B, N, H, K]; dense, scale 1 / sqrt(K), no mask.
  at::Tensor h = at::layer_norm(x, {D}, w.ln1_w, w.ln1_b, eps);
  const at::Tensor q = heads(at::linear(h, w.q_w, w.q_b));
  const at::Tensor k = heads(at::linear(h, w.k_w, w.k_b));
  const at::Tensor v = heads(at::linear(h, w.v_w, w.v_b));
  const at::Tensor context = attention::DenseTorchAttention(q, k, v).reshape({B, N, D});
  const at::Tensor y = x + at::linear(context, w.out_w, w.out_b);

  // 2. MLP: fc2(act(fc1(h))).
  h = at::layer_norm(y, {D}, w.ln2_w, w.ln2_b, eps);
  h = Activation(at::linear(h, w.fc1_w, w.fc1_b), config_.hidden_act);
  return y + at::linear(h, w.fc2_w, w.fc2_b);
}

// ---------------------------------------------------------------------------
// CLIPImageProcessor

namespace {

// size / crop_size: a bare integer n or an object. `shortest` permits
// {"shortest_edge": n} (a bare n meaning it); otherwise a bare n is n x n.
Status ReadSizeKey(const json& j, const std::string& source, const char* key, bool shortest,
                   int64_t* shortest_edge, int64_t* height, int64_t* width) {
  if (!j.contains(key)) return OkStatus();
  const json& v = j[key];
  const std::string k = key;
  if (v.is_number_integer()) {
    if (shortest) {
      *height = *width = 0;
      return ReadSide(v, source, k, shortest_edge);
    }
    RAINSERVE_RETURN_IF_ERROR(ReadSide(v, source, k, height));
    *width = *height;
    return OkStatus();
  }
  const bool has_edge = v.is_object() && v.contains("shortest_edge");
  const bool has_hw = v.is_object() && v.contains("height") && v.contains("width");
  if (!v.is_object() || v.size() != (has_edge ? 1u : 2u) || (has_edge == has_hw) ||
      (has_edge && !shortest)) {
    return KeyError(source, key,
                    std::string("expected ") + (shortest ? "{\"shortest_edge\": n}, " : "") +
                        "{\"height\": h, \"width\": w} or an integer, got " + v.dump());
  }
  if (has_edge) {
    *height = *width = 0;
    return ReadSide(v["shortest_edge"], source, k + ".shortest_edge", shortest_edge);
  }
  if (shortest) *shortest_edge = 0;
  RAINSERVE_RETURN_IF_ERROR(ReadSide(v["height"], source, k + ".height", height));
  return ReadSide(v["width"], source, k + ".width", width);
}

}  // namespace

StatusOr<ClipImageProcessorConfig> ParseClipImageProcessorConfig(const std::string& json_text,
                                                                 const std::string& source) {
  RAINSERVE_ASSIGN_OR_RETURN(json j, config_json::ParseObject(json_text, source));
  ClipImageProcessorConfig c;
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, source, "do_resize", &c.do_resize));
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, source, "do_center_crop", &c.do_center_crop));
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, source, "do_rescale", &c.do_rescale));
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, source, "do_normalize", &c.do_normalize));
  RAINSERVE_RETURN_IF_ERROR(ReadBool(j, source, "do_convert_rgb", &c.do_convert_rgb));
  RAINSERVE_RETURN_IF_ERROR(ReadSizeKey(j, source, "size", true, &c.shortest_edge, &c.resize_height,
                                        &c.resize_width));
  int64_t unused_edge = 0;
  RAINSERVE_RETURN_IF_ERROR(ReadSizeKey(j, source, "crop_size", false, &unused_edge, &c.crop_height,
                                        &c.crop_width));
  if (j.contains("resample")) {
    if (!j["resample"].is_number_integer()) {
      return KeyError(source, "resample", "expected a Pillow filter number, got " + j["resample"].dump());
    }
    RAINSERVE_ASSIGN_OR_RETURN(c.resample, ResampleFilterFromPillow(j["resample"].get<int64_t>(),
                                                                    (source + ": resample").c_str()));
  }
  RAINSERVE_RETURN_IF_ERROR(ReadPositive(j, source, "rescale_factor", false, &c.rescale_factor));
  RAINSERVE_RETURN_IF_ERROR(ReadPerChannel(j, source, "image_mean", &c.image_mean));
  RAINSERVE_RETURN_IF_ERROR(ReadPerChannel(j, source, "image_std", &c.image_std));
  for (double s : c.image_std) {
    if (!(s > 0)) return KeyError(source, "image_std", "every value must be > 0, got " + j["image_std"].dump());
  }
  return c;
}

std::string ClipImageProcessorConfigJson(const ClipImageProcessorConfig& c) {
  const json size = c.shortest_edge > 0 ? json{{"shortest_edge", c.shortest_edge}}
                                        : json{{"height", c.resize_height}, {"width", c.resize_width}};
  json j = {{"image_processor_type", "CLIPImageProcessor"},
            {"do_resize", c.do_resize},
            {"size", size},
            {"resample", static_cast<int>(c.resample)},
            {"do_center_crop", c.do_center_crop},
            {"crop_size", {{"height", c.crop_height}, {"width", c.crop_width}}},
            {"do_rescale", c.do_rescale},
            {"rescale_factor", c.rescale_factor},
            {"do_normalize", c.do_normalize},
            {"image_mean", c.image_mean},
            {"image_std", c.image_std},
            {"do_convert_rgb", c.do_convert_rgb}};
  return j.dump(2);
}

ImageSize ShortestEdgeSize(int64_t width, int64_t height, int64_t shortest_edge) {
  const int64_t short_side = std::min(width, height), long_side = std::max(width, height);
  // Python: int(size * long / short), a correctly rounded float quotient truncated.
  const int64_t new_long = static_cast<int64_t>(static_cast<double>(shortest_edge * long_side) /
                                                static_cast<double>(short_side));
  if (width <= height) return {shortest_edge, new_long};
  return {new_long, shortest_edge};
}

namespace {

// transformers' torchvision processors: pil_torch_interpolation_mapping, with
// LANCZOS replaced by bicubic (TorchvisionBackend.resize). torch's
// interpolate has no box or hamming mode.
StatusOr<AtenInterpolation> TorchvisionMode(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kBicubic:
    case ResampleFilter::kLanczos: return AtenInterpolation::kBicubic;
    case ResampleFilter::kBilinear: return AtenInterpolation::kBilinear;
    case ResampleFilter::kBox:
    case ResampleFilter::kHamming: break;
  }
  return UnimplementedError(std::string("resample: ") + ResampleFilterName(filter) + " (" +
                            std::to_string(static_cast<int>(filter)) +
                            ") has no torchvision tensor kernel, so transformers' torchvision "
                            "CLIPImageProcessor cannot run it; use 1, 2 or 3");
}

// pixel_values [1, 3, H, W] float32 from the cropped bytes, as the torchvision
// backend computes them: x float32; with rescale and normalise, mean and std
// are float32 tensors times 1 / rescale_factor and (x - mean) / std runs in
// float32; rescale alone is x * rescale_factor in float32.
at::Tensor TorchvisionPixelValues(const InputImage& img, const ClipImageProcessorConfig& c) {
  // bytes: [1, H, W, 3] uint8 -> x: [1, 3, H, W] float32.
  const at::Tensor bytes = at::from_blob(const_cast<uint8_t*>(img.rgb.data()),
                                         {1, img.height, img.width, 3}, at::kByte);
  const at::Tensor x = bytes.permute({0, 3, 1, 2}).to(at::kFloat).contiguous();
  if (c.do_normalize) {
    // torch.tensor(list of Python floats): float32.
    at::Tensor mean = at::tensor(std::vector<float>(c.image_mean.begin(), c.image_mean.end()));
    at::Tensor std_dev = at::tensor(std::vector<float>(c.image_std.begin(), c.image_std.end()));
    if (c.do_rescale) {  // float32 tensor * Python float: the factor as float32
      mean = mean * (1.0 / c.rescale_factor);
      std_dev = std_dev * (1.0 / c.rescale_factor);
    }
    return (x - mean.view({1, 3, 1, 1})) / std_dev.view({1, 3, 1, 1});
  }
  if (c.do_rescale) return x * c.rescale_factor;
  return x;
}

// pixel_values as the PIL backend computes them: rescale in float64 then
// float32; normalise in float32 with the mean and std as float32.
at::Tensor PilPixelValues(const InputImage& img, const ClipImageProcessorConfig& c) {
  const int64_t H = img.height, W = img.width;
  std::array<float, 3> mean{}, std_dev{};
  for (int ch = 0; ch < 3; ++ch) {
    mean[ch] = static_cast<float>(c.image_mean[ch]);
    std_dev[ch] = static_cast<float>(c.image_std[ch]);
  }
  // pixel_values: [1, 3, H, W] float32, channels first.
  at::Tensor out = at::empty({1, 3, H, W}, at::kFloat);
  float* dst = out.data_ptr<float>();
  for (int64_t ch = 0; ch < 3; ++ch) {
    for (int64_t i = 0; i < H * W; ++i) {
      const uint8_t byte = img.rgb[i * 3 + ch];
      float v = c.do_rescale ? static_cast<float>(static_cast<double>(byte) * c.rescale_factor)
                             : static_cast<float>(byte);
      if (c.do_normalize) v = (v - mean[ch]) / std_dev[ch];
      dst[ch * H * W + i] = v;
    }
  }
  return out;
}

}  // namespace

StatusOr<ClipImageProcessor> ClipImageProcessor::Load(const std::string& dir, ClipImageBackend backend) {
  std::string text;
  const std::string path = dir + "/preprocessor_config.json";
  RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &text));
  RAINSERVE_ASSIGN_OR_RETURN(ClipImageProcessorConfig config, ParseClipImageProcessorConfig(text, path));
  config.backend = backend;
  if (backend == ClipImageBackend::kTorchvision) {
    const auto mode = TorchvisionMode(config.resample);
    if (!mode.ok()) return Status(mode.status().code(), path + ": " + mode.status().message());
  }
  return ClipImageProcessor(std::move(config));
}

StatusOr<InputImage> ClipImageProcessor::ResizeAndCrop(const InputImage& image) const {
  const ClipImageProcessorConfig& c = config_;
  const bool torchvision = c.backend == ClipImageBackend::kTorchvision;
  InputImage out = image;
  if (c.do_resize) {
    ImageSize size{c.resize_width, c.resize_height};
    if (c.shortest_edge > 0) size = ShortestEdgeSize(image.width, image.height, c.shortest_edge);
    if (size.width > kMaxImageSide || size.height > kMaxImageSide) {
      return InvalidArgumentError(
          "image: resizing a " + std::to_string(image.width) + "x" + std::to_string(image.height) +
          " image to a shortest edge of " + std::to_string(c.shortest_edge) + " gives " +
          std::to_string(size.width) + "x" + std::to_string(size.height) + ", beyond " +
          std::to_string(kMaxImageSide) + " pixels a side (the aspect ratio is too extreme)");
    }
    if (torchvision) {
      RAINSERVE_ASSIGN_OR_RETURN(const AtenInterpolation mode, TorchvisionMode(c.resample));
      RAINSERVE_ASSIGN_OR_RETURN(out, ResizeImageAten(image, size.width, size.height, mode));
    } else {
      RAINSERVE_ASSIGN_OR_RETURN(out, ResizeImage(image, size.width, size.height, c.resample));
    }
  }
  if (c.do_center_crop) {
    const PadOffset pad = torchvision ? PadOffset::kFloor : PadOffset::kCeil;
    RAINSERVE_ASSIGN_OR_RETURN(out, CenterCrop(out, c.crop_width, c.crop_height, pad));
  }
  return out;
}

StatusOr<at::Tensor> ClipImageProcessor::Preprocess(const InputImage& image) const {
  RAINSERVE_ASSIGN_OR_RETURN(const InputImage img, ResizeAndCrop(image));
  if (config_.backend == ClipImageBackend::kTorchvision) return TorchvisionPixelValues(img, config_);
  return PilPixelValues(img, config_);
}

Status ClipImageProcessor::SavePreprocessorConfig(const std::string& dir) const {
  ::mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/preprocessor_config.json";
  std::ofstream f(path);
  f << ClipImageProcessorConfigJson(config_) << "\n";
  if (!f) return UnavailableError("cannot write " + path);
  return OkStatus();
}

}  // namespace rainserve
