#include "companion/config.h"

#include <algorithm>

#include "hal/pkcs11_uri.h"
#include "shared/core/config.h"
#include "shared/x509/key.h"

namespace certfleet::companion {

using shared::Code;
using shared::ConfigSchema;
using shared::Status;
namespace sh = shared;

namespace {

using C = CompanionConfig;

Status CheckLabel(const std::string& s) {
  if (s.empty() || s.size() > 64 || s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != std::string::npos) {
    return Status(Code::kInvalidArgument, "bad EST label '" + s + "' (1-64 of A-Z a-z 0-9 - _ .)");
  }
  if (s == "cacerts" || s == "simpleenroll" || s == "simplereenroll" || s == "csrattrs" || s == "serverkeygen") {
    return Status(Code::kInvalidArgument, "EST label '" + s + "' clashes with an operation name");
  }
  return Status::Ok();
}

// An operator certificate's common name: printable ASCII, 1-64 characters.
Status CheckSubject(const std::string& s) {
  if (s.empty() || s.size() > 64 ||
      !std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7f; })) {
    return Status(Code::kInvalidArgument, "operator subject must be 1-64 printable ASCII characters");
  }
  return Status::Ok();
}

// MQTT client ids and share group names: no topic separators or wildcards.
Status CheckClientId(const std::string& s) {
  if (s.empty() || s.size() > 128 || s.find_first_of("/+#$ ") != std::string::npos) {
    return Status(Code::kInvalidArgument, "'" + s + "' must be 1-128 characters without / + # $ or spaces");
  }
  return Status::Ok();
}

// The keys of one [hooks.<name>] table. Any key creates the table's HookConfig.
void AddHookTable(ConfigSchema<C>& s, const HookTable& t) {
  using namespace std::chrono;
  auto member = t.member;
  auto hook = [member](C& c) -> HookConfig& {
    auto& slot = c.hooks.*member;
    if (!slot) slot.emplace();
    return *slot;
  };
  const std::string prefix = "hooks." + std::string(t.table) + ".";
  s.Add(prefix + "command", sh::StringListValue<C>([hook](C& c) -> auto& { return hook(c).command; }));
  s.Add(prefix + "url", sh::StringValue<C>([hook](C& c) -> auto& { return hook(c).url; }));
  s.Add(prefix + "secret_file", sh::StringValue<C>([hook](C& c) -> auto& { return hook(c).secret_file; }, sh::CheckAbsolutePath));
  s.Add(prefix + "trust_anchor_file",
        sh::StringValue<C>([hook](C& c) -> auto& { return hook(c).trust_anchor_file; }, sh::CheckAbsolutePath));
  s.Add(prefix + "allow_insecure_loopback", sh::BoolValue<C>([hook](C& c) -> auto& { return hook(c).allow_insecure_loopback; }));
  s.Add(prefix + "timeout", [hook](const sh::ConfigValue& v, C& c) -> Status {
    auto text = v.AsString();
    if (!text) return text.error();
    auto d = sh::ParseDuration(*text);
    if (!d) return d.error();
    if (*d < seconds(1) || *d > minutes(10)) {
      return Status(Code::kInvalidArgument, "hook timeout " + *text + " out of range [1s, 10m]");
    }
    hook(c).timeout = duration_cast<milliseconds>(*d);
    return Status::Ok();
  });
  s.Add(prefix + "max_output_bytes", sh::IntValue<C>([hook](C& c) -> auto& { return hook(c).max_output_bytes; }, 2, 16 << 20));
}

Status CheckRuleName(const std::string& s) {
  if (s.empty() || s.size() > 64 || s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != std::string::npos) {
    return Status(Code::kInvalidArgument, "bad claim name '" + s + "' (1-64 of A-Z a-z 0-9 - _ .)");
  }
  return Status::Ok();
}

Status CheckFingerprint(const std::string& s) {
  if (s.size() != 64 || s.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return Status(Code::kInvalidArgument, "a fingerprint is 64 lowercase hex characters (SHA-256 of the certificate DER)");
  }
  return Status::Ok();
}

Status CheckTemplateOrAny(const std::string& s) {
  if (s == "*" || (!s.empty() && s.size() <= 36 &&
                   s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") == std::string::npos)) {
    return Status::Ok();
  }
  return Status(Code::kInvalidArgument, "bad template '" + s + "' (\"*\" or 1-36 of A-Z a-z 0-9 - _)");
}

const ConfigSchema<ClaimConfig>& ClaimSchema() {
  static const ConfigSchema<ClaimConfig> schema = [] {
    using K = ClaimConfig;
    ConfigSchema<K> s;
    s.Add("name", sh::StringValue<K>([](K& c) -> auto& { return c.name; }, CheckRuleName));
    s.Add("ca_file", sh::StringValue<K>([](K& c) -> auto& { return c.ca_file; }, sh::CheckAbsolutePath));
    s.Add("fingerprints", sh::StringListValue<K>([](K& c) -> auto& { return c.fingerprints; }, CheckFingerprint));
    s.Add("templates", sh::StringListValue<K>([](K& c) -> auto& { return c.templates; }, CheckTemplateOrAny));
    return s;
  }();
  return schema;
}

Status SetClaims(const sh::ConfigValue& v, C& c) {
  auto claims = ClaimSchema().ParseTableList(v, ClaimConfig{});
  if (!claims) return claims.error();
  for (size_t i = 0; i < claims->size(); ++i) {
    const ClaimConfig& k = (*claims)[i];
    std::string where = "claims[" + std::to_string(i) + "]";
    if (k.name.empty()) return Status(Code::kInvalidArgument, where + ": name is required");
    if (k.ca_file.empty() && k.fingerprints.empty()) {
      return Status(Code::kInvalidArgument, where + " ('" + k.name + "'): set ca_file, fingerprints or both");
    }
    if (k.templates.empty()) {
      return Status(Code::kInvalidArgument, where + " ('" + k.name + "'): templates is required (names, or [\"*\"])");
    }
    for (size_t j = 0; j < i; ++j) {
      if ((*claims)[j].name == k.name) return Status(Code::kInvalidArgument, "duplicate claim name '" + k.name + "'");
    }
  }
  c.claims = std::move(*claims);
  return Status::Ok();
}

// An [audit.checks.*] value as audit_config.cc reads it.
class CheckKeyValue final : public AuditCheckKeyValue {
 public:
  explicit CheckKeyValue(const sh::ConfigValue& v) : v_(v) {}
  sh::Result<bool> AsBool() const override { return v_.AsBool(); }
  sh::Result<int64_t> AsInt() const override { return v_.AsInt(); }
  sh::Result<std::string> AsString() const override { return v_.AsString(); }
  sh::Result<std::vector<std::string>> AsStringList() const override { return v_.AsStringList(); }

 private:
  const sh::ConfigValue& v_;
};

// An MQTT topic to publish on: no wildcards, no leading $.
Status CheckPublishTopic(const std::string& s) {
  if (s.empty() || s.size() > 256 || s.find_first_of("+#") != std::string::npos || s.front() == '$') {
    return Status(Code::kInvalidArgument, "a notification topic is 1-256 characters without + # or a leading $");
  }
  return Status::Ok();
}

void AddAuditKeys(ConfigSchema<C>& s) {
  using namespace std::chrono;
  s.Add("audit.schedule", [](const sh::ConfigValue& v, C& c) -> Status {
    CF_ASSIGN_OR_RETURN(std::string text, v.AsString());
    CF_ASSIGN_OR_RETURN(AuditSchedule parsed, ParseAuditSchedule(text));
    c.audit.schedule.kind = parsed.kind;
    c.audit.schedule.interval = parsed.interval;
    return Status::Ok();
  });
  s.Add("audit.time_of_day", [](const sh::ConfigValue& v, C& c) -> Status {
    CF_ASSIGN_OR_RETURN(std::string text, v.AsString());
    CF_ASSIGN_OR_RETURN(c.audit.schedule.time_of_day, ParseTimeOfDay(text));
    return Status::Ok();
  });
  s.Add("audit.weekday", [](const sh::ConfigValue& v, C& c) -> Status {
    CF_ASSIGN_OR_RETURN(std::string text, v.AsString());
    CF_ASSIGN_OR_RETURN(c.audit.schedule.weekday, ParseWeekday(text));
    return Status::Ok();
  });
  s.Add("audit.day_of_month", sh::IntValue<C>([](C& c) -> auto& { return c.audit.schedule.day_of_month; }, 1, 31));
  s.Add("audit.report_dir", sh::StringValue<C>([](C& c) -> auto& { return c.audit.report_dir; }, sh::CheckAbsolutePath));
  s.Add("audit.retention", sh::DurationValue<C>([](C& c) -> auto& { return c.audit.retention; }, hours(1), hours(24 * 3653)));
  s.Add("audit.rotation_deadline",
        sh::DurationValue<C>([](C& c) -> auto& { return c.audit.rotation_deadline; }, minutes(1), hours(24 * 365)));
  s.Add("audit.notify_topic", sh::StringValue<C>([](C& c) -> auto& { return c.audit.notify_topic; }, CheckPublishTopic));
  s.Add("audit.policy_files", sh::StringListValue<C>([](C& c) -> auto& { return c.audit.policy_files; }, sh::CheckAbsolutePath));
  s.AddPrefix("audit.checks.", [](const std::string& rest, const sh::ConfigValue& v, C& c) -> Status {
    return ApplyAuditCheckKey(rest, CheckKeyValue(v), c.audit);
  });
}

const ConfigSchema<C>& Schema() {
  static const ConfigSchema<C> schema = [] {
    using namespace std::chrono;
    ConfigSchema<C> s;
    s.Add("state_dir", sh::StringValue<C>([](C& c) -> auto& { return c.state_dir; }, sh::CheckAbsolutePath));
    s.Add("log_level", sh::StringValue<C>([](C& c) -> auto& { return c.log_level; }, sh::CheckLogLevel));
    s.Add("est.listen", sh::StringValue<C>([](C& c) -> auto& { return c.est.listen; }, sh::CheckHostPort));
    s.Add("est.labels", sh::StringListValue<C>([](C& c) -> auto& { return c.est.labels; }, CheckLabel));
    s.Add("est.tls_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.est.tls_cert_file; }, sh::CheckAbsolutePath));
    s.Add("est.tls_key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.est.tls_key_slot; }, hal::ValidateSlotName));
    s.Add("est.bootstrap_trust_file",
          sh::StringValue<C>([](C& c) -> auto& { return c.est.bootstrap_trust_file; },
                             [](const std::string& v) { return v.empty() ? Status::Ok() : sh::CheckAbsolutePath(v); }));
    s.Add("est.max_body_bytes", sh::IntValue<C>([](C& c) -> auto& { return c.est.max_body_bytes; }, 1024, 1 << 20));
    s.Add("est.threads", sh::IntValue<C>([](C& c) -> auto& { return c.est.threads; }, 1, 256));
    s.Add("est.superseded_grace", sh::DurationValue<C>([](C& c) -> auto& { return c.est.superseded_grace; },
                                                       seconds(0), hours(24 * 365)));
    s.Add("est.expired_reenroll_grace",
          sh::DurationValue<C>([](C& c) -> auto& { return c.est.expired_reenroll_grace; }, seconds(0), hours(24 * 365)));
    s.Add("api.enabled", sh::BoolValue<C>([](C& c) -> auto& { return c.api.enabled; }));
    s.Add("api.listen", sh::StringValue<C>([](C& c) -> auto& { return c.api.listen; }, sh::CheckHostPort));
    s.Add("api.tls_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.api.tls_cert_file; }, sh::CheckAbsolutePath));
    s.Add("api.tls_key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.api.tls_key_slot; }, hal::ValidateSlotName));
    s.Add("api.client_ca_file",
          sh::StringValue<C>([](C& c) -> auto& { return c.api.client_ca_file; }, sh::CheckAbsolutePath));
    s.Add("api.admin_subjects", sh::StringListValue<C>([](C& c) -> auto& { return c.api.admin_subjects; }, CheckSubject));
    s.Add("api.read_only_subjects",
          sh::StringListValue<C>([](C& c) -> auto& { return c.api.read_only_subjects; }, CheckSubject));
    s.Add("api.metrics_require_auth", sh::BoolValue<C>([](C& c) -> auto& { return c.api.metrics_require_auth; }));
    s.Add("api.max_body_bytes", sh::IntValue<C>([](C& c) -> auto& { return c.api.max_body_bytes; }, 1024, 1 << 20));
    s.Add("api.threads", sh::IntValue<C>([](C& c) -> auto& { return c.api.threads; }, 1, 64));
    s.Add("est.reenroll_require_new_key", sh::BoolValue<C>([](C& c) -> auto& { return c.est.reenroll_require_new_key; }));
    s.Add("ca.root_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.ca.root_cert_file; }, sh::CheckAbsolutePath));
    s.Add("ca.issuing_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.ca.issuing_cert_file; }, sh::CheckAbsolutePath));
    s.Add("ca.issuing_key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.ca.issuing_key_slot; }, hal::ValidateSlotName));
    s.Add("profile.validity", sh::DurationValue<C>([](C& c) -> auto& { return c.profile.validity; }, hours(1), hours(24 * 3653)));
    s.Add("profile.backdate", sh::DurationValue<C>([](C& c) -> auto& { return c.profile.backdate; }, seconds(0), hours(24)));
    s.Add("profile.key_types", sh::StringListValue<C>([](C& c) -> auto& { return c.profile.key_types; }, sh::CheckKeyTypeName));
    s.Add("profile.allow_csr_sans", sh::BoolValue<C>([](C& c) -> auto& { return c.profile.allow_csr_sans; }));
    s.Add("tokens.default_ttl", sh::DurationValue<C>([](C& c) -> auto& { return c.tokens.default_ttl; }, minutes(1), hours(24 * 365)));
    s.Add("tokens.max_ttl", sh::DurationValue<C>([](C& c) -> auto& { return c.tokens.max_ttl; }, minutes(1), hours(24 * 365)));
    s.Add("mqtt.enabled", sh::BoolValue<C>([](C& c) -> auto& { return c.mqtt.enabled; }));
    s.Add("mqtt.host", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.host; }));
    s.Add("mqtt.port", sh::IntValue<C>([](C& c) -> auto& { return c.mqtt.port; }, 1, 65535));
    s.Add("mqtt.verify_name", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.verify_name; }));
    s.Add("mqtt.client_id", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.client_id; }, CheckClientId));
    s.Add("mqtt.client_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.client_cert_file; }, sh::CheckAbsolutePath));
    s.Add("mqtt.client_key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.client_key_slot; }, hal::ValidateSlotName));
    s.Add("mqtt.share_group", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.share_group; }, CheckClientId));
    s.Add("provisioning.template_dir", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.template_dir; }, sh::CheckAbsolutePath));
    s.Add("provisioning.allow_create_keys", sh::BoolValue<C>([](C& c) -> auto& { return c.provisioning.allow_create_keys; }));
    s.Add("provisioning.ownership_token_ttl", sh::DurationValue<C>([](C& c) -> auto& { return c.provisioning.ownership_token_ttl; }, minutes(1), hours(24)));
    s.Add("provisioning.dialect", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.dialect; }, [](const std::string& v) {
            return v == "certfleet" || v == "aws" ? Status::Ok() : Status(Code::kInvalidArgument, "dialect must be certfleet or aws");
          }));
    s.Add("provisioning.workers", sh::IntValue<C>([](C& c) -> auto& { return c.provisioning.workers; }, 1, 64));
    for (const HookTable& t : kHookTables) AddHookTable(s, t);
    s.Add("claims", SetClaims);
    s.Add("rotation.grace", sh::DurationValue<C>([](C& c) -> auto& { return c.rotation.grace; }, seconds(0), hours(24 * 365)));
    s.Add("rotation.revoke_after", sh::DurationValue<C>([](C& c) -> auto& { return c.rotation.revoke_after; }, seconds(0), hours(24 * 365)));
    s.Add("rotation.default_deadline", sh::DurationValue<C>([](C& c) -> auto& { return c.rotation.default_deadline; }, minutes(1), hours(24 * 365)));
    s.Add("rotation.sweep_interval", sh::DurationValue<C>([](C& c) -> auto& { return c.rotation.sweep_interval; }, seconds(1), hours(24)));
    s.Add("broker.crl_file", sh::StringValue<C>([](C& c) -> auto& { return c.broker.crl_file; }, sh::CheckAbsolutePath));
    s.Add("broker.quarantine_file", sh::StringValue<C>([](C& c) -> auto& { return c.broker.quarantine_file; }, sh::CheckAbsolutePath));
    s.Add("broker.reload_command", sh::StringListValue<C>([](C& c) -> auto& { return c.broker.reload_command; }));
    s.Add("broker.pid_file", sh::StringValue<C>([](C& c) -> auto& { return c.broker.pid_file; }, sh::CheckAbsolutePath));
    s.Add("broker.reload_timeout", sh::DurationValue<C>([](C& c) -> auto& { return c.broker.reload_timeout; }, seconds(1), minutes(10)));
    s.Add("broker.crl_validity", sh::DurationValue<C>([](C& c) -> auto& { return c.broker.crl_validity; }, hours(1), hours(24 * 365)));
    AddAuditKeys(s);
    s.Add("keystore.backend", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.backend; }));
    s.Add("keystore.dir", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.dir; }, sh::CheckAbsolutePath));
    s.Add("keystore.uri", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.uri; }, [](const std::string& v) {
            auto uri = hal::ParsePkcs11Uri(v);
            return uri ? Status::Ok() : uri.error();
          }));
    s.Add("keystore.module", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.module; }, sh::CheckAbsolutePath));
    s.Add("keystore.pin_file", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.pin_file; }, sh::CheckAbsolutePath));
    s.Add("registry.path", sh::StringValue<C>([](C& c) -> auto& { return c.registry_path; }, sh::CheckAbsolutePath));
    return s;
  }();
  return schema;
}

}  // namespace

sh::Result<CompanionConfig> ParseCompanionConfig(std::string_view text, const std::string& source) {
  CF_ASSIGN_OR_RETURN(CompanionConfig c, Schema().Parse(text, source, CompanionConfig{}));
  if (c.state_dir.empty()) return sh::Error(Code::kInvalidArgument, source + ": state_dir is required");
  auto derive = [&](std::string& v, std::string_view rel) {
    if (v.empty()) v = sh::JoinPath(c.state_dir, rel);
  };
  derive(c.est.tls_cert_file, "tls/est-server.pem");
  derive(c.ca.root_cert_file, "ca/root.pem");
  derive(c.ca.issuing_cert_file, "ca/issuing.pem");
  derive(c.keystore.dir, "keys");
  if (c.api.tls_cert_file.empty()) c.api.tls_cert_file = c.est.tls_cert_file;
  if (c.api.tls_key_slot.empty()) c.api.tls_key_slot = c.est.tls_key_slot;
  for (const auto& a : c.api.admin_subjects) {
    for (const auto& r : c.api.read_only_subjects) {
      if (a == r) return sh::Error(Code::kInvalidArgument, source + ": api subject '" + a + "' has two roles");
    }
  }
  derive(c.registry_path, "registry.sqlite3");
  derive(c.mqtt.client_cert_file, "tls/mqtt-client.pem");
  derive(c.provisioning.template_dir, "templates");
  derive(c.audit.report_dir, "audit-reports");
  for (const HookTable& t : kHookTables) {
    const auto& hook = c.hooks.*t.member;
    if (!hook) continue;
    Status st = CheckHookConfig(*hook);
    if (!st.ok()) return sh::Error(st.WithContext(source + ": [hooks." + std::string(t.table) + "]"));
  }
  if (c.profile.key_types.empty()) return sh::Error(Code::kInvalidArgument, source + ": profile.key_types is empty");
  if (!c.broker.reload_command.empty() && !sh::CheckAbsolutePath(c.broker.reload_command.front()).ok()) {
    return sh::Error(Code::kInvalidArgument, source + ": broker.reload_command must start with an absolute path");
  }
  if (c.tokens.default_ttl > c.tokens.max_ttl) {
    return sh::Error(Code::kInvalidArgument, source + ": tokens.default_ttl exceeds tokens.max_ttl");
  }
  return c;
}

sh::Result<CompanionConfig> LoadCompanionConfig(const std::string& path, sh::Filesystem& fs) {
  CF_ASSIGN_OR_RETURN(std::string text, fs.ReadFile(path, 1 << 20));
  return ParseCompanionConfig(text, path);
}

std::string DefaultCompanionConfigText(const std::string& state_dir, const std::string& est_listen) {
  std::string out;
  out += "# certfleet-companion configuration. Keys and defaults: docs/config.md\n";
  out += "state_dir = " + sh::TomlQuote(state_dir) + "\n";
  out += "log_level = \"info\"\n\n";
  out += "[est]\n";
  out += "listen = " + sh::TomlQuote(est_listen) + "\n";
  out += "labels = []\n";
  out += "# bootstrap_trust_file = \"/etc/certfleet/claim-cas.pem\"\n";
  out += "max_body_bytes = 16384\n";
  out += "superseded_grace = \"7d\"\n\n";
  out += "[profile]\n";
  out += "validity = \"90d\"\n";
  out += "key_types = [\"ec-p256\", \"ec-p384\", \"rsa-2048\", \"rsa-3072\"]\n";
  out += "allow_csr_sans = false\n\n";
  out += "[tokens]\n";
  out += "default_ttl = \"24h\"\n";
  out += "max_ttl = \"30d\"\n\n";
  out += "[keystore]\n";
  out += "backend = \"file\"\n";
  return out;
}

}  // namespace certfleet::companion
