// Pipeline runs shared by the pipeline tests: a request's latents, and a
// request that cancels itself when the denoise stage reports a given step.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "pipelines/core/pipeline.h"

namespace rainserve::testing {

// The latents of `r` on `p` (a failure is a test failure and gives none).
inline std::vector<float> Latents(Pipeline& p, const GenerationRequest& r) {
  CancelToken cancel;
  auto out = p.Generate(r, nullptr, cancel);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? out->latents : std::vector<float>{};
}

struct CancelledRun {
  Status status;
  int denoise_updates = 0;  // denoise progress reports seen before the stop
};

// Generates `r` on `p`, cancelling from the progress callback of denoise
// step `step`; returns the outcome and how many denoise steps reported.
inline CancelledRun GenerateCancellingAt(Pipeline& p, const GenerationRequest& r, int step) {
  CancelledRun run;
  CancelToken cancel;
  auto out = p.Generate(
      r,
      [&](const ProgressUpdate& u) {
        if (u.stage != "denoise") return;
        ++run.denoise_updates;
        if (u.step == step) cancel.Cancel();
      },
      cancel);
  run.status = out.status();
  return run;
}

}  // namespace rainserve::testing
