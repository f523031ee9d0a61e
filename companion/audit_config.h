// The [audit] section of companion.toml (docs/audit.md, docs/config.md): the audit
// schedule, per-check settings and mitigations. Parsing of the schedule is here (pure,
// fuzzed); the keys are registered in config.cc.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/status.h"

namespace certfleet::companion {

// Check names (REFERENCE.md section 3, plus certfleet's own).
inline constexpr std::string_view kCheckDeviceCertExpiring = "DEVICE_CERTIFICATE_EXPIRING_CHECK";
inline constexpr std::string_view kCheckDeviceCertAge = "DEVICE_CERTIFICATE_AGE_CHECK";
inline constexpr std::string_view kCheckCaCertExpiring = "CA_CERTIFICATE_EXPIRING_CHECK";
inline constexpr std::string_view kCheckRevokedStillActive = "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK";
inline constexpr std::string_view kCheckDeviceKeyQuality = "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK";
inline constexpr std::string_view kCheckCaKeyQuality = "CA_CERTIFICATE_KEY_QUALITY_CHECK";
inline constexpr std::string_view kCheckPolicyPermissive = "IOT_POLICY_OVERLY_PERMISSIVE_CHECK";
inline constexpr std::string_view kCheckAgentNotSeen = "AGENT_NOT_SEEN_CHECK";
inline constexpr std::string_view kCheckRotationOverdue = "ROTATION_REQUEST_OVERDUE_CHECK";
inline constexpr std::string_view kCheckActiveWithoutThing = "ACTIVE_CERTIFICATE_WITHOUT_THING_CHECK";

// Mitigation action names.
inline constexpr std::string_view kActionRotate = "ROTATE_DEVICE_CERTIFICATE";
inline constexpr std::string_view kActionDeactivate = "DEACTIVATE_DEVICE_CERTIFICATE";
inline constexpr std::string_view kActionQuarantine = "QUARANTINE_THING";
inline constexpr std::string_view kActionNotify = "NOTIFY";

struct AuditCheckSpec {
  std::string_view name;
  std::string_view severity;       // CRITICAL, HIGH, MEDIUM, LOW
  std::string_view resource_type;  // DEVICE_CERTIFICATE, CA_CERTIFICATE, IOT_POLICY, THING, ROTATION_REQUEST
  std::chrono::seconds default_threshold;  // 0: the check has no duration threshold
  bool device_resource;            // findings name a thing (device mitigations apply)
};
// Every check, in report order.
const std::vector<AuditCheckSpec>& AuditChecks();
const AuditCheckSpec* FindAuditCheck(std::string_view name);
bool IsMitigationAction(std::string_view name);
// Every reason code with its reasonForNonCompliance text.
const std::vector<std::pair<std::string_view, std::string_view>>& AuditReasonTexts();

// When scheduled audits run. Times are UTC.
struct AuditSchedule {
  enum Kind { kOff, kDaily, kWeekly, kBiweekly, kMonthly, kInterval };
  Kind kind = kOff;
  std::chrono::seconds interval{0};    // kInterval: at every multiple of it since the epoch
  std::chrono::minutes time_of_day{180};  // kDaily..kMonthly: minutes after midnight (03:00)
  unsigned weekday = 1;                // kWeekly, kBiweekly: 0 Sunday .. 6 Saturday
  unsigned day_of_month = 1;           // kMonthly: 1-31, the month's last day when shorter
};

// "off", "daily", "weekly", "biweekly", "monthly" or "every <duration>" (at least 1m,
// e.g. "every 6h"). kInvalidArgument otherwise. Pure.
shared::Result<AuditSchedule> ParseAuditSchedule(std::string_view text);
// "HH:MM" (24 h) -> minutes after midnight.
shared::Result<std::chrono::minutes> ParseTimeOfDay(std::string_view text);
// "sunday".."saturday" -> 0..6.
shared::Result<unsigned> ParseWeekday(std::string_view text);
// The first run strictly after `after`; WallTime::max() for kOff. Biweekly runs on
// the schedule's weekday of even weeks counted from Monday 1970-01-05. Pure.
shared::WallTime NextAuditRun(const AuditSchedule& schedule, shared::WallTime after);

struct AuditCheckConfig {
  bool enabled = true;
  std::optional<std::chrono::seconds> threshold;  // unset: the check's default (AuditCheckSpec)
  int min_rsa_bits = 2048;            // key quality checks
  int min_ec_bits = 256;
  std::vector<std::string> mitigations;  // action names
};

struct AuditConfig {
  AuditSchedule schedule;
  std::string report_dir;                                   // default STATE/audit-reports
  std::chrono::seconds retention = std::chrono::hours(24 * 90);  // reports and tasks older are pruned
  std::chrono::seconds rotation_deadline = std::chrono::hours(24 * 7);  // ROTATE_DEVICE_CERTIFICATE
  std::string notify_topic = "certfleet/audit/findings";    // NOTIFY over MQTT
  std::vector<std::string> policy_files;                    // mosquitto ACL files to audit
  std::map<std::string, AuditCheckConfig, std::less<>> checks;  // by check name; absent = defaults

  // The settings of `check` (defaults when not configured), threshold resolved.
  AuditCheckConfig For(std::string_view check) const;
};

// Applies one key of an [audit.checks.<CHECK>] table to `config`: `rest` is
// "<CHECK>.<key>" with key enabled, threshold (duration), min_rsa_bits, min_ec_bits or
// mitigations (action names). kInvalidArgument for an unknown check, key or action, a
// key the check does not have, or a mitigation that does not fit the check.
class AuditCheckKeyValue {
 public:
  virtual ~AuditCheckKeyValue() = default;
  virtual shared::Result<bool> AsBool() const = 0;
  virtual shared::Result<int64_t> AsInt() const = 0;
  virtual shared::Result<std::string> AsString() const = 0;
  virtual shared::Result<std::vector<std::string>> AsStringList() const = 0;
};
shared::Status ApplyAuditCheckKey(const std::string& rest, const AuditCheckKeyValue& value, AuditConfig& config);


}  // namespace certfleet::companion
