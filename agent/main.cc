// certfleet-agent: the gateway side: the daemon (`run`), its control commands (`status`,
// `renew --now`), the one-shot EST commands, fleet provisioning by claim and key store
// maintenance.
#include <curl/curl.h>
#include <signal.h>

#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "agent/config.h"
#include "agent/control.h"
#include "agent/daemon.h"
#include "agent/daemon_io.h"
#include "agent/failpoint.h"
#include "agent/journal.h"
#include "agent/post_rotation.h"
#include "agent/est_commands.h"
#include "agent/provision.h"
#include "hal/keystore.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/mqtt/client.h"
#include "shared/systemd/notifier.h"
#include "shared/x509/cert.h"

#ifndef CERTFLEET_VERSION
#define CERTFLEET_VERSION "0.0.0"
#endif

namespace cf = certfleet;
namespace sh = certfleet::shared;

namespace {

int Fail(const sh::Status& st) {
  std::fprintf(stderr, "certfleet-agent: %s\n", st.ToString().c_str());
  return 1;
}

std::string TrimNewline(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

nlohmann::json SnapshotJson(const cf::agent::Journal& j, const std::string& cert_id, const std::string& serial,
                            std::optional<sh::WallTime> not_after, std::optional<bool> connected) {
  auto t = [](const std::optional<sh::WallTime>& w) { return w ? sh::FormatRfc3339(*w) : std::string(); };
  nlohmann::json o = {
      {"thingName", j.thing_name},
      {"certificateId", cert_id},
      {"serial", serial},
      {"notAfter", t(not_after)},
      {"state", std::string(cf::agent::StateName(j.state))},
      {"keySlot", j.current_slot},
      {"lastError", j.last_error},
      {"lastRotation", t(j.last_rotation)},
      {"nextRenewal", t(j.next_renewal)},
      {"nextAttempt", t(j.next_attempt)},
      {"failures", j.failures},
      {"rotationRequested", j.rotation_requested},
      {"lastTrustedTime", t(j.last_trusted_time)},
  };
  if (connected) o["connected"] = *connected;
  return o;
}

// `status`: from the journal and the certificate file; works without the daemon.
int StatusCommand(const cf::agent::AgentConfig& cfg, sh::Filesystem& fs, bool as_json) {
  cf::agent::JournalStore store(fs, cfg.agent.state_dir);
  auto loaded = store.Load();
  if (!loaded) return Fail(loaded.error());
  cf::agent::Journal j = loaded->value_or(cf::agent::Journal{});
  std::string cert_id, serial;
  std::optional<sh::WallTime> not_after;
  if (auto pem = fs.ReadFile(cfg.identity.cert_file, 1 << 20)) {
    if (auto cert = sh::CertFromPem(*pem)) {
      sh::CertInfo info = sh::DescribeCert(cert->get());
      cert_id = info.id;
      serial = info.serial;
      not_after = info.not_after;
    }
  }
  std::optional<bool> connected;
  if (auto answer = cf::agent::ControlRequest(cfg.agent.control_socket, "status", std::chrono::seconds(5))) {
    auto live = nlohmann::json::parse(*answer, nullptr, false);
    if (live.is_object() && live.contains("connected") && live["connected"].is_boolean()) connected = live["connected"].get<bool>();
  }
  nlohmann::json o = SnapshotJson(j, cert_id, serial, not_after, connected);
  if (!loaded->has_value()) o["state"] = "unknown (no journal yet)";
  if (as_json) {
    std::printf("%s\n", o.dump().c_str());
    return 0;
  }
  auto line = [](const char* k, const std::string& v) { std::printf("%-16s %s\n", k, v.empty() ? "-" : v.c_str()); };
  line("thing:", o["thingName"]);
  line("certificate id:", o["certificateId"]);
  line("serial:", o["serial"]);
  line("not after:", o["notAfter"]);
  line("state:", o["state"]);
  line("key slot:", o["keySlot"]);
  line("daemon:", connected ? (*connected ? "running, connected" : "running, not connected") : "not reachable");
  line("last rotation:", o["lastRotation"]);
  line("next renewal:", o["nextRenewal"]);
  line("next attempt:", o["nextAttempt"]);
  line("last error:", o["lastError"]);
  return 0;
}

// The daemon's one-line state for systemd's STATUS=.
std::string ServiceStatusLine(const cf::agent::DaemonSnapshot& s) {
  const cf::agent::Journal& j = s.journal;
  std::string line = std::string(cf::agent::StateName(j.state));
  if (!j.thing_name.empty()) line += " thing=" + j.thing_name;
  if (!s.certificate_id.empty()) line += " certificate=" + s.certificate_id.substr(0, 16);
  line += s.connected ? ", connected" : ", not connected";
  if (!j.last_error.empty()) line += ", last error: " + j.last_error;
  if (line.size() > 200) line.resize(200);
  return line;
}

// Renewal policy of a config, as the daemon takes it.
cf::agent::RenewalPolicy RenewalPolicyOf(const cf::agent::AgentConfig& cfg) {
  cf::agent::RenewalPolicy r;
  r.threshold = cfg.renewal.threshold;
  r.before_expiry = std::chrono::hours(24) * cfg.renewal.days_before_expiry;
  r.jitter = cfg.renewal.jitter;
  r.retry_base = cfg.renewal.retry_base;
  r.retry_cap = cfg.renewal.retry_cap;
  return r;
}

int RunDaemon(const cf::agent::AgentConfig& cfg, const std::string& config_path, sh::Filesystem& fs, sh::Logger& log,
              const std::function<void(sh::LogLevel)>& set_log_level) {
  namespace ag = cf::agent;
  sh::ServiceNotifier notifier;
  // What a SIGHUP may swap: post-rotation hooks and exports read the live config.
  std::mutex live_mu;
  auto live = std::make_shared<const ag::AgentConfig>(cfg);
  std::string anchor_file = cfg.est.trust_anchor_file;
  if (anchor_file.empty()) return Fail(sh::Status(sh::Code::kInvalidArgument, "run needs est.trust_anchor_file"));
  if (cfg.est.server.empty()) return Fail(sh::Status(sh::Code::kInvalidArgument, "run needs est.server"));
  if (cfg.identity.cert_file.empty()) return Fail(sh::Status(sh::Code::kInvalidArgument, "run needs identity.cert_file"));
  auto anchor = fs.ReadFile(anchor_file, 1 << 20);
  if (!anchor) return Fail(anchor.error().WithContext(anchor_file));
  std::string mqtt_anchor_file = cfg.mqtt.trust_anchor_file.empty() ? anchor_file : cfg.mqtt.trust_anchor_file;
  auto mqtt_anchor = fs.ReadFile(mqtt_anchor_file, 1 << 20);
  if (!mqtt_anchor) return Fail(mqtt_anchor.error().WithContext(mqtt_anchor_file));
  auto keys = cf::hal::OpenKeyStore(cfg.keystore, fs);
  if (!keys) return Fail(keys.error());
  auto key_type = sh::ParseKeyType(cfg.identity.key_type);
  if (!key_type) return Fail(key_type.error());

  ag::MqttBroker broker({cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.broker_name, *mqtt_anchor,
                         static_cast<int>(cfg.mqtt.keepalive.count()),
                         std::chrono::duration_cast<std::chrono::milliseconds>(cfg.mqtt.timeout)},
                        log);
  ag::EstEnroller enroller({cfg.est.server, *anchor, cfg.est.tls12_only, cfg.est.timeout});

  std::function<sh::Status()> bootstrap;
  if (!cfg.provisioning.template_name.empty()) {
    bootstrap = [&]() -> sh::Status {
      auto po = ag::ProvisionOptionsFromConfig(cfg);
      if (!po) return po.error().WithContext(config_path);
      auto r = ag::RunProvision(*po, fs, sh::SystemClock::Instance(), log,
                                [](std::chrono::milliseconds d) { std::this_thread::sleep_for(d); });
      return r ? sh::Status::Ok() : r.error();
    };
  } else if (!cfg.est.user.empty() || !cfg.est.client_cert_file.empty()) {
    bootstrap = [&]() -> sh::Status {
      ag::EstCommandOptions o;
      o.server = cfg.est.server;
      o.trust_anchor_file = anchor_file;
      o.user = cfg.est.user;
      if (!cfg.est.password_file.empty()) {
        auto pw = fs.ReadFile(cfg.est.password_file, 4096);
        if (!pw) return pw.error().WithContext(cfg.est.password_file);
        o.password = TrimNewline(*pw);
      }
      o.client_cert_file = cfg.est.client_cert_file;
      o.client_key_slot = cfg.est.client_key_slot;
      o.common_name = cfg.identity.common_name;
      o.key_type = *key_type;
      o.keystore = cfg.keystore;
      o.key_slot = cfg.identity.key_slot;
      o.out_file = cfg.identity.cert_file;
      o.tls12_only = cfg.est.tls12_only;
      auto r = ag::RunEnroll(o, fs, sh::SystemClock::Instance(), log);
      return r ? sh::Status::Ok() : r.error();
    };
  }

  ag::DaemonOptions d;
  d.cert_file = cfg.identity.cert_file;
  d.key_slot = cfg.identity.key_slot;
  d.key_type = *key_type;
  d.trust_anchor_pem = *anchor;
  d.state_dir = cfg.agent.state_dir;
  d.renewal = RenewalPolicyOf(cfg);
  d.time_sync_file = cfg.agent.time_sync_file;
  d.agent_version = CERTFLEET_VERSION;
  // Expired-certificate recovery needs claim provisioning (docs/agent.md).
  std::function<sh::Status(const std::string&)> recover;
  if (!cfg.provisioning.template_name.empty()) {
    recover = [&](const std::string& new_slot) -> sh::Status {
      auto po = ag::ProvisionOptionsFromConfig(cfg);
      if (!po) return po.error().WithContext(config_path);
      po->key_slot = new_slot;
      po->replace_identity = true;
      auto r = ag::RunProvision(*po, fs, sh::SystemClock::Instance(), log,
                                [](std::chrono::milliseconds delay) { std::this_thread::sleep_for(delay); });
      return r ? sh::Status::Ok() : r.error();
    };
  }
  ag::Daemon daemon(d, ag::DaemonDeps{fs, **keys, sh::SystemClock::Instance(), log, broker, enroller, bootstrap,
                                      [&](const ag::CommittedIdentity& id) {
                                        std::shared_ptr<const ag::AgentConfig> now;
                                        {
                                          std::lock_guard lock(live_mu);
                                          now = live;
                                        }
                                        ag::RunPostRotation(*now, id, log);
                                      },
                                      recover});

  // Signals go to one thread that stops the loop; every other thread keeps them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::atomic<bool> stop{false};

  std::string socket_dir = sh::DirName(cfg.agent.control_socket);
  if (!fs.Exists(socket_dir)) {
    sh::Status st = fs.MakeDirs(socket_dir, 0700);
    if (!st.ok()) return Fail(st.WithContext(socket_dir));
  }
  auto control = ag::ControlServer::Start(
      cfg.agent.control_socket,
      [&](const std::string& command) -> std::string {
        if (command == "status") {
          ag::DaemonSnapshot s = daemon.Snapshot();
          nlohmann::json o = SnapshotJson(s.journal, s.certificate_id, s.serial, s.not_after, s.connected);
          o["clockTrusted"] = s.clock_trusted;
          o["clockReason"] = s.clock_reason;
          return o.dump();
        }
        if (command == "renew") {
          auto promise = std::make_shared<std::promise<std::string>>();
          auto future = promise->get_future();
          daemon.RequestRenewal([promise](const std::string& r) { promise->set_value(r); });
          if (future.wait_for(std::chrono::minutes(15)) != std::future_status::ready) {
            return "error the rotation did not finish within 15 minutes; see `certfleet-agent status`";
          }
          return future.get();
        }
        return "error unknown command (status, renew)";
      },
      log);
  if (!control) return Fail(control.error());

  sh::Status st = daemon.Start();
  if (!st.ok()) return Fail(st);
  std::thread signal_thread([&] {
    int sig = 0;
    while (sigwait(&signals, &sig) == 0) {
      if (sig != SIGHUP) break;
      // Parse anew; swap only a valid config, and only what can change while running.
      notifier.Reloading();
      auto fresh = ag::LoadAgentConfig(config_path, fs);
      auto level = fresh ? sh::ParseLogLevel(fresh->log_level) : sh::Result<sh::LogLevel>(sh::LogLevel::kInfo);
      if (!fresh || !level) {
        log.Error("SIGHUP: the configuration is not valid; keeping the running one",
                  {{"config", config_path}, {"error", (fresh ? level.error() : fresh.error()).ToString()}});
      } else {
        set_log_level(*level);
        daemon.SetRenewalPolicy(RenewalPolicyOf(*fresh));
        {
          std::lock_guard lock(live_mu);
          live = std::make_shared<const ag::AgentConfig>(std::move(*fresh));
        }
        log.Info("SIGHUP: configuration reloaded (renewal, hooks, exports, log_level; other keys need a restart)",
                 {{"config", config_path}});
      }
      notifier.Ready(ServiceStatusLine(daemon.Snapshot()));
    }
    log.Info("stopping", {{"signal", std::to_string(sig)}});
    notifier.Stopping();
    stop = true;
    daemon.Wake();
  });
  log.Info("certfleet-agent running", {{"version", CERTFLEET_VERSION}, {"state_dir", cfg.agent.state_dir}});
  // Ready: the config is valid, the journal loaded, and the identity is loaded or its
  // provisioning was started (Start made the first attempt).
  notifier.Ready(ServiceStatusLine(daemon.Snapshot()));
  auto watchdog = notifier.watchdog_interval();
  daemon.Run(
      stop,
      [&] {
        // The daemon thread's own heartbeat: a hung Tick stops it.
        notifier.Watchdog();
        if (!stop) notifier.Status(ServiceStatusLine(daemon.Snapshot()));
      },
      watchdog.value_or(std::chrono::milliseconds(60000)));
  if (!stop) pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  control->reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"certfleet-agent: keeps this gateway's X.509 identity alive"};
  app.require_subcommand(1);
  std::string config_path;
  app.add_option("--config", config_path, "agent.toml (values there are defaults for the flags)");

  // Flags; empty means "take it from the config file".
  std::string server, anchor, user, password, password_file, client_cert, client_key_slot, common_name, key_dir,
      key_slot, key_type, cert, out, keystore_backend;
  bool keep_key = false, tls12 = false, verbose = false;

  auto* est = app.add_subcommand("est", "EST (RFC 7030) operations")->require_subcommand(1);
  auto add_common = [&](CLI::App* c) {
    c->add_option("--server", server, "https://HOST:PORT[/LABEL]");
    c->add_option("--trust-anchor", anchor, "PEM file of the CA that signs the EST server's certificate");
    c->add_flag("--tls12", tls12, "cap TLS at 1.2");
    c->add_flag("-v,--verbose", verbose, "log progress to stderr");
  };
  auto add_keys = [&](CLI::App* c) {
    c->add_option("--key-dir", key_dir, "directory of the file key store");
    c->add_option("--keystore", keystore_backend,
                  "key store backend: file (default), memory, pkcs11, tpm (the hardware ones take their settings "
                  "from [keystore] in --config)");
    c->add_option("--key-type", key_type, "ec-p256 (default), ec-p384, rsa-2048, rsa-3072");
  };
  auto* cacerts = est->add_subcommand("cacerts", "fetch the CA certificates");
  add_common(cacerts);
  cacerts->add_option("--out", out, "write them here (PEM); default stdout");

  auto* enroll = est->add_subcommand("enroll", "enroll a new identity (simpleenroll)");
  add_common(enroll);
  add_keys(enroll);
  enroll->add_option("--common-name", common_name, "the certificate's CN (the thing name or serial)");
  enroll->add_option("--user", user, "HTTP Basic user (the device serial)");
  enroll->add_option("--password", password, "HTTP Basic password (the one-time token)");
  enroll->add_option("--password-file", password_file, "read the password from this file");
  enroll->add_option("--client-cert", client_cert, "claim certificate (PEM) for TLS client authentication");
  enroll->add_option("--client-key-slot", client_key_slot, "key store slot of the claim key");
  enroll->add_option("--key-slot", key_slot, "slot for the new key (default identity-a)");
  enroll->add_option("--out", out, "where to write the new certificate (PEM)");

  auto* reenroll = est->add_subcommand("reenroll", "renew the current identity (simplereenroll), with a new key by default");
  add_common(reenroll);
  add_keys(reenroll);
  reenroll->add_option("--cert", cert, "the current certificate (PEM)");
  reenroll->add_option("--out", out, "where to write the new certificate; equal to --cert to rotate in place");
  reenroll->add_flag("--keep-key", keep_key, "renew with the same key instead of a new one");

  auto* keys = app.add_subcommand("keys", "key store maintenance")->require_subcommand(1);
  std::string import_from, import_slot;
  auto* keys_import = keys->add_subcommand("import", "import a PEM private key (e.g. a factory claim key)");
  keys_import->add_option("--key-dir", key_dir, "directory of the file key store");
  keys_import->add_option("--slot", import_slot, "slot name")->required();
  keys_import->add_option("--from", import_from, "PEM private key file")->required();
  auto* keys_list = keys->add_subcommand("list", "list key slots");
  keys_list->add_option("--key-dir", key_dir, "directory of the file key store");

  auto* provision = app.add_subcommand("provision", "obtain a production identity with the claim certificate (MQTT)");
  provision->add_option("--config", config_path, "agent.toml with a [provisioning] table (required)");
  provision->add_flag("-v,--verbose", verbose, "log progress to stderr");

  auto* run = app.add_subcommand("run", "the daemon: keep this gateway's identity alive (needs --config)");
  run->add_option("--config", config_path, "agent.toml");
  run->add_flag("-v,--verbose", verbose, "log everything");
  bool as_json = false, renew_now = false;
  auto* status = app.add_subcommand("status", "identity, expiry, state, last error, next planned renewal");
  status->add_option("--config", config_path, "agent.toml");
  status->add_flag("--json", as_json, "one JSON object");
  auto* renew = app.add_subcommand("renew", "ask the running daemon to rotate");
  renew->add_option("--config", config_path, "agent.toml");
  renew->add_flag("--now", renew_now, "rotate now, whatever the renewal policy says")->required();

  app.add_subcommand("failpoints", "list the fault-injection points (CERTFLEET_AGENT_FAILPOINT, docs/agent.md)");

  CLI11_PARSE(app, argc, argv);
  if (app.got_subcommand("failpoints")) {
    for (std::string_view name : cf::agent::FailpointNames()) std::printf("%.*s\n", static_cast<int>(name.size()), name.data());
    return 0;
  }
  sh::MqttLibrary mqtt_library;

  auto& fs = sh::PosixFilesystem::Instance();
  cf::agent::AgentConfig cfg;
  if (!config_path.empty()) {
    auto loaded = cf::agent::LoadAgentConfig(config_path, fs);
    if (!loaded) return Fail(loaded.error());
    cfg = *loaded;
  }
  auto pick = [](const std::string& flag, const std::string& fallback) { return flag.empty() ? fallback : flag; };

  cf::agent::EstCommandOptions o;
  o.server = pick(server, cfg.est.server);
  o.trust_anchor_file = pick(anchor, cfg.est.trust_anchor_file);
  o.user = pick(user, cfg.est.user);
  o.client_cert_file = pick(client_cert, cfg.est.client_cert_file);
  o.client_key_slot = pick(client_key_slot, cfg.est.client_key_slot);
  o.common_name = pick(common_name, cfg.identity.common_name);
  o.keystore = cfg.keystore;
  if (!keystore_backend.empty()) o.keystore.backend = keystore_backend;
  if (!key_dir.empty()) o.keystore.dir = key_dir;
  o.key_slot = pick(key_slot, cfg.identity.key_slot);
  o.cert_file = pick(cert, cfg.identity.cert_file);
  o.out_file = pick(out, *reenroll ? o.cert_file : "");
  o.keep_key = keep_key;
  o.tls12_only = tls12 || cfg.est.tls12_only;
  auto kt = sh::ParseKeyType(pick(key_type, cfg.identity.key_type));
  if (!kt) return Fail(kt.error().WithContext("--key-type"));
  o.key_type = *kt;
  std::string pw_file = pick(password_file, cfg.est.password_file);
  o.password = password;
  if (o.password.empty() && !pw_file.empty()) {
    auto pw = fs.ReadFile(pw_file, 4096);
    if (!pw) return Fail(pw.error().WithContext("--password-file"));
    o.password = TrimNewline(*pw);
  }
  if (!o.user.empty() && o.password.empty()) {
    return Fail(sh::Status(sh::Code::kInvalidArgument, "--user needs --password or --password-file"));
  }

  // Without a config file the one-shot commands only warn; -v shows everything.
  sh::LogLevel level = config_path.empty() ? sh::LogLevel::kWarning
                                           : sh::ParseLogLevel(cfg.log_level).value_or(sh::LogLevel::kInfo);
  sh::StderrLogger log(verbose ? sh::LogLevel::kDebug : level);

  if (*status) return StatusCommand(cfg, fs, as_json);
  if (*renew) {
    auto answer = cf::agent::ControlRequest(cfg.agent.control_socket, "renew", std::chrono::minutes(16));
    if (!answer) return Fail(answer.error());
    std::printf("%s\n", answer->c_str());
    return answer->rfind("ok", 0) == 0 ? 0 : 1;
  }
  if (*run) {
    if (config_path.empty()) return Fail(sh::Status(sh::Code::kInvalidArgument, "run needs --config FILE"));
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      return Fail(sh::Status(sh::Code::kInternal, "curl_global_init failed"));
    }
    // Under systemd (stderr is the journal) records go to the journal with their fields.
    std::unique_ptr<sh::JournalLogger> journal;
    if (sh::StderrIsJournal()) journal = std::make_unique<sh::JournalLogger>("certfleet-agent", verbose ? sh::LogLevel::kDebug : level);
    sh::Logger& daemon_log = journal ? static_cast<sh::Logger&>(*journal) : log;
    int rc = RunDaemon(cfg, config_path, fs, daemon_log, [&](sh::LogLevel l) {
      if (verbose) return;
      if (journal) journal->set_min_level(l);
      log.set_min_level(l);
    });
    curl_global_cleanup();
    return rc;
  }

  if (*keys_import || *keys_list) {
    auto store = cf::hal::OpenKeyStore(o.keystore, fs);
    if (!store) return Fail(store.error());
    if (*keys_list) {
      auto slots = (*store)->List();
      if (!slots) return Fail(slots.error());
      for (const auto& s : *slots) std::printf("%s\n", s.c_str());
      return 0;
    }
    auto pem = fs.ReadFile(import_from, 1 << 16);
    if (!pem) return Fail(pem.error());
    auto key = sh::PrivateKeyFromPem(*pem);
    OPENSSL_cleanse(pem->data(), pem->size());
    if (!key) return Fail(key.error().WithContext(import_from));
    auto handle = (*store)->Import(import_slot, key->get());
    if (!handle) return Fail(handle.error());
    std::printf("%s\n", (*handle)->uri().c_str());
    return 0;
  }

  if (*provision) {
    if (config_path.empty()) return Fail(sh::Status(sh::Code::kInvalidArgument, "provision needs --config FILE"));
    auto po = cf::agent::ProvisionOptionsFromConfig(cfg);
    if (!po) return Fail(po.error().WithContext(config_path));
    auto result = cf::agent::RunProvision(*po, fs, sh::SystemClock::Instance(), log,
                                          [](std::chrono::milliseconds d) { std::this_thread::sleep_for(d); });
    if (!result) return Fail(result.error());
    std::printf("thing=%s certificate_id=%s not_after=%s key_slot=%s\n", result->thing_name.c_str(),
                result->certificate_id.c_str(), sh::FormatRfc3339(result->not_after).c_str(),
                result->key_slot.c_str());
    return 0;
  }

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    return Fail(sh::Status(sh::Code::kInternal, "curl_global_init failed"));
  }
  int rc = 0;
  if (*cacerts) {
    auto pem = cf::agent::RunCaCerts(o, fs);
    if (!pem) {
      rc = Fail(pem.error());
    } else if (out.empty()) {
      std::fputs(pem->c_str(), stdout);
    } else {
      sh::Status st = fs.WriteFileAtomic(out, *pem, 0644);
      if (!st.ok()) rc = Fail(st);
    }
  } else if (*enroll || *reenroll) {
    auto result = *enroll ? cf::agent::RunEnroll(o, fs, sh::SystemClock::Instance(), log)
                          : cf::agent::RunReenroll(o, fs, sh::SystemClock::Instance(), log);
    if (!result) {
      rc = Fail(result.error());
    } else {
      std::printf("serial=%s fingerprint=%s not_after=%s key_slot=%s out=%s%s\n", result->serial.c_str(),
                  result->fingerprint.c_str(), sh::FormatRfc3339(result->not_after).c_str(), result->key_slot.c_str(),
                  o.out_file.c_str(),
                  result->deleted_key_slot.empty() ? "" : (" deleted_key_slot=" + result->deleted_key_slot).c_str());
    }
  }
  curl_global_cleanup();
  return rc;
}
