// certfleet-agent configuration (agent.toml). Keys, defaults and units: docs/config.md.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "hal/keystore.h"
#include "shared/core/filesystem.h"
#include "shared/core/status.h"

namespace certfleet::agent {

struct AgentConfig {
  struct Est {
    std::string server;
    std::string trust_anchor_file;
    std::string user;
    std::string password_file;
    std::string client_cert_file;
    std::string client_key_slot;
    bool tls12_only = false;
    std::chrono::seconds timeout{60};  // per request of the daemon's re-enrollment
  } est;
  struct Identity {
    std::string common_name;
    std::string key_type = "ec-p256";
    std::string key_slot = "identity-a";
    std::string cert_file;
  } identity;
  // Fleet provisioning by claim (`certfleet-agent provision`). Empty strings mean "the
  // default derived from another key" (see docs/config.md); ProvisionOptionsFromConfig
  // resolves them.
  struct Provisioning {
    std::string broker_host = "127.0.0.1";
    int claim_port = 8884;
    int things_port = 8883;
    std::string broker_name;        // default: broker_host
    std::string trust_anchor_file;  // default: est.trust_anchor_file
    std::string claim_cert_file;
    std::string claim_key_slot = "claim";
    std::string template_name;  // key "template"
    std::string client_id;      // default: identity.common_name
    std::string dialect = "certfleet";
    std::map<std::string, std::string> parameters;  // [provisioning.parameters]
    std::string state_file = "/var/lib/certfleet-agent/provisioned.json";
    std::chrono::seconds timeout{30};  // per request
    int max_attempts = 6;
  } provisioning;
  hal::KeyStoreConfig keystore;
  std::string log_level = "info";

  // ---- `certfleet-agent run` (the daemon) ----
  struct Agent {
    std::string state_dir = "/var/lib/certfleet-agent";
    std::string control_socket = "/run/certfleet-agent/control.sock";
    // Exists while the system clock is synchronised; "" disables the check.
    std::string time_sync_file = "/run/systemd/timesync/synchronized";
  } agent;
  // The broker's things listener, for the daemon's session.
  struct Mqtt {
    std::string host = "127.0.0.1";
    int port = 8883;
    std::string broker_name;        // default: host
    std::string trust_anchor_file;  // default: est.trust_anchor_file
    std::chrono::seconds keepalive{60};
    std::chrono::seconds timeout{30};  // CONNACK, PUBACK
  } mqtt;
  struct Renewal {
    double threshold = 0.8;
    int days_before_expiry = 0;  // > 0 replaces threshold
    double jitter = 0.05;
    std::chrono::seconds retry_base{60};
    std::chrono::seconds retry_cap{6 * 3600};
  } renewal;
  // [[hooks.post_rotation]]
  struct Hook {
    std::vector<std::string> command;  // absolute path, then arguments; no shell
    std::chrono::seconds timeout{60};
  };
  std::vector<Hook> post_rotation_hooks;
  // [[export]]
  struct Export {
    std::string path;
    std::string what = "chain";  // "chain" | "cert" | "ca"
    mode_t mode = 0644;
    std::string owner;  // user name; applied only when running as root
    std::string group;
  };
  std::vector<Export> exports;
};

shared::Result<AgentConfig> ParseAgentConfig(std::string_view text, const std::string& source);
shared::Result<AgentConfig> LoadAgentConfig(const std::string& path, shared::Filesystem& fs);

}  // namespace certfleet::agent
