// Fuzzes the provisioning template engine: parse the input as a template; if it loads,
// apply it to a few parameter maps and check the invariants of every result.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "companion/provisioning_template.h"

namespace {

using namespace certfleet::companion;  // NOLINT(google-build-using-namespace): fuzzer only
using certfleet::shared::Code;
using Params = std::map<std::string, std::string>;

void Check(bool ok) {
  if (!ok) std::abort();
}

bool OnlyOf(std::string_view s, std::string_view extra, size_t min, size_t max) {
  if (s.size() < min || s.size() > max) return false;
  for (char c : s) {
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && extra.find(c) == std::string_view::npos) return false;
  }
  return true;
}

void ApplyAndCheck(const ProvisioningTemplate& t, const Params& params, const Params& overrides) {
  static const CertificateFacts cert{std::string(64, 'a'), "claim-batch-1", "0A1B", "DE"};
  auto r = ApplyTemplate(t, params, cert, overrides);
  if (!r) {
    Check(r.error().code() == Code::kInvalidArgument && !r.error().message().empty());
    return;
  }
  Check(OnlyOf(r->thing_name, ":_.-", 1, 128));
  Check(r->certificate_status.empty() || r->certificate_status == "ACTIVE" || r->certificate_status == "INACTIVE");
  if (!t.certificate) {
    Check(r->certificate_status.empty());
  } else if (t.certificate->condition.empty()) {
    Check(!r->certificate_status.empty());
  }
  Check(r->thing_type.empty() || OnlyOf(r->thing_type, ":_-", 1, 128));
  Check(r->policy_name.empty() || OnlyOf(r->policy_name, "_+=,.@-", 1, 128));
  for (size_t i = 0; i < r->groups.size(); ++i) {
    Check(OnlyOf(r->groups[i], ":_-", 1, 128));
    for (size_t j = 0; j < i; ++j) Check(r->groups[i] != r->groups[j]);
  }
  for (const auto& [name, value] : r->attributes) Check(OnlyOf(value, "_.,@/:#=[]-", 0, 800));
  for (const auto& [name, value] : r->override_settings) {
    Check(value == "DO_NOTHING" || value == "REPLACE" || value == "FAIL" || value == "MERGE");
  }
  Check(r->device_configuration.size() == t.device_configuration.size());
  // Applying is a pure function of its inputs.
  auto again = ApplyTemplate(t, params, cert, overrides);
  Check(again && again->thing_name == r->thing_name && again->device_configuration == r->device_configuration);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto t = ParseProvisioningTemplate("fuzz", input);
  if (!t) {
    Check(t.error().code() == Code::kInvalidArgument);
    Check(t.error().message().rfind("template 'fuzz': ", 0) == 0);
    return 0;
  }
  Check(t->name == "fuzz");

  // Fixed maps, then every declared parameter set to one value (a full, valid-looking request).
  ApplyAndCheck(*t, {}, {});
  ApplyAndCheck(*t, {{"SerialNumber", "123"}, {"Model", "gw-100"}}, {});
  ApplyAndCheck(*t, {{"SerialNumber", "a b/c"}}, {{"Model", ""}});
  Params all_numbers;
  Params all_words;
  for (const auto& [name, p] : t->parameters) {
    if (IsCertificateParameter(name)) continue;
    all_numbers[name] = "1";
    all_words[name] = "gw-" + name;
  }
  ApplyAndCheck(*t, all_numbers, {});
  ApplyAndCheck(*t, all_words, all_numbers);

  // A device never sets a certificate-derived parameter.
  for (const char* forged : {kCertificateIdParameter, kCertificateCommonNameParameter}) {
    Params p = all_numbers;
    p[forged] = "forged";
    Check(!ApplyTemplate(*t, p, CertificateFacts{}));
    Check(!ApplyTemplate(*t, all_numbers, CertificateFacts{}, {{forged, "forged"}}));
  }

  (void)ClaimSubjectAllowed(*t, "claim-batch-7");
  (void)ClaimSubjectAllowed(*t, std::string(300, 'a'));
  return 0;
}
