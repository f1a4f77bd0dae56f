// What the Wan2.1 and Wan2.2 VAE tests share: a fresh temporary folder, a
// substring check, and the timing of one decode (the disabled timing tests
// that chose the embedded models' VAE sizes).
#pragma once

#include <ATen/ATen.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "pipelines/wan/wan_vae.h"

namespace rainserve::testing {

inline std::string VaeTempDir() {
  char tmpl[] = "/tmp/rainserve-wan-vae-XXXXXX";
  return mkdtemp(tmpl);
}

inline bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

struct DecodeTiming {
  double seconds = 0;       // the faster of two decodes
  int64_t parameters = 0;   // of the whole VAE
  int64_t frames = 0;       // decoded frames
};

// A random fp32 VAE of `config` on the CPU decodes seeded latents of `shape`
// twice; frames is 0 when a decode failed.
inline DecodeTiming TimeRandomDecode(const WanVAEConfig& config, at::IntArrayRef shape) {
  auto vae = WanVAE::Random(config, at::kFloat, at::kCPU, 1);
  at::manual_seed(1);
  const at::Tensor lat = at::randn(shape);
  DecodeTiming t{1e9, 0, 0};
  for (int rep = 0; rep < 2; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    auto v = vae->Decode(lat);
    if (!v.ok()) return {};
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    t.seconds = std::min(t.seconds, took.count());
    t.frames = v->size(2);
  }
  for (const auto& [name, p] : vae->NamedParameters()) t.parameters += p.numel();
  return t;
}

}  // namespace rainserve::testing
