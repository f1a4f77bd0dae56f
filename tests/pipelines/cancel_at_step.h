// Runs a request that cancels itself when the denoise stage reports a given
// step, for the pipelines' cancellation tests.
#pragma once

#include "pipelines/core/pipeline.h"

namespace rainserve::testing {

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
