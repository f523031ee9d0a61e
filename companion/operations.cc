#include "companion/operations.h"

#include "companion/api_input.h"
#include "companion/est_service.h"
#include "companion/rotation_coordinator.h"
#include "shared/core/duration.h"

namespace certfleet::companion {

using shared::Code;
using shared::Error;

shared::Result<NewEnrollmentToken> CreateEnrollmentToken(Registry& registry, const TokenConfig& config,
                                                         const std::string& serial,
                                                         std::optional<std::chrono::seconds> ttl, WallTime now) {
  std::chrono::seconds life = ttl.value_or(config.default_ttl);
  if (life.count() <= 0 || life > config.max_ttl) {
    return Error(Code::kInvalidArgument,
                 "ttl must be positive and at most tokens.max_ttl (" + shared::FormatDuration(config.max_ttl) + ")");
  }
  if (!IsValidThingName(serial)) {
    return Error(Code::kInvalidArgument, "serial must be 1-64 of A-Z a-z 0-9 - _ . : and not start with certfleet-");
  }
  CF_ASSIGN_OR_RETURN(std::string secret, NewToken());
  CF_RETURN_IF_ERROR(registry.CreateToken(TokenHash(secret), serial, now, now + life));
  return NewEnrollmentToken{std::move(secret), serial, now + life};
}

shared::Result<RotationRecord> CreateRotationRequest(Registry& registry, const RotationConfig& config,
                                                     const std::string& thing, std::string reason,
                                                     std::optional<std::chrono::seconds> deadline,
                                                     const std::string& created_by, WallTime now) {
  if (!IsValidThingName(thing)) return Error(Code::kInvalidArgument, "invalid thing name");
  const std::chrono::seconds within = deadline.value_or(config.default_deadline);
  if (within.count() <= 0 || within > kMaxRotationDeadline) {
    return Error(Code::kInvalidArgument, "deadline must be positive and at most " + shared::FormatDuration(kMaxRotationDeadline));
  }
  CF_ASSIGN_OR_RETURN(std::string id, NewRotationId());
  RotationRecord r;
  r.id = id;
  r.thing_name = thing;
  r.reason = reason.empty() ? "operator" : std::move(reason);
  r.created_at = now;
  r.deadline = now + within;
  r.created_by = created_by;
  CF_RETURN_IF_ERROR(registry.CreateRotation(r));
  return r;
}

Status ChangeCertificateStatus(Registry& registry, const std::string& cert_id, CertStatus status,
                               const std::string& actor, const std::string& reason, WallTime now) {
  if (!IsLowerHex(cert_id, 64)) return Status(Code::kInvalidArgument, "certificate id must be 64 lowercase hex digits");
  if (status != CertStatus::kRevoked && status != CertStatus::kInactive) {
    return Status(Code::kInvalidArgument, "an operator may only revoke or deactivate");
  }
  SecurityEvent ev{0, now, status == CertStatus::kRevoked ? "certificate_revoked" : "certificate_deactivated", cert_id,
                   "by " + actor + (reason.empty() ? "" : ": " + reason)};
  return registry.SetCertStatus(cert_id, status, now, ev);
}

shared::Result<NewApiToken> CreateApiToken(Registry& registry, const std::string& name, ApiRole role,
                                           std::optional<std::chrono::seconds> ttl, WallTime now) {
  if (!IsValidThingName(name)) {
    return Error(Code::kInvalidArgument, "token name must be 1-64 of A-Z a-z 0-9 - _ . : and not start with certfleet-");
  }
  if (ttl && ttl->count() <= 0) return Error(Code::kInvalidArgument, "ttl must be positive");
  CF_ASSIGN_OR_RETURN(std::string secret, NewToken());
  NewApiToken out;
  out.record.name = name;
  out.record.token_hash = TokenHash(secret);
  out.record.role = role;
  out.record.created_at = now;
  if (ttl) out.record.expires_at = now + *ttl;
  CF_RETURN_IF_ERROR(registry.CreateApiToken(out.record));
  out.secret = std::move(secret);
  return out;
}

}  // namespace certfleet::companion
