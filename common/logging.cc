#include "common/logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace rainserve {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::mutex g_write_mutex;

char LevelLetter(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return 'D';
    case LogLevel::kInfo: return 'I';
    case LogLevel::kWarning: return 'W';
    case LogLevel::kError: return 'E';
  }
  return '?';
}

}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warning") return LogLevel::kWarning;
  if (name == "error") return LogLevel::kError;
  return InvalidArgumentError("unknown log level '" + std::string(name) +
                              "' (expected debug, info, warning or error)");
}

bool LogRateLimiter::AllowAt(std::chrono::steady_clock::time_point now, uint64_t* suppressed) {
  std::lock_guard<std::mutex> lock(mu_);
  if (now - window_start_ >= std::chrono::seconds(1)) {
    window_start_ = now;
    passed_ = 0;
  }
  if (passed_ >= per_second_) {
    ++suppressed_;
    *suppressed = 0;
    return false;
  }
  ++passed_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

std::string SuppressedNote(uint64_t suppressed) {
  if (suppressed == 0) return "";
  return " (" + std::to_string(suppressed) + " similar lines suppressed)";
}

namespace internal {

LogMessage::LogMessage(LogLevel level, const char* file, int line) {
  using Clock = std::chrono::system_clock;
  const auto now = Clock::now();
  const std::time_t secs = Clock::to_time_t(now);
  const auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  std::string_view path(file);
  const auto slash = path.find_last_of('/');
  if (slash != std::string_view::npos) path.remove_prefix(slash + 1);
  char prefix[96];
  std::snprintf(prefix, sizeof(prefix), "%c %s.%06lldZ %.*s:%d] ", LevelLetter(level), stamp,
                static_cast<long long>(micros), static_cast<int>(path.size()), path.data(), line);
  stream_ << prefix;
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string text = stream_.str();
  std::lock_guard<std::mutex> lock(g_write_mutex);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace internal
}  // namespace rainserve
