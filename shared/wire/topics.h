// MQTT topics of the fleet provisioning API in its two dialects, and of per-thing messages.
//
// Dialect kAws is the AWS IoT Core topic set (REFERENCE.md section 2):
//   $aws/certificates/create/json
//   $aws/certificates/create-from-csr/json
//   $aws/provisioning-templates/<template>/provision/json
// AWS routes replies per connection; on a generic broker every claimant subscribed to a
// reply topic would see every reply. Dialect kCertfleet carries the same payloads on topics
// scoped by the MQTT client id, so the broker ACL (pattern %c) confines each client to its
// own requests and replies:
//   certfleet/provisioning/<claimSubject>/<clientId>/certificates/create/json
//   certfleet/provisioning/<claimSubject>/<clientId>/certificates/create-from-csr/json
//   certfleet/provisioning/<claimSubject>/<clientId>/provisioning-templates/<template>/provision/json
// Replies of both dialects are the request topic + "/accepted" or "/rejected".
//
// Only the json payload format is supported (AWS also has .../cbor).
// All functions are pure and thread-safe. Validation failures are kInvalidArgument; error
// messages never echo the rejected input (it may be anything a client published).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace certfleet::shared {

enum class Dialect { kAws, kCertfleet };

// "aws" or "certfleet" (the config file spelling).
std::string_view DialectName(Dialect dialect);
// Exactly "aws" or "certfleet"; anything else is kInvalidArgument.
Result<Dialect> ParseDialect(std::string_view name);

enum class Operation { kCreateKeysAndCertificate, kCreateCertificateFromCsr, kRegisterThing };

// The AWS API name: "CreateKeysAndCertificate", "CreateCertificateFromCsr", "RegisterThing".
std::string_view OperationName(Operation operation);

enum class Reply { kAccepted, kRejected };

// One request topic, taken apart. Fields a topic does not use are ignored when building
// and left empty by ParseRequestTopic: client_id is used by kCertfleet only, template_name
// by kRegisterThing only.
struct ProvisioningTopic {
  Dialect dialect = Dialect::kCertfleet;
  Operation operation = Operation::kCreateCertificateFromCsr;
  std::string client_id;
  std::string template_name;

  // certfleet dialect: the claim certificate's CN, which the broker substitutes as the
  // MQTT username (use_identity_as_username) into the claim ACL, so the companion
  // learns who asked from the topic itself.
  std::string claim_subject;
  bool operator==(const ProvisioningTopic&) const = default;
};
// The result of ParseRequestTopic (same struct, so that parse and build round-trip).
using ParsedRequestTopic = ProvisioningTopic;

// Limits, in bytes.
inline constexpr size_t kMaxClientIdLength = 128;
inline constexpr size_t kMaxTemplateNameLength = 36;  // AWS's limit
inline constexpr size_t kMaxThingNameLength = 128;    // AWS's limit
inline constexpr size_t kMaxShareGroupLength = 128;
inline constexpr size_t kMaxClaimSubjectLength = 64;  // an X.509 CN

// 1-128 bytes of well-formed UTF-8 without '/', '+', '#' or NUL: safe as one topic level.
Status ValidateClientId(std::string_view client_id);
// 1-36 characters of [A-Za-z0-9_-].
Status ValidateTemplateName(std::string_view template_name);
// 1-128 characters of [A-Za-z0-9:_.-] (AWS's thing-name rule, and '.', which the
// registry's names may hold); also the certificate CN.
Status ValidateThingName(std::string_view thing_name);
// The registry's thing name (also a token serial and a certificate CN), the one rule of
// the companion, its API and the broker plugin: 1-64 characters of A-Z a-z 0-9 - _ . :,
// and not starting with "certfleet-", which names the companion's own identities (its
// MQTT client, for one). Every such name passes ValidateThingName.
bool IsValidThingName(std::string_view name);
// A shared-subscription group (MQTT 5 ShareName): 1-128 bytes of well-formed UTF-8
// without '/', '+', '#' or NUL.
Status ValidateClaimSubject(std::string_view claim_subject);
Status ValidateShareGroup(std::string_view group);

// The request topic, or kInvalidArgument if a field the topic uses is invalid.
Result<std::string> RequestTopic(const ProvisioningTopic& topic);
// The request topic + "/accepted" or "/rejected". Subscribe to both before publishing.
Result<std::string> ReplyTopic(const ProvisioningTopic& topic, Reply reply);

// Recognises a request topic of either dialect (exact match: no reply topics, no
// wildcards, no cbor) and validates its client id and template name. Whatever it accepts,
// RequestTopic(*result) rebuilds byte for byte.
Result<ProvisioningTopic> ParseRequestTopic(std::string_view topic);

// The companion's subscription filters for every request topic of `dialect`:
// - kCertfleet: shared subscriptions "$share/<share_group>/certfleet/provisioning/+/+/...",
//   so that several companion instances split the requests; with an empty share_group,
//   plain filters (one instance only: each instance would answer every request).
// - kAws: always plain "$aws/..." filters, share_group ignored: mosquitto 2.0.11 delivers
//   nothing on "$share/<group>/$aws/...". Run one companion instance for this dialect.
// kInvalidArgument if share_group is non-empty and invalid for kCertfleet.
Result<std::vector<std::string>> CompanionSubscriptions(Dialect dialect, std::string_view share_group);

// ---- Per-thing topics: "certfleet/things/<thingName>/<suffix>" ----

inline constexpr std::string_view kThingTopicRoot = "certfleet/things/";

// "certfleet/things/<thing_name>/" (note the trailing '/'); kInvalidArgument for a bad name.
Result<std::string> ThingTopicPrefix(std::string_view thing_name);
// "certfleet/things/<thing_name>/<suffix>". The suffix is one or more non-empty levels of
// well-formed UTF-8 without '+', '#' or NUL (e.g. "rotation/request"), at most 256 bytes.
Result<std::string> ThingTopic(std::string_view thing_name, std::string_view suffix);

struct ThingTopicParts {
  std::string thing_name;
  std::string suffix;

  bool operator==(const ThingTopicParts&) const = default;
};
// Inverse of ThingTopic: kInvalidArgument unless `topic` is one it could have built.
Result<ThingTopicParts> ParseThingTopic(std::string_view topic);

}  // namespace certfleet::shared
