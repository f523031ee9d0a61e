// certfleet-agent configuration (agent.toml). Keys, defaults and units: docs/config.md.
#pragma once

#include <string>

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
  } est;
  struct Identity {
    std::string common_name;
    std::string key_type = "ec-p256";
    std::string key_slot = "identity-a";
    std::string cert_file;
  } identity;
  hal::KeyStoreConfig keystore;
  std::string log_level = "info";
};

shared::Result<AgentConfig> ParseAgentConfig(std::string_view text, const std::string& source);
shared::Result<AgentConfig> LoadAgentConfig(const std::string& path, shared::Filesystem& fs);

}  // namespace certfleet::agent
