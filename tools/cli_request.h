// rainserve-cli: the GenerateRequest built from the request flags, and where
// artifacts are written (the --out rule, shared with the Python client).
#pragma once

#include <string>

#include "common/status.h"
#include "rainserve/v1/generation.pb.h"
#include "tools/cli_flags.h"

namespace rainserve::cli {

// Every request flag, range-checked against its proto field's type (the
// server checks the model's limits). Errors name the flag.
StatusOr<v1::GenerateRequest> BuildRequest(const Args& args);

// ".png", ".mp4", ".f32" (latents) or ".rgb" (raw frames).
std::string Extension(const v1::ArtifactInfo& info);

// Where artifact `index` of `count` goes for `--out out`: `out` is a path;
// the extension is appended only when `out` does not already end with it,
// and "-<index>" goes before it when there are several artifacts:
//   ("boat", ".mp4", 0, 1) -> "boat.mp4"; ("boat.mp4", ".mp4", 0, 1) -> "boat.mp4";
//   ("f.png", ".png", 2, 3) -> "f-2.png".
std::string ArtifactPath(const std::string& out, const std::string& extension, uint32_t index,
                         size_t count);

}  // namespace rainserve::cli
