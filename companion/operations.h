// Operator actions shared by certfleetctl's local mode and the operator API, so that
// both apply the same rules (limits, defaults, security events) through the registry.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "companion/config.h"
#include "companion/registry.h"

namespace certfleet::companion {

struct NewEnrollmentToken {
  std::string secret;  // shown once, never stored
  std::string serial;
  WallTime expires_at;
};
// A one-time enrollment token for `serial` (IsValidThingName), living `ttl` (default
// tokens.default_ttl; at most tokens.max_ttl). kInvalidArgument for a bad serial or ttl.
shared::Result<NewEnrollmentToken> CreateEnrollmentToken(Registry& registry, const TokenConfig& config,
                                                         const std::string& serial,
                                                         std::optional<std::chrono::seconds> ttl, WallTime now);

// The longest rotation deadline, as for rotation.default_deadline.
inline constexpr std::chrono::seconds kMaxRotationDeadline = std::chrono::hours(24 * 365);

// A PENDING rotation request for `thing`, deadline now + `deadline` (default
// rotation.default_deadline), reason default "operator". Codes of Registry::CreateRotation
// (kNotFound: unknown thing, kAlreadyExists: one is pending), kInvalidArgument for a bad
// name or a deadline that is not positive or exceeds kMaxRotationDeadline.
shared::Result<RotationRecord> CreateRotationRequest(Registry& registry, const RotationConfig& config,
                                                     const std::string& thing, std::string reason,
                                                     std::optional<std::chrono::seconds> deadline,
                                                     const std::string& created_by, WallTime now);

// An operator's revoke (REVOKED) or deactivate (INACTIVE), recorded as a security event
// ("certificate_revoked" / "certificate_deactivated", subject the certificate id, detail
// who and why) in the same transaction. The rotation coordinator notices a new revocation
// and rewrites the CRL. kInvalidArgument for a malformed id; codes of SetCertStatus.
Status ChangeCertificateStatus(Registry& registry, const std::string& cert_id, CertStatus status,
                               const std::string& actor, const std::string& reason, WallTime now);

// A new API bearer token: 256 random bits, returned once; its SHA-256 is stored.
struct NewApiToken {
  std::string secret;
  ApiTokenRecord record;
};
// `ttl` unset: no expiry. kInvalidArgument for a bad name or ttl, kAlreadyExists for a
// name in use.
shared::Result<NewApiToken> CreateApiToken(Registry& registry, const std::string& name, ApiRole role,
                                           std::optional<std::chrono::seconds> ttl, WallTime now);

}  // namespace certfleet::companion
