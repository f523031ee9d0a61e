// Helpers shared by the load generators (est-load, provision-load): preparing work on
// all cores, latency statistics and the figures they print. Header-only.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shared/core/status.h"

namespace certfleet::bench {

// Runs fn(i) for i in [0, count) on all cores; returns the first error (the remaining
// indices are then skipped). fn must be safe to call from several threads at once.
inline shared::Status ParallelFor(int64_t count, const std::function<shared::Status(int64_t)>& fn) {
  std::atomic<int64_t> next{0};
  std::mutex mu;
  shared::Status first;
  unsigned n = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; ++t) {
    threads.emplace_back([&] {
      for (int64_t i; (i = next.fetch_add(1)) < count;) {
        shared::Status st = fn(i);
        if (!st.ok()) {
          std::lock_guard lock(mu);
          if (first.ok()) first = st;
          next = count;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return first;
}

// Nearest-rank percentile (p in [0, 100]) of ascending `sorted`; 0 when it is empty.
inline double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// User+system CPU seconds this process has used so far.
inline double ProcessCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

// `v` with `digits` decimals, as printf's %.*f.
inline std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace certfleet::bench
