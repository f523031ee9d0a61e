// certfleet-companion configuration (companion.toml). Every key, its default and its
// unit is documented in docs/config.md; keep the two in step.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "hal/keystore.h"
#include "shared/core/filesystem.h"
#include "shared/core/status.h"

namespace certfleet::companion {

struct EstConfig {
  std::string listen = "127.0.0.1:8443";
  std::vector<std::string> labels;          // accepted CA labels: /.well-known/est/<label>/...
  std::string tls_cert_file;                // server certificate chain (PEM)
  std::string tls_key_slot = "est-tls";     // in the key store
  std::string bootstrap_trust_file;         // claim/bootstrap CAs for simpleenroll; empty = none
  int64_t max_body_bytes = 16384;
  int threads = 8;
  std::chrono::seconds superseded_grace = std::chrono::hours(24 * 7);
  bool reenroll_require_new_key = false;
};

struct CaConfig {
  std::string root_cert_file;
  std::string issuing_cert_file;
  std::string issuing_key_slot = "issuing-ca";
};

struct ProfileConfig {
  std::chrono::seconds validity = std::chrono::hours(24 * 90);
  std::chrono::seconds backdate = std::chrono::minutes(5);
  std::vector<std::string> key_types = {"ec-p256", "ec-p384", "rsa-2048", "rsa-3072"};
  bool allow_csr_sans = false;
};

struct TokenConfig {
  std::chrono::seconds default_ttl = std::chrono::hours(24);
  std::chrono::seconds max_ttl = std::chrono::hours(24 * 30);
};

struct MqttConfig {
  bool enabled = false;                       // serve fleet provisioning over MQTT
  std::string host = "127.0.0.1";
  int port = 8883;                            // the broker's things listener
  std::string verify_name;                    // name in the broker certificate; default host
  std::string client_id = "certfleet-companion";
  std::string client_cert_file;               // default STATE/tls/mqtt-client.pem
  std::string client_key_slot = "mqtt-client";
  std::string share_group = "certfleet";      // $share/<group>/... so instances split the work
};

struct ProvisioningConfig {
  std::string template_dir;                        // default STATE/templates: NAME.json files
  std::vector<std::string> pre_provision_hook;     // exec: absolute path, then arguments; empty = allow
  std::vector<std::string> post_provision_hook;
  std::chrono::seconds hook_timeout{5};
  bool allow_create_keys = false;                  // CreateKeysAndCertificate (server-generated keys)
  std::chrono::seconds ownership_token_ttl = std::chrono::hours(1);
  std::string dialect = "certfleet";               // "certfleet" | "aws"
  int workers = 2;
};

// The rotation coordinator (docs/rotation.md).
struct RotationConfig {
  std::chrono::seconds grace = std::chrono::hours(24);           // old certificate ACTIVE after the proof
  std::chrono::seconds revoke_after{0};                          // then INACTIVE this long, then REVOKED
  std::chrono::seconds default_deadline = std::chrono::hours(24 * 7);  // certfleetctl rotate
  std::chrono::seconds sweep_interval{60};                       // polling period: requests, sweep, CRL
};

// What the companion maintains for the MQTT broker at run time.
struct BrokerConfig {
  std::string crl_file;                       // empty: no CRL publishing
  std::vector<std::string> reload_command;    // exec: absolute path, then arguments; empty = none
  std::string pid_file;                       // SIGHUP to this pid after a new CRL; empty = none
  std::chrono::seconds reload_timeout{10};
  std::chrono::seconds crl_validity = std::chrono::hours(24 * 30);
};

struct CompanionConfig {
  std::string state_dir;
  EstConfig est;
  CaConfig ca;
  ProfileConfig profile;
  TokenConfig tokens;
  MqttConfig mqtt;
  ProvisioningConfig provisioning;
  RotationConfig rotation;
  BrokerConfig broker;
  hal::KeyStoreConfig keystore;
  std::string registry_path;
  std::string log_level = "info";
};

// Parses companion.toml. Relative paths are not accepted. Paths left unset derive from
// state_dir. Errors name the file, line and column.
shared::Result<CompanionConfig> ParseCompanionConfig(std::string_view text, const std::string& source);
shared::Result<CompanionConfig> LoadCompanionConfig(const std::string& path, shared::Filesystem& fs);

// The companion.toml that `init` writes for a state directory.
std::string DefaultCompanionConfigText(const std::string& state_dir, const std::string& est_listen);

}  // namespace certfleet::companion
