// PKCS#7 / CMS "certs-only" messages, as EST carries certificates.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::shared {

// DER of a degenerate SignedData holding `certs` (no signers, no content).
Result<std::string> BuildCertsOnly(const std::vector<X509*>& certs);

// Parses a DER certs-only message. kInvalidArgument unless it is a SignedData with at
// least one certificate and no trailing data.
Result<std::vector<X509Ptr>> ParseCertsOnly(std::string_view der);

}  // namespace certfleet::shared
