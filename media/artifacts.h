// Generated RGB frames -> the files a request returns (PNG, MP4, raw RGB),
// each with its SHA-256. Torch-free and gRPC-free; the server maps the
// Artifact fields onto its reply.
//
//   // rgb: [frames, height, width, 3] uint8, as the pipeline decodes it
//   auto artifacts = EncodeArtifacts(rgb, 832, 480, 81, 16, ArtifactFormat::kAuto);
//
// docs/artifacts.md describes the formats and encoder settings for users.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "media/mp4_encoder.h"
#include "media/png_encoder.h"
#include "media/sha256.h"

namespace rainserve::media {

enum class ArtifactFormat {
  kAuto,    // PNG for one frame, MP4 for several
  kPng,     // one PNG per frame
  kMp4,     // one H.264 MP4 with every frame
  kRawRgb,  // one blob with every frame's bytes as given
};

// One output file of a generation: what the server streams and retains.
struct Artifact {
  std::string mime_type;  // "image/png", "video/mp4" or "application/octet-stream"
  std::string data;       // the file's bytes
  std::string sha256;     // of data, 64 lowercase hex digits
  // What data holds. An MP4 of odd-sized frames is padded to even sizes
  // (see Mp4Dimension) and says so here. A PNG holds 1 frame.
  int64_t width = 0;
  int64_t height = 0;
  int64_t frames = 0;
  int64_t fps = 0;
  std::vector<int64_t> shape;  // latents only: [C, F, H, W]
  std::string dtype;           // latents only: "float32"
};

// rgb: [frames, height, width, 3] uint8. Encodes the frames as `format` says
// (kMp4 with its default Mp4Options). fps must be in [1, 240] when the result
// is an MP4; PNG and raw artifacts only carry it (0 allowed, negative not).
// Errors are those of EncodePng / EncodeMp4: INVALID_ARGUMENT naming the bad
// argument, FAILED_PRECONDITION without an H.264 encoder, INTERNAL otherwise.
// Called from the request's worker thread once generation is done; thread-safe.
StatusOr<std::vector<Artifact>> EncodeArtifacts(const uint8_t* rgb, int width, int height,
                                                int frames, int fps, ArtifactFormat format);

// Undecoded latents [C, F, H, W] as one float32 little-endian blob with its
// shape (frames, height and width are the latent F, H, W). Thread-safe.
Artifact LatentsArtifact(const std::vector<float>& latents, const std::vector<int64_t>& shape,
                         int64_t fps);

}  // namespace rainserve::media
