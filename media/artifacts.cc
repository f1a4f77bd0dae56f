#include "media/artifacts.h"

#include <openssl/evp.h>

#include <memory>

#include "media/frames.h"

namespace rainserve::media {

namespace {

struct DigestContextDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};

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

std::string Sha256Hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  std::unique_ptr<EVP_MD_CTX, DigestContextDeleter> context(EVP_MD_CTX_new());
  // Only allocation can fail here; a failed digest leaves digest_size 0.
  if (context == nullptr || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(context.get(), bytes.data(), bytes.size()) != 1 ||
      EVP_DigestFinal_ex(context.get(), digest, &digest_size) != 1) {
    digest_size = 0;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * digest_size);
  for (unsigned int i = 0; i < digest_size; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

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
