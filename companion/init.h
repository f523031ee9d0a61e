// `certfleet-companion init`: creates a working companion in a state directory, and
// loading that state for `serve` and `certfleetctl`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "companion/ca.h"
#include "companion/config.h"
#include "companion/registry.h"
#include "hal/keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/x509/cert.h"

namespace certfleet::companion {

struct InitOptions {
  std::string state_dir;
  std::vector<std::string> hostnames = {"localhost", "127.0.0.1"};
  std::string est_listen = "127.0.0.1:8443";
  shared::KeyType ca_key_type = shared::KeyType::kEcP256;
  std::string organization = "certfleet";
  // Import instead of generating: a PEM chain starting with the issuing CA and ending
  // with a self-signed root (or a single self-signed CA), and its PEM private key.
  std::string import_ca_cert_file;
  std::string import_ca_key_file;
};

// Idempotent: an existing config, CA key or CA certificate is never overwritten; an
// interrupted init resumes. Returns the path of companion.toml.
shared::Result<std::string> InitCompanion(const InitOptions& options, shared::Filesystem& fs, const shared::Clock& clock,
                                          shared::Logger& log);

// What `serve` needs, loaded from the config.
struct CompanionState {
  CompanionConfig config;
  std::unique_ptr<hal::KeyStore> keys;
  std::unique_ptr<Registry> registry;
  std::unique_ptr<Issuer> issuer;
  shared::X509Ptr root;
  shared::TrustStore device_trust;                      // root (+ issuing) for production certificates
  std::optional<shared::TrustStore> bootstrap_trust;    // claim/bootstrap CAs
};

struct LoadOptions {
  bool open_registry = true;
  bool registry_read_only = false;
  bool load_issuer = true;
};
shared::Result<CompanionState> LoadCompanionState(const CompanionConfig& config, shared::Filesystem& fs,
                                                   const LoadOptions& options);

}  // namespace certfleet::companion
