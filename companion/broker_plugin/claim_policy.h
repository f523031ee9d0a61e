// The claim policy that the certfleet mosquitto plugin enforces on the claim listener:
// which claim certificates, recognised by their issuing CA or by their own fingerprint,
// may call which provisioning templates.
//
// claim-policy.json (written by `certfleetctl broker-config` from [[claims]]):
//   {
//     "version": 1,
//     "rules": [
//       {"name": "factory-a",
//        "issuer_certificates": ["-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"],
//        "certificate_fingerprints": ["<SHA-256 of the claim certificate's DER, 64 lowercase hex>"],
//        "templates": ["gateway"]}            // template names, or ["*"] for every template
//     ]
//   }
// A rule names issuer_certificates and/or certificate_fingerprints (at least one entry in
// all). Issuers are whole PEM certificates, not fingerprints: the broker hands a plugin
// only the client's leaf certificate, so deciding "issued by this CA" means verifying the
// leaf's signature with the CA's public key, which a fingerprint does not carry. An issuer
// is the claim certificate's direct issuer (list an intermediate, not its root).
//
// Everything here is pure and thread-compatible; nothing throws (JSON errors become
// kInvalidArgument). Error messages name the rule and field, never echo certificate data.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::broker_plugin {

inline constexpr size_t kMaxClaimRules = 1024;
inline constexpr size_t kMaxClaimPolicyBytes = 4 << 20;

struct ClaimRule {
  std::string name;                        // 1-64 of [A-Za-z0-9._-], unique in a policy
  std::vector<std::string> issuer_pems;    // one PEM certificate each, as given
  std::vector<shared::X509Ptr> issuers;    // the same certificates, parsed
  std::vector<std::string> fingerprints;   // 64 lowercase hex each
  std::vector<std::string> templates;      // template names or "*"

  bool AllowsTemplate(std::string_view template_name) const;
};

struct ClaimPolicy {
  std::vector<ClaimRule> rules;
};

// Builds and validates one rule. `issuer_pem_bundle` may hold any number of PEM
// certificates (each becomes one issuer). kInvalidArgument when the name, a fingerprint,
// a template or a certificate is malformed, when the rule has neither issuers nor
// fingerprints, or when it names no template.
shared::Result<ClaimRule> MakeClaimRule(std::string name, std::string_view issuer_pem_bundle,
                                        std::vector<std::string> fingerprints, std::vector<std::string> templates);

// Parses claim-policy.json. kInvalidArgument for anything malformed: not JSON, unknown or
// missing keys, wrong types, version other than 1, duplicate rule names, more than
// kMaxClaimRules rules or kMaxClaimPolicyBytes bytes, and every MakeClaimRule error.
shared::Result<ClaimPolicy> ParseClaimPolicy(std::string_view json);

// The JSON text ParseClaimPolicy reads back to an equal policy.
std::string ClaimPolicyToJson(const ClaimPolicy& policy);

// Indices into policy.rules of the rules that match `cert`: its `fingerprint` (lowercase
// hex SHA-256 of the DER, as shared::CertFingerprint gives) is listed, or one of the
// rule's issuers issued it (name and key identifiers match and the signature verifies).
// Validity periods are not checked here: the broker's TLS handshake already did.
std::vector<size_t> MatchingRules(const ClaimPolicy& policy, X509* cert, std::string_view fingerprint);

enum class ClaimAccess { kRead, kWrite, kSubscribe, kUnsubscribe };

// kDefer means "this policy does not object": the listener's acl_file still decides.
enum class ClaimVerdict { kDeny, kDefer };

struct ClaimDecision {
  ClaimVerdict verdict;
  const char* reason;  // static text, for the log
};

// The decision for one ACL check of a client whose certificate matched `matching` rules:
// - no matching rule: deny everything;
// - a RegisterThing topic (request or reply, certfleet or aws dialect; for subscriptions
//   also a filter with a wildcard in the template level): deny unless a matching rule
//   allows the template ("*" allows any, and is the only thing that allows a wildcard);
// - unsubscribing, the CreateCertificateFromCsr/CreateKeysAndCertificate topics and any
//   other topic: defer.
ClaimDecision DecideClaimAccess(const ClaimPolicy& policy, const std::vector<size_t>& matching,
                                std::string_view topic, ClaimAccess access);

// MatchingRules + DecideClaimAccess for one certificate; a null cert is denied.
ClaimDecision DecideClaimAccessForCert(const ClaimPolicy& policy, X509* cert, std::string_view topic,
                                       ClaimAccess access);

}  // namespace certfleet::broker_plugin
