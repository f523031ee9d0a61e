// The renewal policy and the trusted-time rule: pure functions of `now` and of what the
// caller read from the certificate, the journal and the system. No I/O; thread-safe.
//
// Renewal: the certificate is renewed at `threshold` of its lifetime (default 0.8:
// notBefore + 0.8 * (notAfter - notBefore)) or, when `before_expiry` is set, that long
// before notAfter (never before notBefore). The point is moved earlier by a jitter of up
// to `jitter` of the lifetime, so that a fleet issued in one batch does not renew in one
// burst; the draw is a function of the certificate id, so a device plans the same moment
// after every restart while devices differ from each other.
//
// Trusted time (docs/agent.md): the clock is trusted only when the system says it is
// synchronised (when that check is configured) and it is not behind the last trusted
// time the agent recorded (its own journal writes and server Date headers) by more than
// kClockTolerance. On an untrusted clock the agent never decides that a certificate is
// expired or not yet valid, and does not start renewals on its own schedule; rotations
// asked for by the companion or `renew --now` still run.
#pragma once

#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <string_view>

#include "shared/core/clock.h"

namespace certfleet::agent {

struct RenewalPolicy {
  double threshold = 0.8;                   // fraction of the lifetime, (0, 1)
  std::chrono::seconds before_expiry{0};    // > 0: renew this long before notAfter instead
  double jitter = 0.05;                     // up to this fraction of the lifetime earlier, [0, 0.5]
  std::chrono::seconds retry_base{60};      // backoff after a failed attempt: base doubling ...
  std::chrono::seconds retry_cap{6 * 3600};  // ... up to cap, full jitter
};

// A number in [0, 1) derived from the certificate id (hex); 0 for an empty id.
double JitterDraw(std::string_view certificate_id);

// When to renew a certificate valid from `not_before` to `not_after`; `draw` in [0, 1).
shared::WallTime NextRenewal(shared::WallTime not_before, shared::WallTime not_after, const RenewalPolicy& policy,
                             double draw);

// When to try again after `failures` (>= 1) consecutive failed attempts ending at `now`.
shared::WallTime NextAttemptAfterFailure(shared::WallTime now, int failures, const RenewalPolicy& policy,
                                         std::mt19937_64& random);

inline constexpr std::chrono::minutes kClockTolerance{5};

struct TimeTrust {
  bool trusted = false;
  std::string reason;  // why not, for status and logs; "" when trusted
};
// `synchronized`: nullopt when the system's synchronisation status is not checked.
TimeTrust TrustedTime(shared::WallTime now, std::optional<shared::WallTime> last_trusted,
                      std::optional<bool> synchronized);

// The time at which to check a certificate's validity: `now` on a trusted clock;
// otherwise a moment inside [not_before, not_after], so that validity is not judged.
shared::WallTime ValidityCheckTime(shared::WallTime now, bool trusted, shared::WallTime not_before,
                                   shared::WallTime not_after);

}  // namespace certfleet::agent
