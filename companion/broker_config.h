// `certfleetctl broker-config`: everything a mosquitto broker needs to serve the
// fleet, written into one directory that a mosquitto.conf can `include_dir`:
//
//   mosquitto.conf   two TLS listeners with per-listener settings:
//                    - things (default 8883): client certificates from the companion's CA,
//                      identity = certificate CN, CRL checked, ACL things.acl;
//                    - claim (default 8884): client certificates from the bootstrap/claim
//                      CAs only, ACL claim.acl (their own provisioning topics, nothing else).
//   broker.pem/.key  the broker's server certificate (issued by the companion's CA)
//   things-ca.pem    root + issuing CA;  claim-ca.pem: the bootstrap trust file
//   crl.pem          CRL of the issuing CA (revoked certificates in the registry)
//   things.acl, claim.acl
//   claim-policy.json  only with [[claims]] in companion.toml: the claim rules, enforced on
//                    the claim listener by the certfleet mosquitto plugin (plugin line
//                    added to that listener; see companion/broker_plugin/). Without claim
//                    rules the claim listener has no plugin, as before: every certificate
//                    of the claim CAs may call every template its claimSubjects allow.
//
// It also gives the companion its own MQTT client identity (key slot mqtt.client_key_slot,
// certificate mqtt.client_cert_file, CN mqtt.client_id). Re-running replaces the
// generated files atomically and keeps the companion's MQTT key.
#pragma once

#include <string>
#include <vector>

#include "companion/init.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"

namespace certfleet::companion {

// Where the package installs the claim-policy plugin (LIBDIR/certfleet/certfleet_mosquitto_claim.so).
std::string DefaultClaimPluginPath();

struct BrokerConfigOptions {
  std::string out_dir;
  std::string listen_address = "127.0.0.1";
  int things_port = 8883;
  int claim_port = 8884;
  std::vector<std::string> hostnames = {"localhost", "127.0.0.1"};
  std::chrono::seconds crl_validity = std::chrono::hours(24 * 30);
  std::string claim_plugin_path = DefaultClaimPluginPath();  // used only with [[claims]]
};

// `state` needs its issuer and registry. kFailedPrecondition without a bootstrap
// trust file (the claim listener would accept nobody).
Status WriteBrokerConfig(const BrokerConfigOptions& options, CompanionState& state, shared::Filesystem& fs,
                         const shared::Clock& clock, shared::Logger& log);

// The CRL of the issuing CA listing every REVOKED certificate in the registry (PEM).
shared::Result<std::string> MakeCrlPem(CompanionState& state, const shared::Clock& clock, std::chrono::seconds validity);

// The ACL texts (exposed for tests).
std::string ThingsAcl(const std::string& companion_client_id);
std::string ClaimAcl();

// claim-policy.json for `claims`, reading each ca_file through `fs`. kInvalidArgument (naming
// the claim) when a CA file holds no valid certificate; kNotFound etc. from reading it.
shared::Result<std::string> ClaimPolicyJson(const std::vector<ClaimConfig>& claims, shared::Filesystem& fs);

}  // namespace certfleet::companion
