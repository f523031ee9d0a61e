// certfleet-companion: init a state directory, or serve EST in the foreground.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <atomic>
#include <ctime>
#include <thread>

#include <curl/curl.h>

#include "companion/api_server.h"
#include "companion/est_server.h"
#include "companion/metrics.h"
#include "companion/hook_set.h"
#include "companion/provisioning_service.h"
#include "companion/audit.h"
#include "companion/rotation_coordinator.h"
#include "shared/mqtt/client.h"
#include "shared/x509/cert.h"
#include "companion/init.h"
#include "shared/core/config.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/systemd/notifier.h"

namespace cf = certfleet;
namespace sh = certfleet::shared;

namespace {

int Fail(const sh::Status& st) {
  std::fprintf(stderr, "certfleet-companion: %s\n", st.ToString().c_str());
  return 1;
}

sh::Result<std::unique_ptr<cf::companion::ProvisioningService>> MakeProvisioning(cf::companion::CompanionState& state,
                                                                                 cf::companion::HookRunner& hooks,
                                                                                 const cf::companion::HookSet& hook_set,
                                                                                 sh::Logger& log) {
  const auto& pc = state.config.provisioning;
  cf::companion::ProvisioningOptions o;
  auto& fs = sh::PosixFilesystem::Instance();
  if (fs.Exists(pc.template_dir)) {
    CF_ASSIGN_OR_RETURN(o.templates, cf::companion::LoadTemplateDir(pc.template_dir, fs));
  }
  if (o.templates.empty()) log.Warn("no provisioning templates", {{"dir", pc.template_dir}});
  o.pre_provision_hook = hook_set.pre_provision;
  o.post_provision_hook = hook_set.post_provision;
  o.allow_create_keys = pc.allow_create_keys;
  o.ownership_token_ttl = pc.ownership_token_ttl;
  CF_ASSIGN_OR_RETURN(o.dialect, sh::ParseDialect(pc.dialect));
  o.workers = pc.workers;
  return std::make_unique<cf::companion::ProvisioningService>(state, std::move(o), hooks, sh::SystemClock::Instance(), log);
}

int RunServe(const std::string& config_path, const std::string& listen_override, const std::string& ready_file,
             const std::string& api_listen_override, const std::string& api_ready_file) {
  auto& fs = sh::PosixFilesystem::Instance();
  auto cfg = cf::companion::LoadCompanionConfig(config_path, fs);
  if (!cfg) return Fail(cfg.error());
  if (!api_listen_override.empty()) {
    sh::Status st = sh::CheckHostPort(api_listen_override);
    if (!st.ok()) return Fail(st.WithContext("--api-listen"));
  }
  if (!listen_override.empty()) {
    sh::Status st = sh::CheckHostPort(listen_override);
    if (!st.ok()) return Fail(st.WithContext("--est-listen"));
    cfg->est.listen = listen_override;
  }
  // Under systemd (stderr is the journal) records go to the journal with their fields.
  sh::LogLevel level = sh::ParseLogLevel(cfg->log_level).value_or(sh::LogLevel::kInfo);
  sh::StderrLogger stderr_log(level);
  std::unique_ptr<sh::JournalLogger> journal;
  if (sh::StderrIsJournal()) journal = std::make_unique<sh::JournalLogger>("certfleet-companion", level);
  sh::Logger& log = journal ? static_cast<sh::Logger&>(*journal) : stderr_log;
  sh::ServiceNotifier notifier;
  auto state = cf::companion::LoadCompanionState(*cfg, fs, {});
  if (!state) return Fail(state.error());
  auto tls_chain = fs.ReadFile(cfg->est.tls_cert_file, 1 << 20);
  if (!tls_chain) return Fail(tls_chain.error());
  auto tls_key = state->keys->Load(cfg->est.tls_key_slot);
  if (!tls_key) return Fail(tls_key.error().WithContext("EST TLS key"));

  // Every configured hook is checked now (executables, secret files), not at first use.
  auto hook_set = cf::companion::BuildHookSet(cfg->hooks);
  if (!hook_set) return Fail(hook_set.error().WithContext(config_path));

  // Signals are handled by one thread with sigwait; block them everywhere else first.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Fleet provisioning over MQTT, when configured.
  cf::companion::Metrics metrics;
  cf::companion::HookRunner hooks(log, sh::SystemClock::Instance());
  hooks.SetObserver([&metrics](std::string_view event, std::chrono::microseconds d, bool ok) {
    metrics.HookRun(event, d, ok);
  });
  std::unique_ptr<cf::companion::ProvisioningService> provisioning;
  std::unique_ptr<cf::hal::KeyHandle> mqtt_key;
  std::unique_ptr<sh::MqttClient> mqtt;
  std::unique_ptr<cf::companion::MqttRotationPublisher> rotation_publisher;
  std::unique_ptr<cf::companion::RotationCoordinator> rotation;
  if (cfg->mqtt.enabled) {
    auto prov = MakeProvisioning(*state, hooks, *hook_set, log);
    if (!prov) return Fail(prov.error());
    provisioning = std::move(*prov);
    provisioning->SetObserver([&metrics](std::string_view op, bool accepted) { metrics.Provisioning(op, accepted); });
    auto key = state->keys->Load(cfg->mqtt.client_key_slot);
    if (!key) return Fail(key.error().WithContext("companion MQTT key (run certfleetctl broker-config)"));
    mqtt_key = std::move(*key);
    auto cert = fs.ReadFile(cfg->mqtt.client_cert_file, 1 << 20);
    if (!cert) return Fail(cert.error().WithContext("companion MQTT certificate"));
    sh::MqttOptions mo;
    mo.host = cfg->mqtt.host;
    mo.port = cfg->mqtt.port;
    mo.verify_name = cfg->mqtt.verify_name;
    mo.client_id = cfg->mqtt.client_id;
    mo.trust_anchor_pem = sh::CertToPem(state->root.get());
    mo.client_cert_pem = *cert;
    mo.client_key = mqtt_key->pkey();
    auto client = sh::MqttClient::Create(mo, log);
    if (!client) return Fail(client.error());
    mqtt = std::move(*client);
    provisioning->Attach(*mqtt);
    auto rotation_options = cf::companion::RotationOptionsFromConfig(*cfg);
    if (!rotation_options) return Fail(rotation_options.error());
    rotation_publisher = std::make_unique<cf::companion::MqttRotationPublisher>(*mqtt);
    rotation = std::make_unique<cf::companion::RotationCoordinator>(*state, std::move(*rotation_options), *rotation_publisher,
                                                                    fs, sh::SystemClock::Instance(), log);
    rotation->Attach(*mqtt);
    // The network thread reconnects by itself after the first attempt, failed or not.
    sh::Status st = mqtt->Connect(std::chrono::seconds(10));
    if (!st.ok()) log.Warn("MQTT broker not reachable yet; retrying in the background", {{"error", st.ToString()}});
    rotation->Start();
    log.Info("fleet provisioning enabled", {{"broker", cfg->mqtt.host + ":" + std::to_string(cfg->mqtt.port)},
                                            {"dialect", cfg->provisioning.dialect}});
  }

  // Scheduled audits ([audit] schedule) and on-demand ones from the API (POST /start-audit)
  // run on the engine's thread; certfleetctl's local mode runs its own in its process.
  auto audit_store = cf::companion::OpenSqliteAuditStore(cfg->registry_path);
  if (!audit_store) return Fail(audit_store.error());
  cf::companion::PostHookQueue audit_hooks(hooks, log);
  cf::companion::AuditNotifier audit_notifier;
  if (mqtt) {
    audit_notifier.publish = [&mqtt](const std::string& topic, const std::string& payload) {
      return mqtt->Publish(topic, payload, 1, false, std::chrono::seconds(10));
    };
  }
  if (hook_set->post_audit) {
    audit_notifier.hook = [&audit_hooks, &hook_set](const nlohmann::json& input) {
      if (audit_hooks.Post(*hook_set->post_audit, cf::companion::kHookEventPostAudit, input)) return sh::Status::Ok();
      return sh::Status(sh::Code::kResourceExhausted, "post_audit hook queue full: run dropped");
    };
  }
  cf::companion::AuditEngineOptions audit_options = cf::companion::AuditOptionsFromConfig(*cfg);
  if (rotation) {
    // A quarantine by an audit reaches the broker at once, not at the next sweep.
    audit_options.quarantine_changed = [&rotation] {
      rotation->Wake();
      return sh::Status::Ok();
    };
  }
  cf::companion::AuditEngine audit(std::move(audit_options), *state->registry, **audit_store, fs,
                                   sh::SystemClock::Instance(), log, audit_notifier);
  audit.SetObserver([&metrics](const cf::companion::AuditTask& t) { metrics.AuditRun(t); });
  if (sh::Status st = audit.FailInterruptedTasks(); !st.ok()) return Fail(st);
  audit.Start();

  cf::companion::EstService service(*state, sh::SystemClock::Instance(), log,
                                    cf::companion::EstHooks{&hooks, *hook_set});
  service.SetObserver([&metrics](std::string_view op, int status) { metrics.EstRequest(op, status); });
  cf::companion::EstServer server(service, state->config.est, *tls_chain, (*tls_key)->pkey(), log);
  auto bound = server.Bind();
  if (!bound) return Fail(bound.error());
  if (!ready_file.empty()) {
    sh::Status st = fs.WriteFileAtomic(ready_file, *bound + "\n", 0644);
    if (!st.ok()) return Fail(st);
  }
  log.Info("EST server listening", {{"address", *bound}, {"config", config_path}});

  // The operator API, on its own listener, when enabled.
  std::unique_ptr<cf::hal::KeyHandle> api_key;
  std::unique_ptr<cf::companion::ApiService> api;
  std::unique_ptr<cf::companion::ApiServer> api_server;
  std::thread api_thread;
  if (cfg->api.enabled) {
    auto api_chain = fs.ReadFile(cfg->api.tls_cert_file, 1 << 20);
    if (!api_chain) return Fail(api_chain.error().WithContext("API TLS certificate"));
    auto key = state->keys->Load(cfg->api.tls_key_slot);
    if (!key) return Fail(key.error().WithContext("API TLS key"));
    api_key = std::move(*key);
    std::string client_ca;
    if (!cfg->api.client_ca_file.empty()) {
      auto ca = fs.ReadFile(cfg->api.client_ca_file, 1 << 20);
      if (!ca) return Fail(ca.error().WithContext("api.client_ca_file"));
      client_ca = *ca;
      std::vector<std::string> fleet_ca_files = {cfg->ca.root_cert_file, cfg->ca.issuing_cert_file,
                                                 cfg->est.bootstrap_trust_file};
      for (const auto& claim : cfg->claims) fleet_ca_files.push_back(claim.ca_file);
      std::vector<std::string> fleet_cas;
      for (const std::string& file : fleet_ca_files) {
        if (file.empty()) continue;
        auto pem = fs.ReadFile(file, 1 << 20);
        if (!pem) return Fail(pem.error().WithContext("reading " + file));
        fleet_cas.push_back(std::move(*pem));
      }
      if (sh::Status st = cf::companion::CheckOperatorCaIsSeparate(client_ca, fleet_cas); !st.ok()) return Fail(st);
    }
    cf::companion::ApiServiceOptions ao;
    ao.metrics = &metrics;
    ao.audit = &audit;
    if (rotation) ao.quarantine_changed = [&rotation] { rotation->Wake(); };
    if (fs.Exists(cfg->provisioning.template_dir)) {
      auto templates = cf::companion::LoadTemplateDir(cfg->provisioning.template_dir, fs);
      if (!templates) return Fail(templates.error());
      ao.templates = std::move(*templates);
    }
    api = std::make_unique<cf::companion::ApiService>(*state, std::move(ao), sh::SystemClock::Instance(), log);
    api_server = std::make_unique<cf::companion::ApiServer>(*api, state->config.api, *api_chain, api_key->pkey(),
                                                            client_ca, log);
    auto api_bound = api_server->Bind(api_listen_override);
    if (!api_bound) return Fail(api_bound.error());
    if (!api_ready_file.empty()) {
      sh::Status st = fs.WriteFileAtomic(api_ready_file, *api_bound + "\n", 0644);
      if (!st.ok()) return Fail(st);
    }
    log.Info("operator API listening", {{"address", *api_bound}, {"client_ca", cfg->api.client_ca_file}});
    api_thread = std::thread([&] {
      sh::Status st = api_server->Serve();
      if (!st.ok()) {
        // The listener failed on its own: stop the companion (systemd restarts it).
        log.Error("operator API listener failed", {{"error", st.ToString()}});
        kill(getpid(), SIGTERM);
      }
    });
  }

  // This thread takes the signals and speaks to systemd: READY=1 once the listener is
  // bound, the registry open and (with [mqtt] enabled) the broker connected; STATUS=
  // on each change; WATCHDOG=1 while the EST listener lives.
  std::atomic<bool> serving{true};
  std::thread waiter([&] {
    bool ready = false;
    auto status_line = [&] {
      std::string line = "serving EST on " + *bound;
      if (mqtt) line += mqtt->connected() ? ", MQTT connected" : ", MQTT not connected";
      return line;
    };
    auto tick = notifier.watchdog_interval().value_or(std::chrono::milliseconds(1000));
    if (tick > std::chrono::milliseconds(1000)) tick = std::chrono::milliseconds(1000);
    for (;;) {
      if (serving) {
        if (!ready && (!mqtt || mqtt->connected())) {
          notifier.Ready(status_line());
          ready = true;
        } else if (ready) {
          notifier.Status(status_line());
        }
        notifier.Watchdog();
      }
      timespec timeout{static_cast<time_t>(tick.count() / 1000), static_cast<long>(tick.count() % 1000) * 1000000L};
      int sig = sigtimedwait(&signals, nullptr, &timeout);
      if (sig < 0) continue;
      if (sig == SIGHUP) {
        // Parse anew; only the log level changes while running, the rest needs a restart.
        notifier.Reloading();
        auto fresh = cf::companion::LoadCompanionConfig(config_path, fs);
        auto fresh_level = fresh ? sh::ParseLogLevel(fresh->log_level) : sh::Result<sh::LogLevel>(level);
        if (!fresh || !fresh_level) {
          log.Error("SIGHUP: the configuration is not valid; keeping the running one",
                    {{"config", config_path}, {"error", (fresh ? fresh_level.error() : fresh.error()).ToString()}});
        } else {
          stderr_log.set_min_level(*fresh_level);
          if (journal) journal->set_min_level(*fresh_level);
          log.Info("SIGHUP: configuration reloaded (log_level; other keys need a restart)", {{"config", config_path}});
        }
        if (ready) notifier.Ready(status_line());
        continue;
      }
      log.Info("stopping", {{"signal", std::to_string(sig)}});
      notifier.Stopping();
      server.Stop();
      if (api_server) api_server->Stop();
      return;
    }
  });
  sh::Status st = server.Serve();
  serving = false;
  if (!st.ok()) {
    // The listener failed on its own: wake the signal thread so it can end.
    kill(getpid(), SIGTERM);
  }
  waiter.join();
  if (api_thread.joinable()) api_thread.join();
  audit.Stop();
  if (provisioning) provisioning->Stop();
  if (rotation) rotation->Stop();
  if (mqtt) mqtt->Disconnect();
  if (!st.ok()) return Fail(st);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"certfleet-companion: the fleet's CA and EST server"};
  app.require_subcommand(1);

  cf::companion::InitOptions init;
  std::vector<std::string> hostnames;
  std::string key_type = "ec-p256";
  auto* init_cmd = app.add_subcommand("init", "create a companion state directory (CA, registry, config)");
  init_cmd->add_option("--state-dir", init.state_dir, "state directory (absolute path)")->required();
  init_cmd->add_option("--hostname", hostnames, "names the EST server certificate covers (repeatable)");
  init_cmd->add_option("--est-listen", init.est_listen, "EST listen address written to the config");
  init_cmd->add_option("--ca-key-type", key_type, "CA key type: ec-p256, ec-p384, rsa-2048, rsa-3072");
  init_cmd->add_option("--organization", init.organization, "name used in the CA subjects");
  init_cmd->add_option("--import-ca-cert", init.import_ca_cert_file, "PEM chain: issuing CA first, root last");
  init_cmd->add_option("--import-ca-key", init.import_ca_key_file, "PEM private key of the issuing CA");

  std::string config_path = "/etc/certfleet/companion.toml";
  std::string listen_override;
  std::string ready_file;
  auto* serve_cmd = app.add_subcommand("serve", "serve EST in the foreground");
  serve_cmd->add_option("--config", config_path, "companion.toml");
  serve_cmd->add_option("--est-listen", listen_override, "override est.listen (ADDR:PORT, port 0 = any)");
  serve_cmd->add_option("--ready-file", ready_file, "write the bound address here once listening");
  std::string api_listen_override;
  std::string api_ready_file;
  serve_cmd->add_option("--api-listen", api_listen_override, "override api.listen (ADDR:PORT, port 0 = any)");
  serve_cmd->add_option("--api-ready-file", api_ready_file, "write the API's bound address here once listening");

  CLI11_PARSE(app, argc, argv);
  sh::MqttLibrary mqtt_library;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    std::fprintf(stderr, "certfleet-companion: curl_global_init failed\n");
    return 1;
  }

  if (*init_cmd) {
    sh::StderrLogger log;
    if (!hostnames.empty()) init.hostnames = hostnames;
    auto kt = sh::ParseKeyType(key_type);
    if (!kt) return Fail(kt.error().WithContext("--ca-key-type"));
    init.ca_key_type = *kt;
    auto path = cf::companion::InitCompanion(init, sh::PosixFilesystem::Instance(), sh::SystemClock::Instance(), log);
    if (!path) return Fail(path.error());
    std::printf("%s\n", path->c_str());
    return 0;
  }
  return RunServe(config_path, listen_override, ready_file, api_listen_override, api_ready_file);
}
