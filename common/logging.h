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
  std::ostringstream stream_;
};

// Makes the streamed message a void expression, for the ?: in RAINSERVE_LOG
// (`&` binds more loosely than `<<`, so it applies to the whole message).
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace rainserve

#define RAINSERVE_LOG_LEVEL_DEBUG ::rainserve::LogLevel::kDebug
#define RAINSERVE_LOG_LEVEL_INFO ::rainserve::LogLevel::kInfo
#define RAINSERVE_LOG_LEVEL_WARNING ::rainserve::LogLevel::kWarning
#define RAINSERVE_LOG_LEVEL_ERROR ::rainserve::LogLevel::kError

// One expression (not an if statement), so that `if (x) RAINSERVE_LOG(...) << ...;`
// has no dangling else.
#define RAINSERVE_LOG(level)                                                       \
  (RAINSERVE_LOG_LEVEL_##level < ::rainserve::GetLogLevel())                       \
      ? (void)0                                                                    \
      : ::rainserve::internal::LogVoidify() &                                      \
            ::rainserve::internal::LogMessage(RAINSERVE_LOG_LEVEL_##level, __FILE__, \
                                              __LINE__)                            \
                .stream()
