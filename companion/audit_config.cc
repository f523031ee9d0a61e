#include "companion/audit_config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <utility>

#include "shared/core/duration.h"

namespace certfleet::companion {

using shared::Code;
using shared::Status;

namespace {
constexpr std::chrono::seconds Days(int64_t n) { return std::chrono::hours(24 * n); }
}  // namespace

const std::vector<AuditCheckSpec>& AuditChecks() {
  static const std::vector<AuditCheckSpec> checks = {
      {kCheckDeviceCertExpiring, "MEDIUM", "DEVICE_CERTIFICATE", Days(30), true},
      {kCheckDeviceCertAge, "LOW", "DEVICE_CERTIFICATE", Days(365), true},
      {kCheckCaCertExpiring, "MEDIUM", "CA_CERTIFICATE", Days(30), false},
      {kCheckRevokedStillActive, "MEDIUM", "DEVICE_CERTIFICATE", std::chrono::seconds(0), true},
      {kCheckDeviceKeyQuality, "CRITICAL", "DEVICE_CERTIFICATE", std::chrono::seconds(0), true},
      {kCheckCaKeyQuality, "CRITICAL", "CA_CERTIFICATE", std::chrono::seconds(0), false},
      {kCheckPolicyPermissive, "CRITICAL", "IOT_POLICY", std::chrono::seconds(0), false},
      {kCheckAgentNotSeen, "MEDIUM", "THING", Days(7), true},
      {kCheckRotationOverdue, "HIGH", "ROTATION_REQUEST", std::chrono::seconds(0), true},
      {kCheckActiveWithoutThing, "HIGH", "DEVICE_CERTIFICATE", Days(7), true},
  };
  return checks;
}

const AuditCheckSpec* FindAuditCheck(std::string_view name) {
  for (const auto& c : AuditChecks()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

const std::vector<std::pair<std::string_view, std::string_view>>& AuditReasonTexts() {
  static const std::vector<std::pair<std::string_view, std::string_view>> texts = {
      {"CERTIFICATE_APPROACHING_EXPIRATION", "Certificate is approaching expiration"},
      {"CERTIFICATE_PAST_EXPIRATION", "Certificate is past its expiration"},
      {"CERTIFICATE_PAST_AGE_THRESHOLD", "Certificate has been in use longer than the age threshold"},
      {"CERTIFICATE_REVOKED_BY_ISSUER", "Certificate was revoked but is still in use"},
      {"CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361", "RSA key has the ROCA fingerprint"},
      {"CERTIFICATE_KEY_TOO_SHORT", "Key is shorter than the key size policy"},
      {"CERTIFICATE_KEY_TYPE_NOT_ALLOWED", "Key type is not allowed"},
      {"CERTIFICATE_WEAK_SIGNATURE_ALGORITHM", "Certificate is signed with a weak hash"},
      {"ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS", "Policy grants wildcard topics across things"},
      {"AGENT_NOT_SEEN_PAST_THRESHOLD", "The thing's agent has not been seen within the threshold"},
      {"ROTATION_REQUEST_PAST_DEADLINE", "Rotation request is past its deadline"},
      {"ACTIVE_CERTIFICATE_NOT_CURRENT", "A superseded certificate is still ACTIVE with no grace window"},
  };
  return texts;
}

bool IsMitigationAction(std::string_view name) {
  return name == kActionRotate || name == kActionDeactivate || name == kActionQuarantine || name == kActionNotify;
}

AuditCheckConfig AuditConfig::For(std::string_view check) const {
  AuditCheckConfig c;
  auto it = checks.find(check);
  if (it != checks.end()) c = it->second;
  if (!c.threshold) {
    const AuditCheckSpec* spec = FindAuditCheck(check);
    c.threshold = spec != nullptr ? spec->default_threshold : std::chrono::seconds(0);
  }
  return c;
}

Status ApplyAuditCheckKey(const std::string& rest, const AuditCheckKeyValue& value, AuditConfig& config) {
  const size_t dot = rest.find('.');
  if (dot == std::string::npos) return Status(Code::kInvalidArgument, "expected [audit.checks.<CHECK>] keys");
  const std::string name = rest.substr(0, dot);
  const std::string key = rest.substr(dot + 1);
  const AuditCheckSpec* spec = FindAuditCheck(name);
  if (spec == nullptr) return Status(Code::kInvalidArgument, "unknown audit check '" + name + "'");
  AuditCheckConfig& c = config.checks[name];
  const bool key_check = name == kCheckDeviceKeyQuality || name == kCheckCaKeyQuality;
  if (key == "enabled") {
    CF_ASSIGN_OR_RETURN(c.enabled, value.AsBool());
  } else if (key == "threshold") {
    if (spec->default_threshold.count() == 0) return Status(Code::kInvalidArgument, name + " has no threshold");
    CF_ASSIGN_OR_RETURN(std::string text, value.AsString());
    CF_ASSIGN_OR_RETURN(std::chrono::seconds d, shared::ParseDuration(text));
    if (d > Days(3653)) return Status(Code::kInvalidArgument, "threshold above 3653d");
    c.threshold = d;
  } else if (key == "min_rsa_bits" || key == "min_ec_bits") {
    if (!key_check) return Status(Code::kInvalidArgument, name + " has no " + key);
    CF_ASSIGN_OR_RETURN(int64_t bits, value.AsInt());
    if (bits < 128 || bits > 16384) return Status(Code::kInvalidArgument, key + " out of range [128, 16384]");
    (key == "min_rsa_bits" ? c.min_rsa_bits : c.min_ec_bits) = static_cast<int>(bits);
  } else if (key == "mitigations") {
    CF_ASSIGN_OR_RETURN(std::vector<std::string> actions, value.AsStringList());
    for (auto it = actions.begin(); it != actions.end(); ++it) {
      const std::string& a = *it;
      if (!IsMitigationAction(a)) return Status(Code::kInvalidArgument, "unknown mitigation action '" + a + "'");
      if (std::find(actions.begin(), it, a) != it) {
        return Status(Code::kInvalidArgument, "mitigation action " + a + " is listed twice for " + name);
      }
      if (a != kActionNotify && !spec->device_resource) {
        return Status(Code::kInvalidArgument, a + " does not apply to " + name + " (it names no thing)");
      }
      if (a == kActionDeactivate && spec->resource_type != "DEVICE_CERTIFICATE") {
        return Status(Code::kInvalidArgument, a + " does not apply to " + name + " (it names no device certificate)");
      }
      if (a == kActionDeactivate && name == kCheckRevokedStillActive) {
        return Status(Code::kInvalidArgument, a + " does not apply to " + name + " (a revoked certificate stays revoked)");
      }
    }
    c.mitigations = std::move(actions);
  } else {
    return Status(Code::kInvalidArgument, "unknown key '" + key + "' for " + name);
  }
  return Status::Ok();
}

shared::Result<AuditSchedule> ParseAuditSchedule(std::string_view text) {
  AuditSchedule s;
  if (text == "off") return s;
  if (text == "daily") s.kind = AuditSchedule::kDaily;
  else if (text == "weekly") s.kind = AuditSchedule::kWeekly;
  else if (text == "biweekly") s.kind = AuditSchedule::kBiweekly;
  else if (text == "monthly") s.kind = AuditSchedule::kMonthly;
  else if (text.rfind("every ", 0) == 0) {
    auto d = shared::ParseDuration(text.substr(6));
    if (!d) return shared::Error(d.error());
    if (*d < std::chrono::minutes(1) || *d > Days(366)) {
      return shared::Error(Code::kInvalidArgument, "audit interval must be between 1m and 366d");
    }
    s.kind = AuditSchedule::kInterval;
    s.interval = *d;
  } else {
    return shared::Error(Code::kInvalidArgument,
                         "schedule must be off, daily, weekly, biweekly, monthly or \"every <duration>\"");
  }
  return s;
}

shared::Result<std::chrono::minutes> ParseTimeOfDay(std::string_view text) {
  if (text.size() != 5 || text[2] != ':' || !std::isdigit(static_cast<unsigned char>(text[0])) ||
      !std::isdigit(static_cast<unsigned char>(text[1])) || !std::isdigit(static_cast<unsigned char>(text[3])) ||
      !std::isdigit(static_cast<unsigned char>(text[4]))) {
    return shared::Error(Code::kInvalidArgument, "time of day must be HH:MM");
  }
  const int h = (text[0] - '0') * 10 + (text[1] - '0');
  const int m = (text[3] - '0') * 10 + (text[4] - '0');
  if (h > 23 || m > 59) return shared::Error(Code::kInvalidArgument, "time of day out of range 00:00-23:59");
  return std::chrono::minutes(h * 60 + m);
}

shared::Result<unsigned> ParseWeekday(std::string_view text) {
  static constexpr std::array<std::string_view, 7> kNames = {"sunday",   "monday", "tuesday", "wednesday",
                                                             "thursday", "friday", "saturday"};
  for (unsigned i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == text) return i;
  }
  return shared::Error(Code::kInvalidArgument, "weekday must be sunday .. saturday (lower case)");
}

shared::WallTime NextAuditRun(const AuditSchedule& s, shared::WallTime after) {
  using namespace std::chrono;
  if (s.kind == AuditSchedule::kOff) return shared::WallTime::max();
  const int64_t t = shared::ToUnixSeconds(after);
  if (s.kind == AuditSchedule::kInterval) {
    const int64_t step = std::max<int64_t>(s.interval.count(), 60);
    const int64_t next = (t >= 0 ? t / step + 1 : -((-t) / step)) * step;
    return shared::FromUnixSeconds(next > t ? next : next + step);
  }
  const sys_days start_day = floor<days>(sys_seconds(seconds(t)));
  const int64_t tod = duration_cast<seconds>(s.time_of_day).count();
  // Candidate days from the day of `after` on: the first that matches and whose run time
  // is after `after`. 62 days covers every monthly and biweekly gap.
  for (int i = 0; i <= 62; ++i) {
    const sys_days day = start_day + days(i);
    bool match = false;
    switch (s.kind) {
      case AuditSchedule::kDaily: match = true; break;
      case AuditSchedule::kWeekly: match = weekday(day).c_encoding() == s.weekday; break;
      case AuditSchedule::kBiweekly: {
        const int64_t week = floor<weeks>(day - sys_days(year{1970} / January / 5)).count();
        match = weekday(day).c_encoding() == s.weekday && week % 2 == 0;
        break;
      }
      case AuditSchedule::kMonthly: {
        const year_month_day ymd(day);
        const unsigned last = static_cast<unsigned>(year_month_day_last(ymd.year(), month_day_last(ymd.month())).day());
        match = static_cast<unsigned>(ymd.day()) == std::min(s.day_of_month, last);
        break;
      }
      default: break;
    }
    if (!match) continue;
    const int64_t run = duration_cast<seconds>(day.time_since_epoch()).count() + tod;
    if (run > t) return shared::FromUnixSeconds(run);
  }
  return shared::WallTime::max();
}

}  // namespace certfleet::companion
