// EncodeMp4 for builds without FFmpeg's libraries (RAINSERVE_WITH_VIDEO=OFF).
#include "media/ffmpeg_log.h"
#include "media/mp4_encoder.h"

namespace rainserve::media {

int Mp4Dimension(int size) { return size + (size & 1); }

StatusOr<std::string> EncodeMp4(const uint8_t*, int, int, int, int, const Mp4Options&) {
  return FailedPreconditionError(
      "this server was built without video encoding (RAINSERVE_WITH_VIDEO=OFF): ask for PNG or "
      "raw RGB output");
}

void ForwardFfmpegLogs() {}

}  // namespace rainserve::media
