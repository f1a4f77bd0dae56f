#include "media/frames.h"

#include <string>

namespace rainserve::media {

namespace {

Status CheckRange(const char* name, int value, int lo, int hi) {
  if (value >= lo && value <= hi) return OkStatus();
  return InvalidArgumentError(std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + "], got " + std::to_string(value));
}

}  // namespace

Status ValidateFrames(const uint8_t* rgb, int width, int height, int frames) {
  if (rgb == nullptr) return InvalidArgumentError("rgb must not be null");
  RAINSERVE_RETURN_IF_ERROR(CheckRange("width", width, 1, kMaxDimension));
  RAINSERVE_RETURN_IF_ERROR(CheckRange("height", height, 1, kMaxDimension));
  if (frames < 1) {
    return InvalidArgumentError("frames must be >= 1, got " + std::to_string(frames));
  }
  return OkStatus();
}

Status ValidateFps(int fps) { return CheckRange("fps", fps, 1, kMaxFps); }

}  // namespace rainserve::media
