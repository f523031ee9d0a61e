// certfleetctl: the operator's command line. Local admin mode reads the companion's
// config and registry directly (run it as the companion's user).
#include <CLI/CLI.hpp>
#include <curl/curl.h>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "companion/api.h"
#include "companion/api_client.h"
#include "companion/broker_config.h"
#include "companion/ctl_audit.h"
#include "companion/ctl_common.h"
#include "companion/operations.h"
#include "companion/est_service.h"
#include "companion/init.h"
#include "companion/rotation_coordinator.h"
#include "shared/core/duration.h"
#include "shared/core/filesystem.h"
#include "shared/x509/cert.h"

namespace cf = certfleet;
namespace sh = certfleet::shared;
using nlohmann::json;

namespace {

int Fail(const sh::Status& st) { return cf::companion::CtlFail(st); }
using cf::companion::OperatorName;
using cf::companion::PrintTable;

sh::Result<cf::companion::CompanionState> Open(const std::string& config_path, bool write) {
  auto& fs = sh::PosixFilesystem::Instance();
  CF_ASSIGN_OR_RETURN(cf::companion::CompanionConfig cfg, cf::companion::LoadCompanionConfig(config_path, fs));
  cf::companion::LoadOptions lo;
  lo.load_issuer = false;
  lo.registry_read_only = !write;
  return cf::companion::LoadCompanionState(cfg, fs, lo);
}

json RotationJson(const cf::companion::RotationRecord& r) { return cf::companion::RotationToJson(r); }

std::string Str(const json& j, const char* key) { return cf::companion::JsonText(j, key); }

// certfleetctl rotate: one request for `thing`, or one per thing whose current
// certificate expires within `expiring_within`.
int Rotate(cf::companion::Registry& registry, const cf::companion::CompanionConfig& config, const std::string& thing,
           const std::string& expiring_within, std::string reason, const std::string& deadline_text, bool dry_run) {
  auto now = sh::SystemClock::Instance().Now();
  std::chrono::seconds deadline = config.rotation.default_deadline;
  if (!deadline_text.empty()) {
    auto d = sh::ParseDuration(deadline_text);
    if (!d) return Fail(d.error().WithContext("--deadline"));
    deadline = *d;
  }
  std::vector<std::string> things;
  if (!thing.empty()) {
    things.push_back(thing);
  } else {
    auto within = sh::ParseDuration(expiring_within);
    if (!within) return Fail(within.error().WithContext("--expiring-within"));
    auto list = registry.ListThingsExpiringBefore(now + *within, INT64_MAX);
    if (!list) return Fail(list.error());
    for (const auto& t : *list) things.push_back(t.name);
    if (reason.empty()) reason = "expiring-within:" + sh::FormatDuration(*within);
    std::fprintf(stderr, "%zu thing(s) with a certificate expiring before %s\n", things.size(),
                 sh::FormatRfc3339(now + *within).c_str());
  }
  if (reason.empty()) reason = "operator";
  int failures = 0;
  for (const auto& name : things) {
    auto pending = registry.FindPendingRotation(name);
    if (!pending) return Fail(pending.error());
    if (*pending) {
      std::printf("skipped %s: rotation %s is pending\n", name.c_str(), (*pending)->id.c_str());
      if (!thing.empty()) ++failures;
      continue;
    }
    if (dry_run) {
      std::printf("would rotate %s\n", name.c_str());
      continue;
    }
    auto r = cf::companion::CreateRotationRequest(registry, config.rotation, name, reason, deadline, OperatorName(), now);
    if (!r) {
      std::fprintf(stderr, "certfleetctl: %s: %s\n", name.c_str(), r.error().ToString().c_str());
      ++failures;
      continue;
    }
    std::printf("created %s %s deadline %s\n", r->id.c_str(), name.c_str(), sh::FormatRfc3339(r->deadline).c_str());
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"certfleetctl: operate a certfleet companion"};
  app.require_subcommand(1);
  std::string config_path = "/etc/certfleet/companion.toml";
  if (const char* env = std::getenv("CERTFLEET_COMPANION_CONFIG")) config_path = env;
  app.add_option("--config", config_path, "companion.toml (local admin mode)");

  auto* token = app.add_subcommand("token", "one-time enrollment tokens")->require_subcommand(1);
  auto* token_create = token->add_subcommand("create", "create a token; prints it alone on stdout");
  std::string serial;
  std::string ttl_text;
  token_create->add_option("--serial", serial, "device serial: the certificate's common name")->required();
  token_create->add_option("--ttl", ttl_text, "lifetime, e.g. 24h (default from config)");

  auto* ca = app.add_subcommand("ca", "the certificate authority")->require_subcommand(1);
  auto* ca_cert = ca->add_subcommand("cert", "print the root CA certificate (the clients' trust anchor)");

  bool as_json = false;
  std::string thing_filter;
  int64_t limit = 1000;
  auto* certs = app.add_subcommand("certs", "certificates")->require_subcommand(1);
  auto* certs_list = certs->add_subcommand("list", "list certificates");
  certs_list->add_flag("--json", as_json, "JSON output");
  certs_list->add_option("--thing", thing_filter, "only this thing's certificates");
  certs_list->add_option("--limit", limit, "at most this many rows")->check(CLI::Range(int64_t{1}, int64_t{10000000}));
  std::string cert_id;
  auto* certs_revoke = certs->add_subcommand("revoke", "mark a certificate REVOKED (final)");
  certs_revoke->add_option("ID", cert_id, "certificate id (SHA-256 fingerprint, 64 hex)")->required();
  auto* certs_deactivate = certs->add_subcommand("deactivate", "mark a certificate INACTIVE");
  certs_deactivate->add_option("ID", cert_id, "certificate id (SHA-256 fingerprint, 64 hex)")->required();
  auto* things = app.add_subcommand("things", "things")->require_subcommand(1);
  auto* things_list = things->add_subcommand("list", "list things");
  things_list->add_flag("--json", as_json, "JSON output");
  things_list->add_option("--limit", limit, "at most this many rows")->check(CLI::Range(int64_t{1}, int64_t{10000000}));

  std::string rotate_thing;
  std::string expiring_within;
  std::string rotate_reason;
  std::string rotate_deadline;
  bool dry_run = false;
  auto* rotate = app.add_subcommand("rotate", "ask a thing (or every thing whose certificate expires soon) to rotate");
  auto* rotate_thing_opt = rotate->add_option("THING", rotate_thing, "thing name");
  auto* expiring_opt = rotate->add_option("--expiring-within", expiring_within,
                                          "every thing whose current certificate expires within this, e.g. 30d");
  rotate_thing_opt->excludes(expiring_opt);
  rotate->add_option("--reason", rotate_reason, "why (1-256 bytes; default operator)");
  rotate->add_option("--deadline", rotate_deadline, "rotate within this, e.g. 7d (default rotation.default_deadline)");
  rotate->add_flag("--dry-run", dry_run, "print what would be done");
  auto* rotations = app.add_subcommand("rotations", "rotation requests")->require_subcommand(1);
  auto* rotations_list = rotations->add_subcommand("list", "list rotation requests, newest first");
  std::string state_filter;
  rotations_list->add_option("--state", state_filter, "PENDING, COMPLETED or CANCELLED");
  rotations_list->add_option("--thing", thing_filter, "only this thing's requests");
  rotations_list->add_flag("--json", as_json, "JSON output");
  rotations_list->add_option("--limit", limit, "at most this many rows")->check(CLI::Range(int64_t{1}, int64_t{10000000}));
  std::string rotation_id;
  auto* rotations_cancel = rotations->add_subcommand("cancel", "cancel a pending rotation request");
  rotations_cancel->add_option("ID", rotation_id, "rotation id")->required();

  cf::companion::BrokerConfigOptions broker;
  std::vector<std::string> broker_hostnames;
  auto* broker_config = app.add_subcommand("broker-config", "write a mosquitto configuration for the fleet");
  broker_config->add_option("--out", broker.out_dir, "directory to write (absolute path)")->required();
  broker_config->add_option("--listen", broker.listen_address, "address the listeners bind (default 127.0.0.1)");
  broker_config->add_option("--port", broker.things_port, "things listener port (default 8883)")->check(CLI::Range(1, 65535));
  broker_config->add_option("--claim-port", broker.claim_port, "claim listener port (default 8884)")->check(CLI::Range(1, 65535));
  broker_config->add_option("--claim-plugin", broker.claim_plugin_path,
                            "the claim-policy mosquitto plugin, used when [[claims]] are configured (default " +
                                cf::companion::DefaultClaimPluginPath() + ")");
  broker_config->add_option("--hostname", broker_hostnames, "names the broker certificate covers (repeatable)");

  // Remote mode (docs/cli.md): the operator API instead of the local registry.
  std::string server;
  std::string token_file;
  std::string client_cert;
  std::string client_key;
  std::string server_ca;
  app.add_option("--server", server, "operator API URL, e.g. https://companion:8444 (remote mode)");
  app.add_option("--token-file", token_file, "file holding an API bearer token (remote mode)");
  app.add_option("--cert", client_cert, "operator client certificate, PEM (remote mode)");
  app.add_option("--key", client_key, "its private key, PEM (remote mode)");
  app.add_option("--ca-file", server_ca, "CA certificates that verify the server (remote mode)");

  auto* things_show = things->add_subcommand("show", "a thing and its certificates");
  std::string thing_name;
  things_show->add_option("NAME", thing_name, "thing name")->required();
  things_show->add_flag("--json", as_json, "JSON output");
  auto* certs_show = certs->add_subcommand("show", "one certificate, with its PEM");
  certs_show->add_option("ID", cert_id, "certificate id (64 hex)")->required();
  certs_show->add_flag("--json", as_json, "JSON output");
  std::string status_filter;
  std::string expiring_before;
  certs_list->add_option("--status", status_filter, "ACTIVE, INACTIVE, REVOKED or PENDING_ACTIVATION (remote mode)");
  certs_list->add_option("--expiring-before", expiring_before, "notAfter before this RFC 3339 time (remote mode)");
  std::string change_reason;
  certs_revoke->add_option("--reason", change_reason, "why (recorded in the security event)");
  certs_deactivate->add_option("--reason", change_reason, "why (recorded in the security event)");
  auto* token_list = token->add_subcommand("list", "list enrollment tokens (never their secrets)");
  token_list->add_flag("--json", as_json, "JSON output");
  token_list->add_option("--limit", limit, "at most this many rows")->check(CLI::Range(int64_t{1}, int64_t{500}));
  auto* templates = app.add_subcommand("templates", "provisioning templates (remote mode)")->require_subcommand(1);
  auto* templates_list = templates->add_subcommand("list", "list templates");
  templates_list->add_flag("--json", as_json, "JSON output");
  std::string template_name;
  auto* templates_show = templates->add_subcommand("show", "one template");
  templates_show->add_option("NAME", template_name, "template name")->required();
  templates_show->add_flag("--json", as_json, "JSON output");

  auto* events = app.add_subcommand("events", "security events, newest first");
  std::string event_kind;
  std::string event_subject;
  std::string event_since;
  std::string event_until;
  events->add_option("--kind", event_kind, "only this kind, e.g. token_reused");
  events->add_option("--subject", event_subject, "only this subject");
  events->add_option("--since", event_since, "at or after this RFC 3339 time");
  events->add_option("--until", event_until, "before this RFC 3339 time");
  events->add_option("--limit", limit, "at most this many rows")->check(CLI::Range(int64_t{1}, int64_t{10000000}));
  events->add_flag("--json", as_json, "JSON output");

  auto* api_token = app.add_subcommand("api-token", "operator API bearer tokens (local admin mode)")->require_subcommand(1);
  auto* api_token_create = api_token->add_subcommand("create", "create a token; prints its secret once on stdout");
  std::string api_token_name;
  std::string api_token_role;
  std::string api_token_ttl;
  api_token_create->add_option("--name", api_token_name, "unique name")->required();
  api_token_create->add_option("--role", api_token_role, "read-only or admin")->required();
  api_token_create->add_option("--ttl", api_token_ttl, "lifetime, e.g. 90d (default: no expiry)");
  auto* api_token_list = api_token->add_subcommand("list", "list tokens (never their secrets)");
  api_token_list->add_flag("--json", as_json, "JSON output");
  auto* api_token_revoke = api_token->add_subcommand("revoke", "revoke a token");
  api_token_revoke->add_option("NAME", api_token_name, "token name")->required();

  auto audit_commands = cf::companion::AddAuditCommands(app, &config_path);
  CLI11_PARSE(app, argc, argv);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    std::fprintf(stderr, "certfleetctl: curl_global_init failed\n");
    return 1;
  }

  if (server.empty()) {
    if (int rc = cf::companion::RunAuditCommands(*audit_commands); rc >= 0) return rc;
  }
  if (!server.empty()) {
    cf::companion::ApiClientOptions co;
    co.server = server;
    while (!co.server.empty() && co.server.back() == '/') co.server.pop_back();
    co.ca_file = server_ca;
    co.cert_file = client_cert;
    co.key_file = client_key;
    if (client_cert.empty() != client_key.empty()) {
      return Fail(sh::Status(sh::Code::kInvalidArgument, "--cert and --key go together"));
    }
    if (!token_file.empty()) {
      auto t = sh::PosixFilesystem::Instance().ReadFile(token_file, 4096);
      if (!t) return Fail(t.error().WithContext("--token-file"));
      co.token = *t;
      while (!co.token.empty() && (co.token.back() == '\n' || co.token.back() == '\r' || co.token.back() == ' ')) {
        co.token.pop_back();
      }
    }
    if (co.token.empty() && co.cert_file.empty()) {
      return Fail(sh::Status(sh::Code::kInvalidArgument, "remote mode needs --token-file or --cert/--key"));
    }
    cf::companion::RemoteCaller r{cf::companion::ApiClient(co), as_json};
    // Replies come from the network: a malformed one ends the command with an error,
    // never with an uncaught exception.
    try {
      if (int rc = cf::companion::RunRemoteAuditCommands(*audit_commands, r); rc >= 0) return rc;
      using Q = std::vector<std::pair<std::string, std::string>>;
      if (*things_list) {
        return r.List("/things", "things", {}, limit,
                      {{"THING", "thingName"}, {"CREATED", "createdAt"}, {"CERTIFICATE", "certificateId"}, {"NOT AFTER", "notAfter"}});
      }
      if (*things_show) return r.Show("GET", "/things/" + thing_name);
      if (*certs_list) {
        Q q;
        if (!thing_filter.empty()) q.emplace_back("thingName", thing_filter);
        if (!status_filter.empty()) q.emplace_back("status", status_filter);
        if (!expiring_before.empty()) q.emplace_back("expiringBefore", expiring_before);
        return r.List("/certificates", "certificates", q, limit,
                      {{"ID", "certificateId"}, {"THING", "thingName"}, {"STATUS", "status"}, {"NOT AFTER", "notAfter"},
                       {"SOURCE", "source"}, {"SERIAL", "serialNumber"}});
      }
      if (*certs_show) return r.Show("GET", "/certificates/" + cert_id);
      if (*certs_revoke || *certs_deactivate) {
        json body = json::object();
        if (!change_reason.empty()) body["reason"] = change_reason;
        return r.Show("POST", "/certificates/" + cert_id + (*certs_revoke ? "/revoke" : "/deactivate"), body);
      }
      if (*rotate) {
        if (rotate_thing.empty() || dry_run) {
          return Fail(sh::Status(sh::Code::kInvalidArgument, "remote mode rotates one THING (no --expiring-within, --dry-run)"));
        }
        json body = {{"thingName", rotate_thing}};
        if (!rotate_reason.empty()) body["reason"] = rotate_reason;
        if (!rotate_deadline.empty()) body["deadline"] = rotate_deadline;
        return r.Show("POST", "/rotations", body);
      }
      if (*rotations_list) {
        Q q;
        if (!thing_filter.empty()) q.emplace_back("thingName", thing_filter);
        if (!state_filter.empty()) q.emplace_back("state", state_filter);
        return r.List("/rotations", "rotations", q, limit,
                      {{"ID", "rotationId"}, {"THING", "thingName"}, {"STATE", "state"}, {"CREATED", "createdAt"},
                       {"DEADLINE", "deadline"}, {"PUBLISHED", "publishedAt"}, {"REASON", "reason"}});
      }
      if (*rotations_cancel) return r.Show("POST", "/rotations/" + rotation_id + "/cancel");
      if (*token_create) {
        json body = {{"serial", serial}};
        if (!ttl_text.empty()) body["ttl"] = ttl_text;
        auto j = r.Call("POST", "/enrollment-tokens", {}, body);
        if (!j) return 1;
        std::printf("%s\n", Str(*j, "token").c_str());
        std::fprintf(stderr, "token for serial %s expires %s\n", Str(*j, "serial").c_str(), Str(*j, "expiresAt").c_str());
        return 0;
      }
      if (*token_list) {
        return r.List("/enrollment-tokens", "enrollmentTokens", {}, limit,
                      {{"SERIAL", "serial"}, {"STATE", "state"}, {"CREATED", "createdAt"}, {"EXPIRES", "expiresAt"},
                       {"USED", "usedAt"}});
      }
      if (*templates_list) {
        auto j = r.Call("GET", "/templates", {});
        if (!j) return 1;
        if (as_json) {
          std::printf("%s\n", (*j)["templates"].dump(2).c_str());
          return 0;
        }
        std::vector<std::vector<std::string>> rows{{"TEMPLATE", "DESCRIPTION"}};
        for (const auto& x : (*j)["templates"]) rows.push_back({Str(x, "templateName"), Str(x, "description")});
        PrintTable(rows);
        return 0;
      }
      if (*templates_show) return r.Show("GET", "/templates/" + template_name);
      if (*events) {
        Q q;
        if (!event_kind.empty()) q.emplace_back("kind", event_kind);
        if (!event_subject.empty()) q.emplace_back("subject", event_subject);
        if (!event_since.empty()) q.emplace_back("since", event_since);
        if (!event_until.empty()) q.emplace_back("until", event_until);
        return r.List("/security-events", "securityEvents", q, limit,
                      {{"AT", "at"}, {"KIND", "kind"}, {"SUBJECT", "subject"}, {"DETAIL", "detail"}});
      }
      return Fail(sh::Status(sh::Code::kInvalidArgument, "this command has no remote mode; run it on the companion host"));
    } catch (const nlohmann::json::exception& e) {
      return Fail(sh::Status(sh::Code::kDataLoss, std::string("malformed reply from the server: ") + e.what()));
    }
  }
  auto& fs = sh::PosixFilesystem::Instance();
  auto& clock = sh::SystemClock::Instance();

  if (*ca_cert) {
    auto cfg = cf::companion::LoadCompanionConfig(config_path, fs);
    if (!cfg) return Fail(cfg.error());
    auto pem = fs.ReadFile(cfg->ca.root_cert_file, 1 << 20);
    if (!pem) return Fail(pem.error());
    auto cert = sh::CertFromPem(*pem);
    if (!cert) return Fail(cert.error().WithContext(cfg->ca.root_cert_file));
    std::fputs(sh::CertToPem(cert->get()).c_str(), stdout);
    return 0;
  }

  if (*broker_config) {
    auto cfg = cf::companion::LoadCompanionConfig(config_path, fs);
    if (!cfg) return Fail(cfg.error());
    cf::companion::LoadOptions lo;
    auto state = cf::companion::LoadCompanionState(*cfg, fs, lo);
    if (!state) return Fail(state.error());
    if (!broker_hostnames.empty()) broker.hostnames = broker_hostnames;
    sh::StderrLogger log;
    sh::Status st = cf::companion::WriteBrokerConfig(broker, *state, fs, clock, log);
    if (!st.ok()) return Fail(st);
    std::printf("%s\n", sh::JoinPath(broker.out_dir, "mosquitto.conf").c_str());
    return 0;
  }

  if (*token_create) {
    auto state = Open(config_path, true);
    if (!state) return Fail(state.error());
    std::optional<std::chrono::seconds> ttl;
    if (!ttl_text.empty()) {
      auto d = sh::ParseDuration(ttl_text);
      if (!d) return Fail(d.error().WithContext("--ttl"));
      ttl = *d;
    }
    auto tok = cf::companion::CreateEnrollmentToken(*state->registry, state->config.tokens, serial, ttl, clock.Now());
    if (!tok) return Fail(tok.error());
    std::printf("%s\n", tok->secret.c_str());
    std::fprintf(stderr, "token for serial %s expires %s\n", serial.c_str(), sh::FormatRfc3339(tok->expires_at).c_str());
    return 0;
  }

  if (*token_list) {
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    auto list = state->registry->ListTokens(limit);
    if (!list) return Fail(list.error());
    std::vector<std::vector<std::string>> rows{{"SERIAL", "STATE", "CREATED", "EXPIRES", "USED"}};
    json out = json::array();
    const auto now = clock.Now();
    for (const auto& t : *list) {
      std::string st = t.used_at ? "USED" : (t.expires_at <= now ? "EXPIRED" : "UNUSED");
      rows.push_back({t.serial, st, sh::FormatRfc3339(t.created_at), sh::FormatRfc3339(t.expires_at),
                      t.used_at ? sh::FormatRfc3339(*t.used_at) : "-"});
      json j = {{"serial", t.serial}, {"state", st}, {"createdAt", sh::FormatRfc3339(t.created_at)},
                {"expiresAt", sh::FormatRfc3339(t.expires_at)}};
      if (t.used_at) j["usedAt"] = sh::FormatRfc3339(*t.used_at);
      out.push_back(std::move(j));
    }
    if (as_json) {
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      PrintTable(rows);
    }
    return 0;
  }

  if (*api_token_create) {
    auto role = cf::companion::ParseApiRole(api_token_role);
    if (!role) return Fail(role.error().WithContext("--role"));
    std::optional<std::chrono::seconds> ttl;
    if (!api_token_ttl.empty()) {
      auto d = sh::ParseDuration(api_token_ttl);
      if (!d) return Fail(d.error().WithContext("--ttl"));
      ttl = *d;
    }
    auto state = Open(config_path, true);
    if (!state) return Fail(state.error());
    auto tok = cf::companion::CreateApiToken(*state->registry, api_token_name, *role, ttl, clock.Now());
    if (!tok) return Fail(tok.error());
    std::printf("%s\n", tok->secret.c_str());
    std::fprintf(stderr, "API token %s (%s) created%s; the secret is not shown again\n", api_token_name.c_str(),
                 std::string(cf::companion::ApiRoleName(*role)).c_str(),
                 tok->record.expires_at ? (", expires " + sh::FormatRfc3339(*tok->record.expires_at)).c_str() : "");
    return 0;
  }

  if (*api_token_list) {
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    auto list = state->registry->ListApiTokens();
    if (!list) return Fail(list.error());
    json out = json::array();
    std::vector<std::vector<std::string>> rows{{"NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"}};
    for (const auto& t : *list) {
      json j = {{"name", t.name}, {"role", cf::companion::ApiRoleName(t.role)}, {"createdAt", sh::FormatRfc3339(t.created_at)}};
      if (t.expires_at) j["expiresAt"] = sh::FormatRfc3339(*t.expires_at);
      if (t.revoked_at) j["revokedAt"] = sh::FormatRfc3339(*t.revoked_at);
      out.push_back(j);
      rows.push_back({t.name, std::string(cf::companion::ApiRoleName(t.role)), sh::FormatRfc3339(t.created_at),
                      t.expires_at ? sh::FormatRfc3339(*t.expires_at) : "never",
                      t.revoked_at ? sh::FormatRfc3339(*t.revoked_at) : "-"});
    }
    if (as_json) {
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      PrintTable(rows);
    }
    return 0;
  }

  if (*api_token_revoke) {
    auto state = Open(config_path, true);
    if (!state) return Fail(state.error());
    auto now = clock.Now();
    sh::Status st = state->registry->RevokeApiToken(
        api_token_name, now, cf::companion::SecurityEvent{0, now, "api_token_revoked", "token:" + api_token_name,
                                                          "by " + OperatorName()});
    if (!st.ok()) return Fail(st);
    std::printf("%s revoked\n", api_token_name.c_str());
    return 0;
  }

  if (*events) {
    cf::companion::EventFilter f;
    f.kind = event_kind;
    f.subject = event_subject;
    for (auto [text, out, name] : {std::tuple{&event_since, &f.since, "--since"}, std::tuple{&event_until, &f.until, "--until"}}) {
      if (text->empty()) continue;
      sh::WallTime t;
      if (!sh::ParseRfc3339(*text, &t)) {
        return Fail(sh::Status(sh::Code::kInvalidArgument, std::string(name) + " must look like 2026-01-02T03:04:05Z"));
      }
      *out = t;
    }
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    std::vector<cf::companion::SecurityEvent> all;
    while (static_cast<int64_t>(all.size()) < limit) {
      auto page = state->registry->ListSecurityEventsPage(f, std::min<int64_t>(limit - static_cast<int64_t>(all.size()), 500));
      if (!page) return Fail(page.error());
      for (auto& e : page->items) all.push_back(std::move(e));
      if (!page->next) break;
      f.before = *page->next;
    }
    if (as_json) {
      json out = json::array();
      for (const auto& e : all) {
        out.push_back({{"eventId", e.id}, {"at", sh::FormatRfc3339(e.at)}, {"kind", e.kind}, {"subject", e.subject},
                       {"detail", e.detail}});
      }
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::vector<std::vector<std::string>> rows{{"AT", "KIND", "SUBJECT", "DETAIL"}};
      for (const auto& e : all) rows.push_back({sh::FormatRfc3339(e.at), e.kind, e.subject, e.detail});
      PrintTable(rows);
    }
    return 0;
  }

  if (*things_show || *certs_show || *templates_list || *templates_show || !status_filter.empty() ||
      !expiring_before.empty()) {
    return Fail(sh::Status(sh::Code::kInvalidArgument, "this needs remote mode (--server)"));
  }

  if (*certs_list) {
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    auto list = state->registry->ListCerts(thing_filter, limit);
    if (!list) return Fail(list.error());
    if (as_json) {
      json out = json::array();
      for (const auto& c : *list) out.push_back(cf::companion::CertToJson(c, false));
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::vector<std::vector<std::string>> rows{{"ID", "THING", "STATUS", "NOT AFTER", "SOURCE", "SERIAL"}};
      for (const auto& c : *list) {
        std::string status(cf::companion::CertStatusName(c.status));
        if (c.superseded_by) status += " (superseded)";
        rows.push_back({c.id.substr(0, 16), c.thing_name, status, sh::FormatRfc3339(c.not_after), c.source, c.serial});
      }
      PrintTable(rows);
    }
    return 0;
  }

  if (*certs_revoke || *certs_deactivate) {
    auto state = Open(config_path, true);
    if (!state) return Fail(state.error());
    auto status = *certs_revoke ? cf::companion::CertStatus::kRevoked : cf::companion::CertStatus::kInactive;
    sh::Status st = cf::companion::ChangeCertificateStatus(*state->registry, cert_id, status, OperatorName(),
                                                           change_reason, clock.Now());
    if (!st.ok()) return Fail(st);
    std::printf("%s %s\n", cert_id.c_str(), std::string(cf::companion::CertStatusName(status)).c_str());
    return 0;
  }

  if (*rotate) {
    if (rotate_thing.empty() == expiring_within.empty()) {
      return Fail(sh::Status(sh::Code::kInvalidArgument, "give either THING or --expiring-within"));
    }
    auto state = Open(config_path, !dry_run);
    if (!state) return Fail(state.error());
    return Rotate(*state->registry, state->config, rotate_thing, expiring_within, rotate_reason, rotate_deadline, dry_run);
  }

  if (*rotations_list) {
    cf::companion::RotationFilter filter;
    filter.thing = thing_filter;
    if (!state_filter.empty()) {
      auto s = cf::companion::ParseRotationState(state_filter);
      if (!s) return Fail(s.error().WithContext("--state"));
      filter.state = *s;
    }
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    auto list = state->registry->ListRotations(filter, limit);
    if (!list) return Fail(list.error());
    if (as_json) {
      json out = json::array();
      for (const auto& r : *list) out.push_back(RotationJson(r));
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::vector<std::vector<std::string>> rows{{"ID", "THING", "STATE", "CREATED", "DEADLINE", "PUBLISHED", "REASON"}};
      for (const auto& r : *list) {
        rows.push_back({r.id, r.thing_name, std::string(cf::companion::RotationStateName(r.state)),
                        sh::FormatRfc3339(r.created_at), sh::FormatRfc3339(r.deadline),
                        r.published_at ? sh::FormatRfc3339(*r.published_at) : "-", r.reason});
      }
      PrintTable(rows);
    }
    return 0;
  }

  if (*rotations_cancel) {
    auto state = Open(config_path, true);
    if (!state) return Fail(state.error());
    sh::Status st = state->registry->CancelRotation(rotation_id);
    if (!st.ok()) return Fail(st);
    std::printf("%s CANCELLED\n", rotation_id.c_str());
    return 0;
  }

  if (*things_list) {
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    auto list = state->registry->ListThings(limit);
    if (!list) return Fail(list.error());
    if (as_json) {
      json out = json::array();
      for (const auto& t : *list) out.push_back(cf::companion::ThingToJson(t));
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::vector<std::vector<std::string>> rows{{"THING", "CREATED", "CERTIFICATE", "NOT AFTER"}};
      for (const auto& t : *list) {
        rows.push_back({t.name, sh::FormatRfc3339(t.created_at), t.current_cert_id ? t.current_cert_id->substr(0, 16) : "-",
                        t.current_not_after ? sh::FormatRfc3339(*t.current_not_after) : "-"});
      }
      PrintTable(rows);
    }
    return 0;
  }
  return 0;
}
