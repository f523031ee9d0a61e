#include "agent/renewal.h"

#include <algorithm>
#include <cmath>

#include "agent/provision.h"

namespace certfleet::agent {

using std::chrono::duration_cast;
using std::chrono::milliseconds;
using std::chrono::seconds;
namespace sh = shared;

double JitterDraw(std::string_view certificate_id) {
  uint64_t v = 0;
  size_t used = 0;
  for (char c : certificate_id) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      continue;
    }
    v = (v << 4) | static_cast<uint64_t>(digit);
    if (++used == 13) break;  // 52 bits: exact in a double
  }
  if (used == 0) return 0.0;
  return static_cast<double>(v) / std::ldexp(1.0, static_cast<int>(used) * 4);
}

sh::WallTime NextRenewal(sh::WallTime not_before, sh::WallTime not_after, const RenewalPolicy& policy, double draw) {
  if (not_after <= not_before) return not_before;
  const seconds lifetime = duration_cast<seconds>(not_after - not_before);
  sh::WallTime point;
  if (policy.before_expiry.count() > 0) {
    point = policy.before_expiry >= lifetime ? not_before : not_after - policy.before_expiry;
  } else {
    double t = std::clamp(policy.threshold, 0.0, 1.0);
    point = not_before + seconds(static_cast<int64_t>(static_cast<double>(lifetime.count()) * t));
  }
  double j = std::clamp(policy.jitter, 0.0, 1.0) * std::clamp(draw, 0.0, 1.0);
  sh::WallTime jittered = point - seconds(static_cast<int64_t>(static_cast<double>(lifetime.count()) * j));
  return std::max(jittered, not_before);
}

sh::WallTime NextAttemptAfterFailure(sh::WallTime now, int failures, const RenewalPolicy& policy,
                                     std::mt19937_64& random) {
  milliseconds delay = BackoffDelay(std::max(failures, 1), random, duration_cast<milliseconds>(policy.retry_base),
                                    duration_cast<milliseconds>(policy.retry_cap));
  // Full jitter can draw 0; keep a floor of a tenth of the base so that a failing
  // attempt never spins.
  delay = std::max(delay, duration_cast<milliseconds>(policy.retry_base) / 10);
  return now + duration_cast<sh::WallTime::duration>(delay);
}

TimeTrust TrustedTime(sh::WallTime now, std::optional<sh::WallTime> last_trusted, std::optional<bool> synchronized) {
  if (synchronized.has_value() && !*synchronized) {
    return {false, "the system clock is not synchronised yet"};
  }
  if (last_trusted && now + kClockTolerance < *last_trusted) {
    return {false, "the system clock is behind the last trusted time " + sh::FormatRfc3339(*last_trusted)};
  }
  return {true, ""};
}

sh::WallTime ValidityCheckTime(sh::WallTime now, bool trusted, sh::WallTime not_before, sh::WallTime not_after) {
  if (trusted || not_after <= not_before) return now;
  return not_before + (not_after - not_before) / 2;
}

}  // namespace certfleet::agent
