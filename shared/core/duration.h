// Human durations in config and on the command line: "90s", "15m", "24h", "30d",
// or combinations such as "1d12h". A bare number is seconds.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::shared {

// kInvalidArgument for empty input, unknown units, negative or overflowing values.
Result<std::chrono::seconds> ParseDuration(std::string_view text);
std::string FormatDuration(std::chrono::seconds d);

}  // namespace certfleet::shared
