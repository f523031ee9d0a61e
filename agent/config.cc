#include "agent/config.h"

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
  if (s == "file" || s == "memory") return Status::Ok();
  return Status(Code::kInvalidArgument, "unknown keystore backend '" + s + "' (file, memory)");
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

Status CheckOptionalSlot(const std::string& s) { return s.empty() ? Status::Ok() : hal::ValidateSlotName(s); }

const sh::ConfigSchema<C>& Schema() {
  static const sh::ConfigSchema<C> schema = [] {
    sh::ConfigSchema<C> s;
    s.Add("log_level", sh::StringValue<C>([](C& c) -> auto& { return c.log_level; }, sh::CheckLogLevel));
    s.Add("est.server", sh::StringValue<C>([](C& c) -> auto& { return c.est.server; }, CheckUrl));
    s.Add("est.trust_anchor_file", sh::StringValue<C>([](C& c) -> auto& { return c.est.trust_anchor_file; }, sh::CheckAbsolutePath));
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
    s.Add("keystore.backend", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.backend; }, CheckBackend));
    s.Add("keystore.dir", sh::StringValue<C>([](C& c) -> auto& { return c.keystore.dir; }, sh::CheckAbsolutePath));
    return s;
  }();
  return schema;
}

}  // namespace

sh::Result<AgentConfig> ParseAgentConfig(std::string_view text, const std::string& source) {
  return Schema().Parse(text, source, AgentConfig{});
}

sh::Result<AgentConfig> LoadAgentConfig(const std::string& path, sh::Filesystem& fs) {
  CF_ASSIGN_OR_RETURN(std::string text, fs.ReadFile(path, 1 << 20));
  return ParseAgentConfig(text, path);
}

}  // namespace certfleet::agent
