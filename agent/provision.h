// `certfleet-agent provision`: fleet provisioning by claim, the gateway side (one shot).
//
// With the claim certificate (its key in the hal), the agent connects to the broker's
// claim listener, subscribes to the reply topics, sends CreateCertificateFromCsr with a
// CSR for a new hal key (CN = identity.common_name), checks the certificate it gets (our
// key, our CN, chains to the trust anchor), sends RegisterThing(template, parameters)
// with the ownership token and, when accepted, commits: the state file (thingName,
// deviceConfiguration, certificateId, provisionedAt; 0600) and then the certificate
// (identity.cert_file, 0644), both atomically. Then it proves the new identity: it
// connects to the things listener with it (client id = thing name) and publishes a
// retained QoS 1 status message to certfleet/things/<thingName>/status.
//
// Retries: connection failures, timeouts and 429/5xx rejections restart the whole
// exchange from CreateCertificateFromCsr after a capped, fully jittered exponential
// backoff (BackoffDelay), up to max_attempts; the proof step has its own attempts. A
// permanent rejection (IsPermanentRejection) or any other error stops at once. Before the
// commit nothing is written except the new key, which stays in its slot uncertified and
// is reused by the next run.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <string>

#include "agent/config.h"
#include "hal/keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"
#include "shared/x509/key.h"

namespace certfleet::agent {

struct ProvisionOptions {
  std::string broker_host = "127.0.0.1";
  int claim_port = 8884;
  int things_port = 8883;
  std::string broker_name;  // TLS name the broker certificate must carry
  std::string trust_anchor_file;
  std::string claim_cert_file;
  std::string claim_key_slot = "claim";
  std::string template_name;
  std::string client_id;
  shared::Dialect dialect = shared::Dialect::kCertfleet;
  shared::StringMap parameters;
  std::string state_file;
  std::chrono::milliseconds timeout{30000};  // per request (connect, SUBACK, PUBACK, reply)
  int max_attempts = 6;
  // The new identity.
  std::string common_name;
  shared::KeyType key_type = shared::KeyType::kEcP256;
  std::string key_slot = "identity-a";
  std::string cert_file;
  hal::KeyStoreConfig keystore;
  // Seed of the backoff jitter; 0 = from std::random_device.
  uint64_t jitter_seed = 0;
  // Expired-certificate recovery (the daemon): cert_file may hold an identity certified by
  // OtherSlot(key_slot), which the commit replaces; that slot's key is not touched.
  bool replace_identity = false;
};

// Resolves the config's defaults (broker_name = broker_host, trust anchor = the EST one,
// client id = identity.common_name). kInvalidArgument names the first missing or
// contradictory setting: template, identity.common_name, identity.cert_file, claim
// certificate, trust anchor, claim_key_slot equal to identity.key_slot.
shared::Result<ProvisionOptions> ProvisionOptionsFromConfig(const AgentConfig& config);

struct ProvisionOutcome {
  std::string thing_name;
  std::string certificate_id;
  shared::WallTime not_after;
  std::string key_slot;
  shared::StringMap device_configuration;
};

// Waits `delay` before the next attempt (tests record instead of sleeping).
using Sleeper = std::function<void(std::chrono::milliseconds)>;

inline constexpr std::chrono::milliseconds kBackoffBase{1000};
inline constexpr std::chrono::milliseconds kBackoffCap{60000};

// "Full jitter": uniform in [0, min(cap, base * 2^(attempt-1))], attempt >= 1 being the
// attempt that just failed. A pure function of its arguments and the generator's state.
std::chrono::milliseconds BackoffDelay(int attempt, std::mt19937_64& random,
                                       std::chrono::milliseconds base = kBackoffBase,
                                       std::chrono::milliseconds cap = kBackoffCap);

// Runs the flow above. kAlreadyExists ("already provisioned") when identity.cert_file
// holds a certificate for the key in identity.key_slot or (unless replace_identity) its
// A/B sibling. Rejections
// come back as RejectionToStatus (message "rejected: <status> <errorCode>: <message>").
// Blocks for up to max_attempts * (a few timeouts + backoff). Needs mosquitto_lib_init.
shared::Result<ProvisionOutcome> RunProvision(const ProvisionOptions& options, shared::Filesystem& fs,
                                              const shared::Clock& clock, shared::Logger& log,
                                              const Sleeper& sleeper);

}  // namespace certfleet::agent
