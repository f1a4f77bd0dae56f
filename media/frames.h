// Input checks shared by every encoder in media/: the frames are
//   rgb: [frames, height, width, 3] uint8, rows packed (no padding).
// Each error names the argument at fault, e.g. "width must be in [1, 16384], got 0".
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace rainserve::media {

// Largest width or height accepted (also H.264's practical limit).
inline constexpr int kMaxDimension = 16384;
// Largest frame rate accepted for video.
inline constexpr int kMaxFps = 240;

// Checks rgb != null, width and height in [1, kMaxDimension], frames >= 1.
Status ValidateFrames(const uint8_t* rgb, int width, int height, int frames);

// Checks fps in [1, kMaxFps].
Status ValidateFps(int fps);

// Bytes in one frame: height * width * 3 (inputs already validated).
inline size_t FrameBytes(int width, int height) {
  return static_cast<size_t>(width) * static_cast<size_t>(height) * 3;
}

}  // namespace rainserve::media
