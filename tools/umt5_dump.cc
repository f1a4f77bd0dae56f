// Writes a random tiny UMT5 text encoder and its outputs on fixed inputs, for
// bench/parity/umt5_parity.py to compare with transformers' UMT5EncoderModel.
//
//   umt5_dump OUT_DIR [--device cpu|cuda] [--seed N]
//
// OUT_DIR/model/      config.json + model.safetensors (the published layout)
// OUT_DIR/io.safetensors
//   input_ids          [B, L] F32 (small integers, exact)
//   attention_mask     [B, L] F32 (1 = token, 0 = padding)
//   last_hidden_state  [B, L, d_model] F32, our fp32 forward
//   buckets            [L, L] F32, our relative-position bucket of key - query
// The config uses the published bucket settings (32 buckets, max distance
// 128) and L = 40 so that exact, logarithmic and boundary distances (16, 32)
// all occur; norm weights are perturbed away from 1 so that they matter.
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/CPUGeneratorImpl.h>

#include "pipelines/core/safetensors.h"
#include "pipelines/text/umt5.h"

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "umt5_dump: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rainserve;
  if (argc < 2) return Fail("usage: umt5_dump OUT_DIR [--device cpu|cuda] [--seed N]");
  const std::string out = argv[1];
  std::string device_name = "cpu";
  uint64_t seed = 1234;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--device") {
      device_name = argv[i + 1];
    } else if (flag == "--seed") {
      seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      return Fail("unknown flag " + flag);
    }
  }
  try {
    const at::Device device(device_name);
    UMT5Config c;
    c.vocab_size = 256;
    c.d_model = 64;
    c.d_kv = 16;
    c.num_heads = 4;
    c.d_ff = 96;
    c.num_layers = 3;
    c.relative_attention_num_buckets = 32;
    c.relative_attention_max_distance = 128;
    auto model = UMT5Encoder::Random(c, at::kFloat, device, seed);
    at::Generator gen = at::detail::createCPUGenerator(seed + 1);
    for (auto& [name, t] : model->NamedParameters()) {
      if (name.find("layer_norm") != std::string::npos) {
        t.copy_(at::empty(t.sizes(), at::kFloat).normal_(1.0, 0.3, gen));
      }
    }
    ::mkdir(out.c_str(), 0755);
    const Status saved = model->Save(out + "/model", int64_t{1} << 30);
    if (!saved.ok()) return Fail(saved.ToString());

    // B = 3 prompts of 40, 23 and 1 tokens (the last one just "EOS").
    const int64_t B = 3, L = 40;
    const at::Tensor ids = at::randint(1, c.vocab_size, {B, L}, gen, at::kLong);
    at::Tensor mask = at::ones({B, L}, at::kLong);
    mask[1].slice(0, 23).fill_(0);
    mask[2].slice(0, 1).fill_(0);
    const at::Tensor padded_ids = ids * mask;  // padding id 0, as the tokenizer writes
    auto hidden = model->Forward(padded_ids, mask);
    if (!hidden.ok()) return Fail(hidden.status().ToString());
    const at::Tensor pos = at::arange(L, at::TensorOptions().dtype(at::kLong).device(device));
    const at::Tensor buckets =
        RelativePositionBucket(pos.unsqueeze(0) - pos.unsqueeze(1), c.relative_attention_num_buckets,
                               c.relative_attention_max_distance);
    const Status written = WriteSafetensors(out + "/io.safetensors",
                                            {{"input_ids", padded_ids.to(at::kFloat)},
                                             {"attention_mask", mask.to(at::kFloat)},
                                             {"last_hidden_state", hidden->to(at::kFloat)},
                                             {"buckets", buckets.to(at::kFloat)}},
                                            {{"format", "pt"}});
    if (!written.ok()) return Fail(written.ToString());
    std::printf("wrote %s/model and %s/io.safetensors (B=%lld, L=%lld, |out|max=%.4f)\n", out.c_str(),
                out.c_str(), static_cast<long long>(B), static_cast<long long>(L),
                hidden->abs().max().item<double>());
  } catch (const c10::Error& e) {
    return Fail(e.what_without_backtrace());
  }
  return 0;
}
