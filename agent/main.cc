// certfleet-agent: the gateway side. This build provides the one-shot EST commands,
// fleet provisioning by claim and key store maintenance.
#include <curl/curl.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <thread>

#include "agent/config.h"
#include "agent/est_commands.h"
#include "agent/provision.h"
#include "hal/keystore.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/mqtt/client.h"
#include "shared/x509/cert.h"

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
    c->add_option("--keystore", keystore_backend, "key store backend: file (default) or memory");
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

  CLI11_PARSE(app, argc, argv);
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
