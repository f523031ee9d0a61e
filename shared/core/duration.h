// Human durations in config and on the command line: "90s", "15m", "24h", "30d",
// or combinations such as "1d12h". A bare number is seconds.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::shared {

// The longest duration accepted: 36525 days (100 years). Any now + duration fits the
// nanosecond clock (to 2262) with room to spare, so callers add without overflow checks.
inline constexpr int64_t kMaxDurationSeconds = int64_t{36525} * 86400;

// kInvalidArgument for empty input, unknown units, negative values or values above
// kMaxDurationSeconds.
Result<std::chrono::seconds> ParseDuration(std::string_view text);
std::string FormatDuration(std::chrono::seconds d);

}  // namespace certfleet::shared
