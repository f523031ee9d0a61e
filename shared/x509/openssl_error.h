// Turns the OpenSSL error queue into a Status.
#pragma once

#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::shared {

// Empties this thread's OpenSSL error queue and returns its entries joined by "; ".
std::string DrainOpenSslErrors();

// A Status with `code` and "what: <drained OpenSSL errors>".
Status OpenSslStatus(Code code, std::string_view what);

}  // namespace certfleet::shared
