// make_wan_tiny: writes the embedded default model `wan-tiny`, a Wan2.1-
// architecture text-to-video checkpoint in the diffusers folder layout with
// small random weights, deterministically (same bytes on every run).
//
//   make_wan_tiny --out models/wan-tiny [--corpus tools/data/tiny_corpus.txt]
//
// Components: tokenizer/ (a SentencePiece unigram model trained on the
// corpus), text_encoder/ (tiny UMT5), transformer/ (tiny WanTransformer3DModel),
// vae/ (tiny AutoencoderKLWan with the published latent statistics),
// scheduler/ (flow UniPC, shift 3) and model_index.json. The weights are
// random: the model exercises the whole system; real output needs real
// weights (see README).
#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/status.h"
#include "pipelines/tokenizer.h"
#include "pipelines/umt5.h"
#include "pipelines/wan_transformer.h"
#include "pipelines/wan_vae.h"

namespace rainserve {
namespace {

constexpr int kVocabSize = 1000;
constexpr int64_t kTextDim = 64;
constexpr int64_t kShardBytes = int64_t{1} << 30;  // one file per component

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

Status MakeTiny(const std::string& out, const std::string& corpus) {
  RAINSERVE_RETURN_IF_ERROR(MakeDir(out));
  for (const char* sub : {"tokenizer", "text_encoder", "transformer", "vae", "scheduler"}) {
    RAINSERVE_RETURN_IF_ERROR(MakeDir(out + "/" + sub));
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

  // Text encoder: 2 layers, d_model 64 (= the transformer's text_dim).
  UMT5Config t5;
  t5.vocab_size = kVocabSize;
  t5.d_model = kTextDim;
  t5.d_kv = 16;
  t5.num_heads = 4;
  t5.d_ff = 128;
  t5.num_layers = 2;
  t5.relative_attention_num_buckets = 32;
  t5.relative_attention_max_distance = 128;
  RAINSERVE_RETURN_IF_ERROR(
      UMT5Encoder::Random(t5, at::kFloat, at::kCPU, 1)->Save(out + "/text_encoder", kShardBytes));

  // Transformer: 2 layers, 2 heads of 64, ffn 256.
  WanTransformerConfig tc;
  tc.num_attention_heads = 2;
  tc.attention_head_dim = 64;
  tc.text_dim = kTextDim;
  tc.freq_dim = 64;
  tc.ffn_dim = 256;
  tc.num_layers = 2;
  RAINSERVE_RETURN_IF_ERROR(
      WanTransformer::Random(tc, at::kFloat, at::kCPU, 2)->Save(out + "/transformer", kShardBytes));

  // VAE: the published structure (z 16, dim_mult [1, 2, 4, 4], 2 residual
  // blocks per stage, 4x time and 8x space) with 8 base channels.
  WanVAEConfig vc;
  vc.base_dim = 8;
  RAINSERVE_RETURN_IF_ERROR(
      WanVAE::Random(vc, at::kFloat, at::kCPU, 3)->Save(out + "/vae", kShardBytes));

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
  return WriteText(out + "/model_index.json", R"({
  "_class_name": "WanPipeline",
  "_diffusers_version": "0.33.0",
  "scheduler": ["diffusers", "UniPCMultistepScheduler"],
  "text_encoder": ["transformers", "UMT5EncoderModel"],
  "tokenizer": ["transformers", "T5TokenizerFast"],
  "transformer": ["diffusers", "WanTransformer3DModel"],
  "vae": ["diffusers", "AutoencoderKLWan"]
}
)");
}

}  // namespace
}  // namespace rainserve

int main(int argc, char** argv) {
  std::string out, corpus = "tools/data/tiny_corpus.txt";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--out") {
      out = argv[i + 1];
    } else if (flag == "--corpus") {
      corpus = argv[i + 1];
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (out.empty()) {
    std::fprintf(stderr, "usage: make_wan_tiny --out DIR [--corpus FILE]\n");
    return 2;
  }
  const rainserve::Status s = rainserve::MakeTiny(out, corpus);
  if (!s.ok()) {
    std::fprintf(stderr, "make_wan_tiny: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
