// The agent's one-shot EST commands: cacerts, enroll, reenroll. Each generates keys in
// the hal, talks EST, verifies what comes back (key match, subject, chain to the
// trust anchor) and only then writes its result atomically. A failure leaves every
// existing file and key as it was.
#pragma once

#include <string>

#include "agent/est_client.h"
#include "hal/keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/x509/key.h"

namespace certfleet::agent {

struct EstCommandOptions {
  std::string server;
  std::string trust_anchor_file;
  // Enrollment credentials: HTTP Basic, or a client (claim) certificate whose key is
  // in the key store.
  std::string user;
  std::string password;
  std::string client_cert_file;
  std::string client_key_slot;
  // What to enroll.
  std::string common_name;
  shared::KeyType key_type = shared::KeyType::kEcP256;
  hal::KeyStoreConfig keystore;
  std::string key_slot = "identity-a";  // enroll: where the new key goes
  std::string cert_file;                // reenroll: the current certificate
  std::string out_file;                 // where the new certificate goes (PEM)
  bool keep_key = false;                // reenroll: renew with the same key
  bool tls12_only = false;
  // Replaces the wait on 202 + Retry-After (tests).
  std::function<void(std::chrono::seconds)> sleep;
};

struct EnrollOutcome {
  std::string pem;
  std::string key_slot;
  std::string serial;
  std::string fingerprint;
  shared::WallTime not_after;
  std::string deleted_key_slot;  // reenroll: the old key, removed after the commit
};

// Fetches the CA certificates (PEM, issuing CA first).
Result<std::string> RunCaCerts(const EstCommandOptions& options, shared::Filesystem& fs);
Result<EnrollOutcome> RunEnroll(const EstCommandOptions& options, shared::Filesystem& fs, const shared::Clock& clock,
                                shared::Logger& log);
Result<EnrollOutcome> RunReenroll(const EstCommandOptions& options, shared::Filesystem& fs, const shared::Clock& clock,
                                  shared::Logger& log);

// A/B slot naming: "x-a" <-> "x-b"; anything else gets "-b" appended.
std::string OtherSlot(const std::string& slot);

}  // namespace certfleet::agent
