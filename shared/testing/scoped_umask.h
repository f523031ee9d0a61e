// Sets the process umask for the lifetime of the object and restores the previous one.
// Header-only, for the tests of every module. The umask is process-wide: use it only in
// tests that run one per process (ctest runs each gtest case in its own process).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

namespace certfleet::shared {

class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : old_(::umask(mask)) {}
  ~ScopedUmask() { ::umask(old_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t old_;
};

}  // namespace certfleet::shared
