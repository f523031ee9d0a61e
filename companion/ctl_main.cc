// certfleetctl: the operator's command line. Local admin mode reads the companion's
// config and registry directly (run it as the companion's user).
#include <pwd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "companion/broker_config.h"
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

int Fail(const sh::Status& st) {
  std::fprintf(stderr, "certfleetctl: %s\n", st.ToString().c_str());
  return 1;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& r : rows) {
    widths.resize(std::max(widths.size(), r.size()));
    for (size_t i = 0; i < r.size(); ++i) widths[i] = std::max(widths[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(widths[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

sh::Result<cf::companion::CompanionState> Open(const std::string& config_path, bool write) {
  auto& fs = sh::PosixFilesystem::Instance();
  CF_ASSIGN_OR_RETURN(cf::companion::CompanionConfig cfg, cf::companion::LoadCompanionConfig(config_path, fs));
  cf::companion::LoadOptions lo;
  lo.load_issuer = false;
  lo.registry_read_only = !write;
  return cf::companion::LoadCompanionState(cfg, fs, lo);
}

// "operator:<login name>" for the rotation requests an operator creates.
std::string OperatorName() {
  struct passwd* pw = getpwuid(getuid());
  return std::string("operator:") + (pw != nullptr && pw->pw_name != nullptr ? pw->pw_name : std::to_string(getuid()));
}

json RotationJson(const cf::companion::RotationRecord& r) {
  json j = {{"rotationId", r.id}, {"thingName", r.thing_name}, {"reason", r.reason},
            {"createdAt", sh::FormatRfc3339(r.created_at)}, {"deadline", sh::FormatRfc3339(r.deadline)},
            {"state", cf::companion::RotationStateName(r.state)}, {"createdBy", r.created_by}};
  if (r.published_at) j["publishedAt"] = sh::FormatRfc3339(*r.published_at);
  if (r.completed_at) j["completedAt"] = sh::FormatRfc3339(*r.completed_at);
  if (r.new_cert_id) j["certificateId"] = *r.new_cert_id;
  return j;
}

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
    auto id = cf::companion::NewRotationId();
    if (!id) return Fail(id.error());
    cf::companion::RotationRecord r;
    r.id = *id;
    r.thing_name = name;
    r.reason = reason;
    r.created_at = now;
    r.deadline = now + deadline;
    r.created_by = OperatorName();
    sh::Status st = registry.CreateRotation(r);
    if (!st.ok()) {
      std::fprintf(stderr, "certfleetctl: %s: %s\n", name.c_str(), st.ToString().c_str());
      ++failures;
      continue;
    }
    std::printf("created %s %s deadline %s\n", r.id.c_str(), name.c_str(), sh::FormatRfc3339(r.deadline).c_str());
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

  CLI11_PARSE(app, argc, argv);
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
    std::chrono::seconds ttl = state->config.tokens.default_ttl;
    if (!ttl_text.empty()) {
      auto d = sh::ParseDuration(ttl_text);
      if (!d) return Fail(d.error().WithContext("--ttl"));
      ttl = *d;
    }
    if (ttl.count() <= 0 || ttl > state->config.tokens.max_ttl) {
      return Fail(sh::Status(sh::Code::kInvalidArgument,
                             "--ttl must be positive and at most tokens.max_ttl (" +
                                 sh::FormatDuration(state->config.tokens.max_ttl) + ")"));
    }
    if (!cf::companion::IsValidThingName(serial)) {
      return Fail(sh::Status(sh::Code::kInvalidArgument,
                             "--serial must be 1-64 of A-Z a-z 0-9 - _ . : and not start with certfleet-"));
    }
    auto tok = cf::companion::NewToken();
    if (!tok) return Fail(tok.error());
    auto now = clock.Now();
    sh::Status st = state->registry->CreateToken(cf::companion::TokenHash(*tok), serial, now, now + ttl);
    if (!st.ok()) return Fail(st);
    std::printf("%s\n", tok->c_str());
    std::fprintf(stderr, "token for serial %s expires %s\n", serial.c_str(), sh::FormatRfc3339(now + ttl).c_str());
    return 0;
  }

  if (*certs_list) {
    auto state = Open(config_path, false);
    if (!state) return Fail(state.error());
    auto list = state->registry->ListCerts(thing_filter, limit);
    if (!list) return Fail(list.error());
    if (as_json) {
      json out = json::array();
      for (const auto& c : *list) {
        json j = {{"certificateId", c.id}, {"thingName", c.thing_name}, {"serialNumber", c.serial},
                  {"subject", c.subject}, {"notBefore", sh::FormatRfc3339(c.not_before)},
                  {"notAfter", sh::FormatRfc3339(c.not_after)}, {"issuedAt", sh::FormatRfc3339(c.issued_at)},
                  {"status", cf::companion::CertStatusName(c.status)}, {"source", c.source},
                  {"current", c.status == cf::companion::CertStatus::kActive && !c.superseded_by}};
        if (c.superseded_by) j["supersededBy"] = *c.superseded_by;
        out.push_back(std::move(j));
      }
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
    sh::Status st = state->registry->SetCertStatus(cert_id, status, clock.Now());
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
      for (const auto& t : *list) {
        json j = {{"thingName", t.name}, {"createdAt", sh::FormatRfc3339(t.created_at)}};
        if (t.current_cert_id) {
          j["certificateId"] = *t.current_cert_id;
          j["notAfter"] = sh::FormatRfc3339(*t.current_not_after);
        }
        out.push_back(std::move(j));
      }
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
