#include "media/artifacts.h"

#include "media/frames.h"

namespace rainserve::media {

namespace {

Artifact MakeArtifact(const char* mime_type, std::string data, int width, int height, int frames,
                      int fps) {
  Artifact artifact;
  artifact.mime_type = mime_type;
  artifact.sha256 = Sha256Hex(data);
  artifact.data = std::move(data);
  artifact.width = width;
  artifact.height = height;
  artifact.frames = frames;
  artifact.fps = fps;
  return artifact;
}

}  // namespace

StatusOr<std::vector<Artifact>> EncodeArtifacts(const uint8_t* rgb, int width, int height,
                                                int frames, int fps, ArtifactFormat format) {
  RAINSERVE_RETURN_IF_ERROR(ValidateFrames(rgb, width, height, frames));
  if (fps < 0) return InvalidArgumentError("fps must be >= 0, got " + std::to_string(fps));
  if (format == ArtifactFormat::kAuto) {
    format = frames == 1 ? ArtifactFormat::kPng : ArtifactFormat::kMp4;
  }

  std::vector<Artifact> artifacts;
  const size_t frame_bytes = FrameBytes(width, height);
  if (format == ArtifactFormat::kPng) {
    for (int i = 0; i < frames; ++i) {
      RAINSERVE_ASSIGN_OR_RETURN(std::string png,
                                 EncodePng(rgb + static_cast<size_t>(i) * frame_bytes, width, height));
      artifacts.push_back(MakeArtifact("image/png", std::move(png), width, height, 1, fps));
    }
  } else if (format == ArtifactFormat::kMp4) {
    RAINSERVE_ASSIGN_OR_RETURN(std::string mp4, EncodeMp4(rgb, width, height, frames, fps));
    artifacts.push_back(MakeArtifact("video/mp4", std::move(mp4), Mp4Dimension(width),
                                     Mp4Dimension(height), frames, fps));
  } else {
    std::string raw(reinterpret_cast<const char*>(rgb), frame_bytes * static_cast<size_t>(frames));
    artifacts.push_back(
        MakeArtifact("application/octet-stream", std::move(raw), width, height, frames, fps));
  }
  return artifacts;
}

Artifact LatentsArtifact(const std::vector<float>& latents, const std::vector<int64_t>& shape,
                         int64_t fps) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "latents are sent little-endian");
  Artifact a;
  a.mime_type = "application/octet-stream";
  a.data.assign(reinterpret_cast<const char*>(latents.data()), latents.size() * sizeof(float));
  a.sha256 = Sha256Hex(a.data);
  a.shape = shape;
  a.dtype = "float32";
  if (shape.size() == 4) {
    a.frames = shape[1];
    a.height = shape[2];
    a.width = shape[3];
  }
  a.fps = fps;
  return a;
}

}  // namespace rainserve::media
