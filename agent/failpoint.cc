#include "agent/failpoint.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <string>

namespace certfleet::agent {

namespace {

struct Armed {
  std::string name;  // "" = none
  long hit = 1;      // fire on this hit (1 = the first)
  std::atomic<long> seen{0};
};

Armed& ArmedPoint() {
  static Armed* armed = [] {
    auto* a = new Armed;
    const char* env = std::getenv(std::string(kFailpointEnv).c_str());
    if (env == nullptr) return a;
    std::string spec(env);
    size_t colon = spec.rfind(':');
    if (colon != std::string::npos) {
      char* end = nullptr;
      long n = std::strtol(spec.c_str() + colon + 1, &end, 10);
      if (end != nullptr && *end == '\0' && n > 0) {
        a->hit = n;
        spec.resize(colon);
      }
    }
    a->name = spec;
    return a;
  }();
  return *armed;
}

}  // namespace

const std::vector<std::string_view>& FailpointNames() {
  static const std::vector<std::string_view> names = {
      kFpRotatingJournaled,     kFpRotateKeyGenerated,    kFpRotateCertIssued,      kFpVerifyingJournaled,
      kFpAckAcknowledged,       kFpCommittingJournaled,   kFpRotateCertFileWritten, kFpActiveJournaled,
      kFpOldKeyDeleted,         kFpProvisioningJournaled, kFpEnrollKeyGenerated,    kFpEnrollCertReceived,
      kFpEnrollCertFileWritten, kFpClaimKeyGenerated,     kFpClaimCertReceived,     kFpClaimRegistered,
      kFpClaimStateFileWritten, kFpClaimCertFileWritten,  kFpProvisionedJournaled,
  };
  return names;
}

void Failpoint(std::string_view name) {
  Armed& a = ArmedPoint();
  if (a.name.empty() || a.name != name) return;
  if (a.seen.fetch_add(1) + 1 != a.hit) return;
  // write(2) only: the process is about to vanish as on a power cut.
  std::string line = "failpoint " + std::string(name) + ": SIGKILL\n";
  (void)!write(STDERR_FILENO, line.data(), line.size());
  raise(SIGKILL);
}

}  // namespace certfleet::agent
