// Fuzzes the audit's parsers of operator and file input: the schedule, time of day and
// weekday strings of [audit], and the mosquitto ACL reader of the policy check. The
// first byte picks the parser. A parsed schedule must give a next run after any instant.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "companion/audit_config.h"
#include "companion/audit_policy.h"

using namespace certfleet;  // NOLINT(google-build-using-namespace): fuzzer only

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: {
      auto s = companion::ParseAuditSchedule(text);
      if (s) {
        const shared::WallTime t = shared::FromUnixSeconds(1767225600);
        if (s->kind != companion::AuditSchedule::kOff && companion::NextAuditRun(*s, t) <= t) std::abort();
      }
      break;
    }
    case 1: (void)companion::ParseTimeOfDay(text); break;
    case 2: (void)companion::ParseWeekday(text); break;
    default: {
      for (const auto& g : companion::FindPermissiveAclGrants(text, "certfleet-companion")) {
        if (g.line < 1) std::abort();
      }
    }
  }
  return 0;
}
