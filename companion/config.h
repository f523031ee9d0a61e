// certfleet-companion configuration (companion.toml). Every key, its default and its
// unit is documented in docs/config.md; keep the two in step.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "companion/audit_config.h"
#include "companion/hooks.h"
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
  // How long after its notAfter the current certificate may still re-enroll (a gateway
  // that was offline across its expiry); 0 = never.
  std::chrono::seconds expired_reenroll_grace{0};
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
  bool allow_create_keys = false;                  // CreateKeysAndCertificate (server-generated keys)
  std::chrono::seconds ownership_token_ttl = std::chrono::hours(1);
  std::string dialect = "certfleet";               // "certfleet" | "aws"
  int workers = 2;
};

// [hooks.<event>] tables, one per flow step; an absent table means no hook (pre-hooks
// then allow). Each is a HookConfig (command or url, timeout, ...), checked with
// CheckHookConfig at parse; the files they name are checked at startup (BuildHookSet).
struct HooksConfig {
  std::optional<HookConfig> pre_provision;
  std::optional<HookConfig> post_provision;
  std::optional<HookConfig> pre_enroll;
  std::optional<HookConfig> post_enroll;
  std::optional<HookConfig> pre_reenroll;
  std::optional<HookConfig> post_reenroll;
  std::optional<HookConfig> post_audit;  // NOTIFY mitigations of audit findings
};

// The [hooks.*] table names and the members they fill, in documentation order.
struct HookTable {
  std::string_view table;  // "pre_enroll" for [hooks.pre_enroll]
  std::string_view event;  // kHookEventPreEnroll
  std::optional<HookConfig> HooksConfig::*member;
};
inline constexpr HookTable kHookTables[] = {
    {"pre_provision", kHookEventPreProvision, &HooksConfig::pre_provision},
    {"post_provision", kHookEventPostProvision, &HooksConfig::post_provision},
    {"pre_enroll", kHookEventPreEnroll, &HooksConfig::pre_enroll},
    {"post_enroll", kHookEventPostEnroll, &HooksConfig::post_enroll},
    {"pre_reenroll", kHookEventPreReenroll, &HooksConfig::pre_reenroll},
    {"post_reenroll", kHookEventPostReenroll, &HooksConfig::post_reenroll},
    {"post_audit", kHookEventPostAudit, &HooksConfig::post_audit},
};

// One [[claims]] table: which claim certificates may call which provisioning templates.
// `certfleetctl broker-config` turns these into claim-policy.json for the broker plugin.
struct ClaimConfig {
  std::string name;                       // 1-64 of A-Z a-z 0-9 . _ -, unique
  std::string ca_file;                    // PEM: CAs that directly issue these claim certificates
  std::vector<std::string> fingerprints;  // SHA-256 of a claim certificate's DER, lowercase hex
  std::vector<std::string> templates;     // template names, or "*" for all
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
  std::string quarantine_file;                // the broker plugin's quarantine list; empty: none
  std::vector<std::string> reload_command;    // exec: absolute path, then arguments; empty = none
  std::string pid_file;                       // SIGHUP to this pid after a new CRL; empty = none
  std::chrono::seconds reload_timeout{10};
  std::chrono::seconds crl_validity = std::chrono::hours(24 * 30);
};

// The operator API (docs/api.md): off unless enabled; loopback by default.
struct ApiConfig {
  bool enabled = false;
  std::string listen = "127.0.0.1:8444";
  std::string tls_cert_file;              // default: est.tls_cert_file
  std::string tls_key_slot;               // default: est.tls_key_slot
  std::string client_ca_file;             // operator CA for client certificates; empty: bearer tokens only
  std::vector<std::string> admin_subjects;      // client certificate CNs with the admin role
  std::vector<std::string> read_only_subjects;  // client certificate CNs with the read-only role
  bool metrics_require_auth = true;       // GET /metrics needs a credential (any role)
  int64_t max_body_bytes = 65536;
  int threads = 4;
};

struct CompanionConfig {
  std::string state_dir;
  EstConfig est;
  CaConfig ca;
  ProfileConfig profile;
  TokenConfig tokens;
  MqttConfig mqtt;
  ProvisioningConfig provisioning;
  HooksConfig hooks;
  std::vector<ClaimConfig> claims;  // empty: the broker's claim listener has no claim policy
  RotationConfig rotation;
  BrokerConfig broker;
  AuditConfig audit;
  ApiConfig api;
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
