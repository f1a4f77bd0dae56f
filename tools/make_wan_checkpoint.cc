// make_wan_checkpoint: writes a Wan2.1-architecture text-to-video checkpoint
// in the diffusers folder layout with random weights, deterministically.
//
//   make_wan_checkpoint --out models/wan-tiny [--preset tiny]
//       [--corpus tools/data/tiny_corpus.txt]
//   make_wan_checkpoint --out DIR --preset 1.3b [--device cuda:0] [--shard-gb 2]
//
// Presets:
//   tiny  the embedded default model (models/wan-tiny, 6.6 MB, fp32, one file
//         per component; scripts/make_wan_tiny.sh regenerates and checks it);
//   1.3b  the Wan2.1-T2V-1.3B configuration at full size (umT5-XXL text
//         encoder and transformer in bf16, the full VAE in fp32, sharded
//         safetensors with index files), to exercise loading and speed at
//         real size. Random weights are drawn on --device (default cpu);
//   1.3b-text1  the same with a one-layer text encoder (umT5-XXL's width,
//         the tokenizer's 1000-piece vocabulary): whole-request timing of
//         the transformer and VAE without the 11 GB encoder.
// Components: tokenizer/ (a SentencePiece unigram model trained on the
// corpus), text_encoder/ (UMT5), transformer/ (WanTransformer3DModel), vae/
// (AutoencoderKLWan with the published latent statistics), scheduler/ (flow
// UniPC, shift 3) and model_index.json. The weights are random: the model
// exercises the whole system; real output needs real weights (see README).
#include <ATen/ATen.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "common/status.h"
#include "pipelines/text/sentencepiece_library.h"
#include "pipelines/core/image_ops.h"
#include "pipelines/text/clip_vision.h"
#include "pipelines/text/umt5.h"
#include "pipelines/wan/wan_transformer.h"
#include "pipelines/wan/wan_vae.h"

namespace rainserve {
namespace {

constexpr int kVocabSize = 1000;  // SentencePiece pieces (the tiny corpus supports ~1000)

struct Preset {
  UMT5Config text_encoder;
  WanTransformerConfig transformer;
  WanVAEConfig vae;
  at::ScalarType dtype = at::kFloat;  // text encoder and transformer; the VAE is fp32
  // The stored precision of the tiny models' VAE (their weights are random:
  // bf16 halves the files; the pipeline loads them in any dtype).
  at::ScalarType vae_dtype = at::kFloat;
  int64_t shard_bytes = int64_t{1} << 40;
  // Wan2.2 A14B: a second (low-noise) expert and the switch point.
  bool two_experts = false;
  double boundary_ratio = 0.875;
  // Wan2.2 TI2V: per-frame timesteps (model_index expand_timesteps).
  bool expand_timesteps = false;
  // WanImageToVideoPipeline (Wan2.1 I2V also with a CLIP vision encoder).
  bool image_to_video = false;
  bool image_encoder = false;
  ClipVisionConfig clip;
};

// The tiny text encoder and transformer of every tiny preset.
void TinyBase(Preset* p) {
  // Text encoder: 2 layers, d_model 64 (= the transformer's text_dim).
  p->text_encoder.vocab_size = kVocabSize;
  p->text_encoder.d_model = 64;
  p->text_encoder.d_kv = 16;
  p->text_encoder.num_heads = 4;
  p->text_encoder.d_ff = 128;
  p->text_encoder.num_layers = 2;
  // Transformer: 2 layers, 2 heads of 64, ffn 256.
  p->transformer.num_attention_heads = 2;
  p->transformer.attention_head_dim = 64;
  p->transformer.text_dim = 64;
  p->transformer.freq_dim = 64;
  p->transformer.ffn_dim = 256;
  p->transformer.num_layers = 2;
  // VAE: the published structure (z 16, dim_mult [1, 2, 4, 4], 2 residual
  // blocks per stage, 4x time and 8x space) with 8 base channels.
  p->vae.base_dim = 8;
}

StatusOr<Preset> MakePreset(const std::string& name) {
  Preset p;
  if (name == "tiny") {
    TinyBase(&p);
    return p;
  }
  if (name == "wan22-tiny") {
    // Wan2.2 T2V-A14B's layout (two experts, boundary 0.875, the Wan2.1
    // VAE) at the tiny sizes, stored in bf16.
    TinyBase(&p);
    p.dtype = p.vae_dtype = at::kBFloat16;
    p.two_experts = true;
    return p;
  }
  if (name == "1.3b") {
    // The configs' defaults are umT5-XXL, Wan2.1-T2V-1.3B and the Wan2.1 VAE.
    p.dtype = at::kBFloat16;
    return p;
  }
  if (name == "1.3b-text1") {
    // 1.3b with a one-layer text encoder of umT5-XXL's width over the
    // tokenizer's vocabulary: the transformer and VAE at full size for whole-
    // request timing (bench/wan_request_bench.cc), text encoding near free.
    p.dtype = at::kBFloat16;
    p.text_encoder.vocab_size = kVocabSize;
    p.text_encoder.num_layers = 1;
    return p;
  }
  if (name == "ti2v-tiny") {
    // Wan2.2 TI2V-5B's layout: the Wan2.2 VAE (z 48, 16x space), a 48-channel
    // transformer, per-frame timesteps.
    TinyBase(&p);
    p.dtype = p.vae_dtype = at::kBFloat16;
    p.vae = WanVAE22Config();
    p.vae.base_dim = 8;
    p.vae.decoder_base_dim = 8;
    p.transformer.in_channels = p.transformer.out_channels = 48;
    p.expand_timesteps = true;
    return p;
  }
  if (name == "i2v-tiny") {
    // Wan2.1-I2V-14B's layout: 36 input channels (latents, mask, image
    // latents), image cross-attention fed by a tiny CLIP ViT (224 px, patch 14).
    TinyBase(&p);
    p.dtype = p.vae_dtype = at::kBFloat16;
    p.image_to_video = p.image_encoder = true;
    p.clip.hidden_size = 32;
    p.clip.intermediate_size = 64;
    p.clip.num_hidden_layers = 2;
    p.clip.num_attention_heads = 2;
    p.clip.patch_size = 14;
    p.clip.hidden_act = "gelu";
    p.clip.projection_dim = 32;
    p.transformer.in_channels = 36;
    p.transformer.image_dim = p.clip.hidden_size;
    p.transformer.added_kv_proj_dim = p.transformer.inner_dim();
    return p;
  }
  if (name == "i2v22-tiny") {
    // Wan2.2-I2V-A14B's layout: two experts (boundary 0.9), 36 input
    // channels, no CLIP (not embedded; the parity check writes it).
    TinyBase(&p);
    p.dtype = p.vae_dtype = at::kBFloat16;
    p.two_experts = true;
    p.boundary_ratio = 0.9;
    p.image_to_video = true;
    p.transformer.in_channels = 36;
    return p;
  }
  return InvalidArgumentError("unknown preset '" + name +
                              "' (tiny, wan22-tiny, ti2v-tiny, i2v-tiny, i2v22-tiny, 1.3b, "
                              "1.3b-text1)");
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return UnavailableError("cannot write " + path);
  return OkStatus();
}

Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return UnavailableError("cannot create " + path);
  }
  return OkStatus();
}

// model_index.json naming the components this preset writes.
std::string ModelIndexJson(const Preset& p) {
  std::string json = std::string("{\n  \"_class_name\": \"") +
                     (p.image_to_video ? "WanImageToVideoPipeline" : "WanPipeline") +
                     "\",\n  \"_diffusers_version\": \"0.33.0\",\n";
  if (p.expand_timesteps) json += "  \"expand_timesteps\": true,\n";
  if (p.image_encoder) {
    json += "  \"image_encoder\": [\"transformers\", \"CLIPVisionModel\"],\n"
            "  \"image_processor\": [\"transformers\", \"CLIPImageProcessor\"],\n";
  }
  if (p.two_experts) {
    char ratio[32];
    std::snprintf(ratio, sizeof(ratio), "%g", p.boundary_ratio);
    json += std::string("  \"boundary_ratio\": ") + ratio + ",\n";
  }
  json +=
      "  \"scheduler\": [\"diffusers\", \"UniPCMultistepScheduler\"],\n"
      "  \"text_encoder\": [\"transformers\", \"UMT5EncoderModel\"],\n"
      "  \"tokenizer\": [\"transformers\", \"T5TokenizerFast\"],\n"
      "  \"transformer\": [\"diffusers\", \"WanTransformer3DModel\"],\n";
  if (p.two_experts) json += "  \"transformer_2\": [\"diffusers\", \"WanTransformer3DModel\"],\n";
  json += "  \"vae\": [\"diffusers\", \"AutoencoderKLWan\"]\n}\n";
  return json;
}

Status MakeCheckpoint(const std::string& out, const std::string& corpus, const Preset& p,
                      at::Device device) {
  RAINSERVE_RETURN_IF_ERROR(MakeDir(out));
  for (const char* sub : {"tokenizer", "text_encoder", "transformer", "vae", "scheduler"}) {
    RAINSERVE_RETURN_IF_ERROR(MakeDir(out + "/" + sub));
  }
  if (p.two_experts) RAINSERVE_RETURN_IF_ERROR(MakeDir(out + "/transformer_2"));
  if (p.image_encoder) {
    RAINSERVE_RETURN_IF_ERROR(MakeDir(out + "/image_encoder"));
    RAINSERVE_RETURN_IF_ERROR(MakeDir(out + "/image_processor"));
    RAINSERVE_RETURN_IF_ERROR(ClipVisionEncoder::Random(p.clip, p.dtype, device, 5)
                                  ->Save(out + "/image_encoder", p.shard_bytes));
    ClipImageProcessorConfig processor;  // OpenAI CLIP's 224 pipeline (as published)
    processor.resample = ResampleFilter::kBicubic;
    RAINSERVE_RETURN_IF_ERROR(
        ClipImageProcessor(processor).SavePreprocessorConfig(out + "/image_processor"));
  }

  // Tokenizer: tokenizer/spiece.model (+ the small JSON files transformers reads).
  RAINSERVE_RETURN_IF_ERROR(
      TrainSentencePieceModel(corpus, out + "/tokenizer/spiece", kVocabSize));
  std::remove((out + "/tokenizer/spiece.vocab").c_str());
  RAINSERVE_RETURN_IF_ERROR(WriteText(
      out + "/tokenizer/tokenizer_config.json",
      "{\n  \"tokenizer_class\": \"T5Tokenizer\",\n  \"model_max_length\": 512,\n"
      "  \"eos_token\": \"</s>\",\n  \"pad_token\": \"<pad>\",\n  \"unk_token\": \"<unk>\",\n"
      "  \"extra_ids\": 0\n}\n"));
  RAINSERVE_RETURN_IF_ERROR(WriteText(
      out + "/tokenizer/special_tokens_map.json",
      "{\n  \"eos_token\": \"</s>\",\n  \"pad_token\": \"<pad>\",\n  \"unk_token\": \"<unk>\"\n}\n"));

  RAINSERVE_RETURN_IF_ERROR(UMT5Encoder::Random(p.text_encoder, p.dtype, device, 1)
                                ->Save(out + "/text_encoder", p.shard_bytes));
  RAINSERVE_RETURN_IF_ERROR(WanTransformer::Random(p.transformer, p.dtype, device, 2)
                                ->Save(out + "/transformer", p.shard_bytes));
  if (p.two_experts) {
    RAINSERVE_RETURN_IF_ERROR(WanTransformer::Random(p.transformer, p.dtype, device, 4)
                                  ->Save(out + "/transformer_2", p.shard_bytes));
  }
  RAINSERVE_RETURN_IF_ERROR(
      WanVAE::Random(p.vae, p.vae_dtype, device, 3)->Save(out + "/vae", p.shard_bytes));

  RAINSERVE_RETURN_IF_ERROR(WriteText(out + "/scheduler/scheduler_config.json", R"({
  "_class_name": "UniPCMultistepScheduler",
  "_diffusers_version": "0.33.0",
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
}
)"));
  return WriteText(out + "/model_index.json", ModelIndexJson(p));
}

}  // namespace
}  // namespace rainserve

int main(int argc, char** argv) {
  std::string out, corpus = "tools/data/tiny_corpus.txt", preset_name = "tiny", device = "cpu";
  double shard_gb = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--out") {
      out = argv[i + 1];
    } else if (flag == "--corpus") {
      corpus = argv[i + 1];
    } else if (flag == "--preset") {
      preset_name = argv[i + 1];
    } else if (flag == "--device") {
      device = argv[i + 1];
    } else if (flag == "--shard-gb") {
      shard_gb = std::atof(argv[i + 1]);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (out.empty()) {
    std::fprintf(stderr,
                 "usage: make_wan_checkpoint --out DIR [--preset tiny|1.3b] [--corpus FILE] "
                 "[--device cpu|cuda:N] [--shard-gb G]\n");
    return 2;
  }
  auto preset = rainserve::MakePreset(preset_name);
  if (!preset.ok()) {
    std::fprintf(stderr, "make_wan_checkpoint: %s\n", preset.status().ToString().c_str());
    return 2;
  }
  if (shard_gb > 0) preset->shard_bytes = static_cast<int64_t>(shard_gb * 1e9);
  const auto start = std::chrono::steady_clock::now();
  const rainserve::Status s = rainserve::MakeCheckpoint(out, corpus, *preset, at::Device(device));
  if (!s.ok()) {
    std::fprintf(stderr, "make_wan_checkpoint: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s (%s) in %.1f s\n", out.c_str(), preset_name.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}
