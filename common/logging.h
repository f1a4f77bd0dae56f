// Minimal leveled logging to stderr, one line per message, thread-safe.
//
//   RAINSERVE_LOG(INFO) << "listening on " << address;
//
// Messages below the process-wide level (SetLogLevel) cost one comparison.
// Never log prompts or other user text at INFO or above.
#pragma once

#include <sstream>
#include <string_view>

#include "common/status.h"

namespace rainserve {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// "debug" | "info" | "warning" | "error".
StatusOr<LogLevel> ParseLogLevel(std::string_view name);

namespace internal {

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();  // writes the line
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace internal
}  // namespace rainserve

#define RAINSERVE_LOG_LEVEL_DEBUG ::rainserve::LogLevel::kDebug
#define RAINSERVE_LOG_LEVEL_INFO ::rainserve::LogLevel::kInfo
#define RAINSERVE_LOG_LEVEL_WARNING ::rainserve::LogLevel::kWarning
#define RAINSERVE_LOG_LEVEL_ERROR ::rainserve::LogLevel::kError

#define RAINSERVE_LOG(level)                                                 \
  if (RAINSERVE_LOG_LEVEL_##level < ::rainserve::GetLogLevel()) {            \
  } else                                                                     \
    ::rainserve::internal::LogMessage(RAINSERVE_LOG_LEVEL_##level, __FILE__, \
                                      __LINE__)                              \
        .stream()
