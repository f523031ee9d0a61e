// Clock seam: wall time for certificate validity, monotonic time for timeouts and backoff.
// Implementations are thread-safe.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <string_view>

namespace certfleet::shared {

using WallTime = std::chrono::system_clock::time_point;
using MonoTime = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual WallTime Now() const = 0;
  virtual MonoTime Monotonic() const = 0;
};

class SystemClock final : public Clock {
 public:
  WallTime Now() const override { return std::chrono::system_clock::now(); }
  MonoTime Monotonic() const override { return std::chrono::steady_clock::now(); }
  // A process-wide instance.
  static SystemClock& Instance();
};

// A clock that moves only when told to. For tests.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(WallTime start) : now_(start) {}
  WallTime Now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  MonoTime Monotonic() const override {
    std::lock_guard lock(mu_);
    return mono_;
  }
  void Advance(std::chrono::nanoseconds d) {
    std::lock_guard lock(mu_);
    now_ += std::chrono::duration_cast<WallTime::duration>(d);
    mono_ += std::chrono::duration_cast<MonoTime::duration>(d);
  }
  void SetWall(WallTime t) {
    std::lock_guard lock(mu_);
    now_ = t;
  }

 private:
  mutable std::mutex mu_;
  WallTime now_;
  MonoTime mono_{};
};

inline int64_t ToUnixSeconds(WallTime t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}
// Saturates at WallTime::min()/max() outside WallTime's range (years 1678 to 2262):
// X.509 uses 99991231235959Z for "no well-defined expiration".
inline WallTime FromUnixSeconds(int64_t s) {
  constexpr int64_t kLimit = std::chrono::duration_cast<std::chrono::seconds>(WallTime::duration::max()).count();
  if (s > kLimit) return WallTime::max();
  if (s < -kLimit) return WallTime::min();
  return WallTime(std::chrono::seconds(s));
}

// RFC 3339 UTC, second precision: "2026-11-23T06:41:52Z".
std::string FormatRfc3339(WallTime t);
// Parses exactly the form FormatRfc3339 writes ("YYYY-MM-DDTHH:MM:SSZ", a real calendar
// date, years 1970-9999; past 2262 it saturates at WallTime::max()). Returns false for
// anything else. Pure; thread-safe.
bool ParseRfc3339(std::string_view text, WallTime* out);

}  // namespace certfleet::shared
