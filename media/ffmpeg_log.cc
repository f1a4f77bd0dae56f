#include "media/ffmpeg_log.h"

extern "C" {
#include <libavutil/log.h>
}

#include <cstdarg>
#include <string_view>

#include "common/logging.h"

namespace rainserve::media {

namespace {

void ForwardLine(void* av_class_object, int av_level, const char* format, va_list args) {
  if (av_level > AV_LOG_INFO) return;
  const LogLevel level = av_level <= AV_LOG_ERROR     ? LogLevel::kError
                         : av_level <= AV_LOG_WARNING ? LogLevel::kWarning
                                                      : LogLevel::kDebug;
  if (level < GetLogLevel()) return;
  char line[2048];
  int print_prefix = 1;  // "[libx264 @ 0x...] " before the text
  av_log_format_line2(av_class_object, av_level, format, args, line, sizeof(line), &print_prefix);
  std::string_view text(line);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  if (text.empty()) return;
  switch (level) {
    case LogLevel::kError:
      RAINSERVE_LOG(ERROR) << text;
      break;
    case LogLevel::kWarning:
      RAINSERVE_LOG(WARNING) << text;
      break;
    default:
      RAINSERVE_LOG(DEBUG) << text;
      break;
  }
}

}  // namespace

void ForwardFfmpegLogs() { av_log_set_callback(ForwardLine); }

}  // namespace rainserve::media
