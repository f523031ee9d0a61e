#include "agent/config.h"

#include "hal/pkcs11_uri.h"
#include "shared/core/config.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"
#include "shared/x509/key.h"

namespace certfleet::agent {

using shared::Code;
using shared::Status;
namespace sh = shared;

namespace {

using C = AgentConfig;

Status CheckUrl(const std::string& s) {
  if (s.rfind("https://", 0) != 0 || s.size() <= 8) {
    return Status(Code::kInvalidArgument, "expected an https:// URL, got '" + s + "'");
  }
  return Status::Ok();
}

Status CheckBackend(const std::string& s) {
  if (s == "file" || s == "memory" || s == "pkcs11" || s == "tpm") return Status::Ok();
  return Status(Code::kInvalidArgument, "unknown keystore backend '" + s + "' (file, memory, pkcs11, tpm)");
}

Status CheckPkcs11Uri(const std::string& s) { return hal::ParsePkcs11Uri(s) ? Status::Ok() : hal::ParsePkcs11Uri(s).error(); }

Status CheckTcti(const std::string& s) {
  if (s.empty() || s.find_first_of("\n\r") != std::string::npos) {
    return Status(Code::kInvalidArgument, "expected a TCTI such as \"device:/dev/tpmrm0\"");
  }
  return Status::Ok();
}

Status CheckDialect(const std::string& s) {
  auto d = sh::ParseDialect(s);
  return d ? Status::Ok() : Status(Code::kInvalidArgument, "unknown dialect '" + s + "' (certfleet, aws)");
}

Status CheckHost(const std::string& s) {
  if (s.empty() || s.find_first_of(" /:\t") != std::string::npos) {
    return Status(Code::kInvalidArgument, "expected a host name or IPv4 address, got '" + s + "'");
  }
  return Status::Ok();
}

Status CheckOptionalClientId(const std::string& s) { return s.empty() ? Status::Ok() : sh::ValidateClientId(s); }

// [provisioning.parameters]: template parameter name -> string value.
Status SetParameter(const std::string& name, const sh::ConfigValue& v, C& c) {
  if (name.find('.') != std::string::npos || name.size() > sh::kMaxMapKeyLength) {
    return Status(Code::kInvalidArgument, "a parameter name is one key of at most 128 bytes without '.'");
  }
  auto value = v.AsString();
  if (!value) return value.error();
  if (value->size() > sh::kMaxMapValueLength) {
    return Status(Code::kInvalidArgument, "a parameter value is at most 1024 bytes");
  }
  if (c.provisioning.parameters.size() >= sh::kMaxMapEntries) {
    return Status(Code::kInvalidArgument, "at most 64 parameters");
  }
  c.provisioning.parameters[name] = *value;
  return Status::Ok();
}

sh::ConfigSetter<C> FractionValue(double C::Renewal::*member, double min, double max, bool open_min) {
  return [member, min, max, open_min](const sh::ConfigValue& v, C& c) -> Status {
    auto d = v.AsDouble();
    if (!d) return d.error();
    if (*d > max || *d < min || (open_min && *d == min)) {
      return Status(Code::kInvalidArgument, "value " + std::to_string(*d) + " out of range " + (open_min ? "(" : "[") +
                                                std::to_string(min) + ", " + std::to_string(max) + "]");
    }
    c.renewal.*member = *d;
    return Status::Ok();
  };
}

Status SetHooks(const sh::ConfigValue& v, C& c) {
  std::vector<C::Hook> hooks;
  Status st = v.ForEachTableLeaf([&](size_t i, const std::string& key, const sh::ConfigValue& value) -> Status {
    if (hooks.size() <= i) hooks.resize(i + 1);
    C::Hook& h = hooks[i];
    if (key == "command") {
      auto list = value.AsStringList();
      if (!list) return list.error();
      if (list->empty() || list->front().empty() || list->front().front() != '/') {
        return Status(Code::kInvalidArgument, "command must start with the absolute path of the program (no shell)");
      }
      if (list->size() > 64) return Status(Code::kInvalidArgument, "at most 64 arguments");
      h.command = *list;
      return Status::Ok();
    }
    if (key == "timeout") {
      auto text = value.AsString();
      if (!text) return text.error();
      auto d = sh::ParseDuration(*text);
      if (!d) return d.error();
      if (*d < std::chrono::seconds(1) || *d > std::chrono::seconds(3600)) {
        return Status(Code::kInvalidArgument, "timeout out of range [1s, 1h]");
      }
      h.timeout = *d;
      return Status::Ok();
    }
    return Status(Code::kInvalidArgument, "unknown key (command, timeout)");
  });
  if (!st.ok()) return st;
  for (size_t i = 0; i < hooks.size(); ++i) {
    if (hooks[i].command.empty()) return Status(Code::kInvalidArgument, "entry " + std::to_string(i + 1) + " has no command");
  }
  c.post_rotation_hooks = std::move(hooks);
  return Status::Ok();
}

Status SetExports(const sh::ConfigValue& v, C& c) {
  std::vector<C::Export> exports;
  auto name_ok = [](const std::string& s) {
    return !s.empty() && s.size() <= 32 && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == std::string::npos;
  };
  Status st = v.ForEachTableLeaf([&](size_t i, const std::string& key, const sh::ConfigValue& value) -> Status {
    if (exports.size() <= i) exports.resize(i + 1);
    C::Export& e = exports[i];
    auto text = value.AsString();
    if (!text) return text.error();
    if (key == "path") {
      CF_RETURN_IF_ERROR(sh::CheckAbsolutePath(*text));
      e.path = *text;
    } else if (key == "what") {
      if (*text != "chain" && *text != "cert" && *text != "ca") {
        return Status(Code::kInvalidArgument, "what is \"chain\", \"cert\" or \"ca\"");
      }
      e.what = *text;
    } else if (key == "mode") {
      if (text->empty() || text->size() > 4 || text->find_first_not_of("01234567") != std::string::npos) {
        return Status(Code::kInvalidArgument, "mode is an octal string such as \"0644\"");
      }
      e.mode = static_cast<mode_t>(std::stoul(*text, nullptr, 8));
      if ((e.mode & 0133) != 0) return Status(Code::kInvalidArgument, "mode must not be executable or world/group-writable");
    } else if (key == "owner" || key == "group") {
      if (!name_ok(*text)) return Status(Code::kInvalidArgument, key + " is a user or group name");
      (key == "owner" ? e.owner : e.group) = *text;
    } else {
      return Status(Code::kInvalidArgument, "unknown key (path, what, mode, owner, group)");
    }
    return Status::Ok();
  });
  if (!st.ok()) return st;
  for (size_t i = 0; i < exports.size(); ++i) {
    if (exports[i].path.empty()) return Status(Code::kInvalidArgument, "entry " + std::to_string(i + 1) + " has no path");
  }
  c.exports = std::move(exports);
  return Status::Ok();
}

Status CheckOptionalPath(const std::string& s) { return s.empty() ? Status::Ok() : sh::CheckAbsolutePath(s); }

Status CheckOptionalSlot(const std::string& s) { return s.empty() ? Status::Ok() : hal::ValidateSlotName(s); }

const sh::ConfigSchema<C>& Schema() {
  static const sh::ConfigSchema<C> schema = [] {
    sh::ConfigSchema<C> s;
    s.Add("log_level", sh::StringValue<C>([](C& c) -> auto& { return c.log_level; }, sh::CheckLogLevel));
    s.Add("est.server", sh::StringValue<C>([](C& c) -> auto& { return c.est.server; }, CheckUrl));
    s.Add("est.trust_anchor_file", sh::StringValue<C>([](C& c) -> auto& { return c.est.trust_anchor_file; }, sh::CheckAbsolutePath));
    s.Add("est.timeout", sh::DurationValue<C>([](C& c) -> auto& { return c.est.timeout; }, std::chrono::seconds(1), std::chrono::seconds(3600)));
    s.Add("est.user", sh::StringValue<C>([](C& c) -> auto& { return c.est.user; }));
    s.Add("est.password_file", sh::StringValue<C>([](C& c) -> auto& { return c.est.password_file; }, sh::CheckAbsolutePath));
    s.Add("est.client_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.est.client_cert_file; }, sh::CheckAbsolutePath));
    s.Add("est.client_key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.est.client_key_slot; }, CheckOptionalSlot));
    s.Add("est.tls12_only", sh::BoolValue<C>([](C& c) -> auto& { return c.est.tls12_only; }));
    s.Add("identity.common_name", sh::StringValue<C>([](C& c) -> auto& { return c.identity.common_name; }));
    s.Add("identity.key_type", sh::StringValue<C>([](C& c) -> auto& { return c.identity.key_type; }, sh::CheckKeyTypeName));
    s.Add("identity.key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.identity.key_slot; }, hal::ValidateSlotName));
    s.Add("identity.cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.identity.cert_file; }, sh::CheckAbsolutePath));
    s.Add("provisioning.broker_host", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.broker_host; }, CheckHost));
    s.Add("provisioning.claim_port", sh::IntValue<C>([](C& c) -> auto& { return c.provisioning.claim_port; }, 1, 65535));
    s.Add("provisioning.things_port", sh::IntValue<C>([](C& c) -> auto& { return c.provisioning.things_port; }, 1, 65535));
    s.Add("provisioning.broker_name", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.broker_name; }, CheckHost));
    s.Add("provisioning.trust_anchor_file", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.trust_anchor_file; }, sh::CheckAbsolutePath));
    s.Add("provisioning.claim_cert_file", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.claim_cert_file; }, sh::CheckAbsolutePath));
    s.Add("provisioning.claim_key_slot", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.claim_key_slot; }, hal::ValidateSlotName));
    s.Add("provisioning.template", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.template_name; }, sh::ValidateTemplateName));
    s.Add("provisioning.client_id", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.client_id; }, CheckOptionalClientId));
    s.Add("provisioning.dialect", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.dialect; }, CheckDialect));
    s.Add("provisioning.state_file", sh::StringValue<C>([](C& c) -> auto& { return c.provisioning.state_file; }, sh::CheckAbsolutePath));
    s.Add("provisioning.timeout", sh::DurationValue<C>([](C& c) -> auto& { return c.provisioning.timeout; }, std::chrono::seconds(1), std::chrono::seconds(3600)));
    s.Add("provisioning.max_attempts", sh::IntValue<C>([](C& c) -> auto& { return c.provisioning.max_attempts; }, 1, 100));
    s.AddPrefix("provisioning.parameters.", SetParameter);
    s.Add("agent.state_dir", sh::StringValue<C>([](C& c) -> auto& { return c.agent.state_dir; }, sh::CheckAbsolutePath));
    s.Add("agent.control_socket", sh::StringValue<C>([](C& c) -> auto& { return c.agent.control_socket; }, sh::CheckAbsolutePath));
    s.Add("agent.time_sync_file", sh::StringValue<C>([](C& c) -> auto& { return c.agent.time_sync_file; }, CheckOptionalPath));
    s.Add("mqtt.host", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.host; }, CheckHost));
    s.Add("mqtt.port", sh::IntValue<C>([](C& c) -> auto& { return c.mqtt.port; }, 1, 65535));
    s.Add("mqtt.broker_name", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.broker_name; }, CheckHost));
    s.Add("mqtt.trust_anchor_file", sh::StringValue<C>([](C& c) -> auto& { return c.mqtt.trust_anchor_file; }, sh::CheckAbsolutePath));
    s.Add("mqtt.keepalive", sh::DurationValue<C>([](C& c) -> auto& { return c.mqtt.keepalive; }, std::chrono::seconds(5), std::chrono::seconds(3600)));
    s.Add("mqtt.timeout", sh::DurationValue<C>([](C& c) -> auto& { return c.mqtt.timeout; }, std::chrono::seconds(1), std::chrono::seconds(600)));
    s.Add("renewal.threshold", FractionValue(&C::Renewal::threshold, 0.0, 0.99, true));
    s.Add("renewal.days_before_expiry", sh::IntValue<C>([](C& c) -> auto& { return c.renewal.days_before_expiry; }, 0, 3650));
    s.Add("renewal.jitter", FractionValue(&C::Renewal::jitter, 0.0, 0.5, false));
    s.Add("renewal.retry_base", sh::DurationValue<C>([](C& c) -> auto& { return c.renewal.retry_base; }, std::chrono::seconds(1), std::chrono::seconds(86400)));
    s.Add("renewal.retry_cap", sh::DurationValue<C>([](C& c) -> auto& { return c.renewal.retry_cap; }, std::chrono::seconds(1), std::chrono::seconds(7 * 86400)));
    s.Add("hooks.post_rotation", SetHooks);
    s.Add("export", SetExports);
    s.Add("keystore.backend", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.backend; }, CheckBackend));
    s.Add("keystore.dir", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.dir; }, sh::CheckAbsolutePath));
    s.Add("keystore.uri", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.uri; }, CheckPkcs11Uri));
    s.Add("keystore.module", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.module; }, sh::CheckAbsolutePath));
    s.Add("keystore.pin_file", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.pin_file; }, sh::CheckAbsolutePath));
    s.Add("keystore.tcti", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.tcti; }, CheckTcti));
    return s;
  }();
  return schema;
}

}  // namespace

sh::Result<AgentConfig> ParseAgentConfig(std::string_view text, const std::string& source) {
  CF_ASSIGN_OR_RETURN(AgentConfig c, Schema().Parse(text, source, AgentConfig{}));
  if (c.renewal.retry_cap < c.renewal.retry_base) {
    return sh::Error(Code::kInvalidArgument, source + ": renewal.retry_cap is shorter than renewal.retry_base");
  }
  if (c.keystore.backend == "pkcs11" && c.keystore.uri.empty()) {
    return sh::Error(Code::kInvalidArgument, source + ": keystore backend 'pkcs11' needs keystore.uri (pkcs11:token=...)");
  }
  if (c.keystore.backend == "tpm" && c.keystore.tcti.empty()) {
    return sh::Error(Code::kInvalidArgument, source + ": keystore backend 'tpm' needs keystore.tcti");
  }
  return c;
}

sh::Result<AgentConfig> LoadAgentConfig(const std::string& path, sh::Filesystem& fs) {
  CF_ASSIGN_OR_RETURN(std::string text, fs.ReadFile(path, 1 << 20));
  return ParseAgentConfig(text, path);
}

}  // namespace certfleet::agent
