// A Wan checkpoint folder whose transformer splits over 2, 4 and 8 devices:
// wan-tiny's tokenizer, text encoder, VAE and scheduler (symlinked) with a
// random 8-head transformer (8 x 16 = inner width 128, text_dim 64, 2
// layers), saved to a new temporary folder. Multi-device tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "pipelines/wan/wan_transformer.h"
#include "tests/test_files.h"

namespace rainserve::testing {

inline std::string EightHeadWanCheckpoint() {
  namespace fs = std::filesystem;
  const std::string dir = MakeTempDir("wan-8head");
  const std::string tiny = SourceDir() + "/models/wan-tiny";
  for (const char* part : {"tokenizer", "text_encoder", "vae", "scheduler"}) {
    fs::create_directory_symlink(tiny + "/" + part, dir + "/" + part);
  }
  fs::copy_file(tiny + "/model_index.json", dir + "/model_index.json");
  WanTransformerConfig c;
  c.num_attention_heads = 8;
  c.attention_head_dim = 16;
  c.text_dim = 64;
  c.freq_dim = 64;
  c.ffn_dim = 256;
  c.num_layers = 2;
  auto model = WanTransformer::Random(c, at::kFloat, at::kCPU, /*seed=*/9);
  EXPECT_TRUE(model != nullptr);
  const Status saved = model->Save(dir + "/transformer", int64_t{1} << 30);
  EXPECT_TRUE(saved.ok()) << saved.ToString();
  return dir;
}

}  // namespace rainserve::testing
