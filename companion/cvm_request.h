// The certificate vending endpoint's request body (POST /cvm/v1/certificates), parsed
// without side effects so that it can be fuzzed on its own (tests/fuzz/fuzz_cvm_request.cc).
#pragma once

#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::companion {

struct CvmRequest {
  std::string serial_number;
  std::string registration_token;  // a secret: wipe it once checked
  std::string csr_pem;
};

// Parses {"serialNumber": "...", "registrationToken": "...", "certificateSigningRequest": "..."}.
// Other members are ignored. The values are not checked beyond being strings: the serial's
// syntax, the token and the CSR are the endpoint's business. kInvalidArgument when the body
// is not a JSON object or a member is missing or not a string; never throws.
shared::Result<CvmRequest> ParseCvmRequest(std::string_view body);

}  // namespace certfleet::companion
