#include "shared/core/duration.h"

#include <cstdint>
#include <limits>

namespace certfleet::shared {

Result<std::chrono::seconds> ParseDuration(std::string_view text) {
  if (text.empty()) return Error(Code::kInvalidArgument, "empty duration");
  int64_t total = 0;
  size_t i = 0;
  constexpr int64_t kMax = kMaxDurationSeconds;
  while (i < text.size()) {
    const bool first = i == 0;
    if (text[i] < '0' || text[i] > '9') {
      return Error(Code::kInvalidArgument, "bad duration '" + std::string(text) + "': expected a number");
    }
    int64_t n = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      n = n * 10 + (text[i] - '0');
      if (n > kMax) return Error(Code::kInvalidArgument, "duration too large: " + std::string(text));
      ++i;
    }
    int64_t unit = 1;
    if (i < text.size()) {
      switch (text[i]) {
        case 's': unit = 1; break;
        case 'm': unit = 60; break;
        case 'h': unit = 3600; break;
        case 'd': unit = 86400; break;
        case 'w': unit = 7 * 86400; break;
        default:
          return Error(Code::kInvalidArgument,
                       "bad duration '" + std::string(text) + "': units are s, m, h, d, w");
      }
      ++i;
    } else if (!first) {
      return Error(Code::kInvalidArgument, "bad duration '" + std::string(text) + "': missing unit");
    }
    total += n * unit;
    if (total > kMax) return Error(Code::kInvalidArgument, "duration too large: " + std::string(text));
  }
  return std::chrono::seconds(total);
}

std::string FormatDuration(std::chrono::seconds d) {
  int64_t s = d.count();
  if (s != 0 && s % 86400 == 0) return std::to_string(s / 86400) + "d";
  if (s != 0 && s % 3600 == 0) return std::to_string(s / 3600) + "h";
  if (s != 0 && s % 60 == 0) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

}  // namespace certfleet::shared
