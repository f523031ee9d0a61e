// The registry: things, certificates, enrollment tokens and security events.
//
// An interface so that a PostgreSQL backend can replace SQLite; nothing here exposes
// SQLite. Invariants live in the database schema (constraints, unique indexes), not
// in process memory: one current certificate per thing, a token used once, unique
// serials. Every mutation is one transaction, durable when the call returns.
// Implementations are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/status.h"

namespace certfleet::companion {

using shared::Result;
using shared::Status;
using shared::WallTime;

enum class CertStatus { kPendingActivation, kActive, kInactive, kRevoked };
std::string_view CertStatusName(CertStatus s);
Result<CertStatus> ParseCertStatus(std::string_view s);

struct CertRecord {
  std::string id;  // SHA-256 of the DER, hex
  std::string thing_name;
  std::string serial;
  std::string subject;
  WallTime not_before;
  WallTime not_after;
  WallTime issued_at;
  CertStatus status = CertStatus::kActive;
  std::string source;  // "est-enroll", "est-reenroll", ...
  std::optional<std::string> superseded_by;
  std::optional<WallTime> superseded_at;
  std::string pem;
};

struct ThingRecord {
  std::string name;
  WallTime created_at;
  std::optional<std::string> current_cert_id;
  std::optional<WallTime> current_not_after;
};

struct TokenRecord {
  std::string serial;
  WallTime created_at;
  WallTime expires_at;
  std::optional<WallTime> used_at;
};

struct SecurityEvent {
  int64_t id = 0;
  WallTime at;
  std::string kind;     // "token_reused", "unknown_client_cert", ...
  std::string subject;  // who: serial, certificate id, client address
  std::string detail;
};

// How a new certificate enters the registry.
struct IssueRecord {
  CertRecord cert;
  // Token enrollment: the SHA-256 hex of the token, consumed in the same transaction.
  std::optional<std::string> token_hash;
  // Re-enrollment: the certificate being replaced (it becomes superseded).
  std::optional<std::string> replaces_cert_id;
  // Claim enrollment: refuse if the thing already has a current certificate.
  bool require_no_current = false;
};

class Registry {
 public:
  virtual ~Registry() = default;

  // Records `rec.cert` (creating its thing if needed), consumes the token and
  // supersedes the thing's previous current certificate, all in one durable
  // transaction. kFailedPrecondition (and nothing stored) if the token is unknown,
  // used, expired or bound to another serial, or if require_no_current is set and the
  // thing has a current certificate; kAlreadyExists on a duplicate id or serial.
  virtual Status RecordIssued(const IssueRecord& rec, WallTime now) = 0;

  // Moves a certificate to `status` (an operator's revoke or deactivate). kNotFound
  // for an unknown id; kFailedPrecondition for a REVOKED certificate (final).
  virtual Status SetCertStatus(const std::string& id, CertStatus status) = 0;

  virtual Result<std::optional<CertRecord>> FindCert(const std::string& id) = 0;
  // Certificates in issue order; `thing` filters when non-empty.
  virtual Result<std::vector<CertRecord>> ListCerts(const std::string& thing, int64_t limit) = 0;
  virtual Result<std::vector<ThingRecord>> ListThings(int64_t limit) = 0;

  // Stores a new token (its hash only). kAlreadyExists on a hash collision.
  virtual Status CreateToken(const std::string& token_hash, const std::string& serial, WallTime now,
                             WallTime expires_at) = 0;
  virtual Result<std::optional<TokenRecord>> FindToken(const std::string& token_hash) = 0;

  virtual Status RecordSecurityEvent(const SecurityEvent& event) = 0;
  virtual Result<std::vector<SecurityEvent>> ListSecurityEvents(int64_t limit) = 0;
};

struct SqliteRegistryOptions {
  bool read_only = false;
};
// Opens (and migrates, unless read-only) the SQLite registry at `path`.
Result<std::unique_ptr<Registry>> OpenSqliteRegistry(const std::string& path, const SqliteRegistryOptions& options);

}  // namespace certfleet::companion
