// Base64 (RFC 4648) as EST uses it.
#pragma once

#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::shared {

// Encodes in lines of 64 characters, each ending in LF (including the last one),
// which every EST client we know of decodes.
std::string Base64Encode(std::string_view data);

// Encodes on one line with no newline (for tokens, headers).
std::string Base64EncodeLine(std::string_view data);

// The URL- and filename-safe alphabet (RFC 4648 section 5: '-' and '_'), unpadded, on
// one line: secrets and cursors that travel in URLs and headers.
std::string Base64UrlEncode(std::string_view data);

// Decodes leniently (RFC 8951): ASCII whitespace (space, tab, CR, LF) anywhere and
// trailing NUL bytes are ignored; padding is optional. Any other character outside
// the alphabet, misplaced padding, or a dangling 6-bit group gives kInvalidArgument.
Result<std::string> Base64Decode(std::string_view text);

}  // namespace certfleet::shared
