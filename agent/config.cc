#include "agent/config.h"

#include "shared/core/config.h"
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
