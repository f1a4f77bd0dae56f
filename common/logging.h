// Minimal leveled logging to stderr, one line per message, thread-safe.
//
//   RAINSERVE_LOG(INFO) << "listening on " << address;
//
// Messages below the process-wide level (SetLogLevel) cost one comparison.
// Never log prompts or other user text at INFO or above.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>

#include "common/status.h"

namespace rainserve {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// "debug" | "info" | "warning" | "error".
StatusOr<LogLevel> ParseLogLevel(std::string_view name);

// Caps log lines that clients can cause (malformed requests, ...): at most
// `per_second` lines pass in each one-second window; the rest are counted,
// and the next line that passes reports the count.
//
//   uint64_t suppressed = 0;
//   if (limiter.Allow(&suppressed)) {
//     RAINSERVE_LOG(WARNING) << "..." << SuppressedNote(suppressed);
//   }
//
// Thread-safe.
class LogRateLimiter {
 public:
  explicit LogRateLimiter(int per_second) : per_second_(per_second) {}
  // True when a line may be written now. `*suppressed` is set to the number
  // of lines refused since the last one that passed (0 when refused).
  bool Allow(uint64_t* suppressed) { return AllowAt(std::chrono::steady_clock::now(), suppressed); }
  bool AllowAt(std::chrono::steady_clock::time_point now, uint64_t* suppressed);

 private:
  const int per_second_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point window_start_{};
  int passed_ = 0;           // lines let through in the current window
  uint64_t suppressed_ = 0;  // lines refused since the last one let through
};

// "" for 0, else " (N similar lines suppressed)".
std::string SuppressedNote(uint64_t suppressed);

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
