// The first step of every wire decoder: size limit, then a strict, non-throwing parse of
// one JSON object. Internal to shared/wire.
#pragma once

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

#include "shared/core/status.h"

namespace certfleet::shared {

// kResourceExhausted for a payload over `max_bytes` (before parsing it); kInvalidArgument
// ("<what>: payload is not ...") for anything but one JSON object (RFC 8259, nothing after
// it, no NUL byte). Pure; thread-safe.
Result<nlohmann::json> ParseJsonPayload(std::string_view what, std::string_view payload, size_t max_bytes);

}  // namespace certfleet::shared
