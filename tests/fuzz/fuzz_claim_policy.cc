// Fuzzes the claim-policy parser (claim-policy.json, read by the mosquitto plugin): parse
// the input; whatever it accepts must serialise to JSON that parses back to the same text,
// and deciding on it must not crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "companion/broker_plugin/claim_policy.h"

namespace {

namespace bp = certfleet::broker_plugin;

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto policy = bp::ParseClaimPolicy(input);
  if (!policy) {
    Check(policy.error().code() == certfleet::shared::Code::kInvalidArgument);
    return 0;
  }
  std::string json = bp::ClaimPolicyToJson(*policy);
  auto again = bp::ParseClaimPolicy(json);
  Check(again.has_value());
  Check(bp::ClaimPolicyToJson(*again) == json);
  std::vector<size_t> all(policy->rules.size());
  std::iota(all.begin(), all.end(), 0);
  for (const char* topic : {"certfleet/provisioning/c/d/provisioning-templates/gateway/provision/json",
                            "certfleet/provisioning/c/d/provisioning-templates/+/provision/json/accepted",
                            "certfleet/provisioning/c/d/certificates/create-from-csr/json", "$aws/provisioning-templates/x"}) {
    bp::ClaimDecision d = bp::DecideClaimAccess(*policy, all, topic, bp::ClaimAccess::kWrite);
    Check(d.reason != nullptr);
    Check(bp::DecideClaimAccess(*policy, {}, topic, bp::ClaimAccess::kWrite).verdict == bp::ClaimVerdict::kDeny);
  }
  return 0;
}
