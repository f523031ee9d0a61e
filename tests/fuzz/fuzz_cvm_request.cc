// Fuzzes the certificate vending endpoint's request body parser (companion/cvm_request.h)
// with a round-trip property: whatever it accepts, re-encoded as JSON, parses to the same
// three strings.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <nlohmann/json.hpp>

#include "companion/cvm_request.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto parsed = certfleet::companion::ParseCvmRequest(body);
  if (!parsed) {
    Check(parsed.error().code() == certfleet::shared::Code::kInvalidArgument, "failed with an undocumented code");
    Check(!parsed.error().message().empty(), "error without a message");
    return 0;
  }
  // nlohmann accepts only valid UTF-8 strings, so these dump without throwing.
  nlohmann::json again{{"serialNumber", parsed->serial_number},
                       {"registrationToken", parsed->registration_token},
                       {"certificateSigningRequest", parsed->csr_pem}};
  auto second = certfleet::companion::ParseCvmRequest(again.dump());
  Check(second.has_value(), "a re-encoded request does not parse");
  Check(second->serial_number == parsed->serial_number && second->registration_token == parsed->registration_token &&
            second->csr_pem == parsed->csr_pem,
        "round trip changed the request");
  return 0;
}
