// The registry: things, certificates, enrollment tokens and security events.
//
// An interface so that a PostgreSQL backend can replace SQLite; nothing here exposes
// SQLite. Invariants live in the database schema (constraints, unique indexes), not
// in process memory: one current certificate per thing, a token used once, unique
// serials. Every mutation is one transaction, durable when the call returns.
// Implementations are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/status.h"
#include "shared/wire/topics.h"

namespace certfleet::companion {

using shared::Result;
using shared::Status;
using shared::WallTime;

// A thing name (also a token serial and a certificate CN): shared/wire/topics.h.
using shared::IsValidThingName;

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
  WallTime status_changed_at;  // when the status last changed (issuance, revocation, ...)
  // When the device proved it holds this certificate (a verified rotation ack).
  std::optional<WallTime> proven_at;
  // Set on the thing's other ACTIVE certificates when a successor is proven: the end of
  // their grace window, when the lifecycle sweep deactivates them.
  std::optional<WallTime> retire_at;
};

struct ThingRecord {
  std::string name;
  WallTime created_at;
  std::optional<std::string> current_cert_id;
  std::optional<WallTime> current_not_after;
  // When the thing's agent was last heard from (a rotation ack, a re-enrollment).
  std::optional<WallTime> last_seen_at;
  // Set while the thing is quarantined (docs/audit.md): the broker refuses its
  // publishes and subscriptions and EST refuses its re-enrollment.
  std::optional<WallTime> quarantined_at;
  std::string quarantine_reason;
};

struct TokenRecord {
  std::string serial;
  WallTime created_at;
  WallTime expires_at;
  std::optional<WallTime> used_at;
  std::string position;  // ListTokens: the page key after this token (serials repeat)
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
  // Claim enrollment: refuse if the thing already has a current certificate, unless it
  // certifies the same public key (a device retrying after it lost the answer).
  bool require_no_current = false;
  // A security event that belongs to this decision (an expired certificate re-enrolled
  // within its grace, say): stored in the same transaction, or not at all.
  std::optional<SecurityEvent> event;
};

// A certificate issued by CreateCertificateFromCsr / CreateKeysAndCertificate that
// waits for RegisterThing (AWS: PENDING_ACTIVATION). It belongs to no thing yet.
struct PendingCert {
  std::string id;
  std::string serial;
  std::string subject;
  WallTime not_before;
  WallTime not_after;
  WallTime issued_at;
  std::string pem;
  std::string claim_subject;  // who asked: the claim certificate's CN (MQTT username)
  std::string client_id;      // MQTT client id of the claimant
  WallTime expires_at;        // the ownership token's expiry; deleted after it
};

// What RegisterThing makes of a pending certificate (the applied template).
struct ThingRegistration {
  std::string thing_name;
  std::string attributes_json = "{}";  // JSON object
  std::string groups_json = "[]";      // JSON array of strings
  std::string thing_type;
  std::string policy_name;
  CertStatus certificate_status = CertStatus::kActive;
  bool allow_reprovisioning = false;
};

// ---- Operator API (docs/api.md) ----

// What an operator may do through the API: read-only reads, admin also changes.
enum class ApiRole { kReadOnly, kAdmin };
std::string_view ApiRoleName(ApiRole r);  // "read-only", "admin"
Result<ApiRole> ParseApiRole(std::string_view s);  // kInvalidArgument for anything else

// A bearer token of the operator API. Only the SHA-256 of its secret is stored.
struct ApiTokenRecord {
  std::string name;        // unique; IsValidThingName rules
  std::string token_hash;  // SHA-256 hex of the secret
  ApiRole role = ApiRole::kReadOnly;
  WallTime created_at;
  std::optional<WallTime> expires_at;  // unset: does not expire
  std::optional<WallTime> revoked_at;
};

// Filters of the paginated lists. Keyset pagination: `after` is the key of the last
// row of the previous page (0 or "" for the first page); rows come in key order.
struct CertFilter {
  std::optional<CertStatus> status;
  std::string thing;                      // empty: every thing
  std::optional<WallTime> expiring_before;  // notAfter < this
  int64_t after = 0;                      // certificates in insertion order (rowid)
};
struct CertPage {
  std::vector<CertRecord> items;
  std::optional<int64_t> next;  // key to pass as `after` for the next page
};
struct ThingPage {
  std::vector<ThingRecord> items;
  std::optional<std::string> next;
};
struct EventFilter {
  std::string kind;                  // empty: every kind
  std::string subject;               // empty: every subject
  std::optional<WallTime> since;     // at >= since
  std::optional<WallTime> until;     // at < until
  int64_t before = 0;                // newest first: ids below this (0: from the newest)
};
struct EventPage {
  std::vector<SecurityEvent> items;
  std::optional<int64_t> next;  // pass as `before`
};

// Counts for the metrics, computed by SQL at scrape time.
struct FleetCounts {
  std::vector<std::pair<std::string, int64_t>> certs_by_status;     // every status, 0 included
  std::vector<std::pair<std::string, int64_t>> active_by_expiry;    // by the buckets below
  std::vector<std::pair<std::string, int64_t>> rotations_by_state;  // every state
};
// Days-to-expiry buckets of ACTIVE certificates: "expired", "lt7d", "lt30d", "lt90d", "ge90d".

// ---- Rotation ----

enum class RotationState { kPending, kCompleted, kCancelled };
std::string_view RotationStateName(RotationState s);
Result<RotationState> ParseRotationState(std::string_view s);

// A rotation request: the companion asks a thing to rotate its identity.
struct RotationRecord {
  std::string id;  // 32 lowercase hex (shared::ValidateRotationId)
  std::string thing_name;
  std::string reason;  // 1-256 bytes
  WallTime created_at;
  WallTime deadline;  // not before created_at
  RotationState state = RotationState::kPending;
  std::optional<WallTime> published_at;  // when the retained request reached the broker
  std::optional<WallTime> cleared_at;    // when it was cleared there (after completion or cancellation)
  std::optional<WallTime> completed_at;  // COMPLETED only
  std::optional<std::string> new_cert_id;  // COMPLETED only: the proven certificate
  std::string created_by;  // "operator:<user>", "audit", ...
};

// A position in a newest-first list: rows strictly older than (time, key) follow it.
struct ListPosition {
  WallTime time;
  std::string key;  // the row's id or serial: ties of the same second in key order
};

struct RotationFilter {
  std::optional<RotationState> state;
  std::string thing;  // empty: every thing
  std::optional<ListPosition> before;  // the next page after this row
};

// A verified rotation ack, as CompleteRotation records it.
struct RotationProof {
  std::string thing_name;
  std::string rotation_id;  // "" for a rotation the agent started by itself
  std::string new_cert_id;
  WallTime now;
  std::chrono::seconds grace{0};  // the replaced certificates stay ACTIVE this long
};

struct RotationCompletion {
  std::optional<std::string> completed_rotation_id;  // the request it completed, if any
  std::vector<std::string> retiring_cert_ids;        // got retire_at = now + grace
};

// One certificate status change made by the lifecycle sweep.
struct CertTransition {
  std::string cert_id;
  std::string thing_name;
  CertStatus from = CertStatus::kActive;
  CertStatus to = CertStatus::kInactive;
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
  // `event`, when given, is stored in the same transaction (who did it, and why).
  virtual Status SetCertStatus(const std::string& id, CertStatus status, WallTime now,
                               const std::optional<SecurityEvent>& event = std::nullopt) = 0;

  virtual Result<std::optional<CertRecord>> FindCert(const std::string& id) = 0;
  // Certificates in issue order; `thing` filters when non-empty.
  virtual Result<std::vector<CertRecord>> ListCerts(const std::string& thing, int64_t limit) = 0;
  virtual Result<std::vector<ThingRecord>> ListThings(int64_t limit) = 0;
  virtual Result<std::optional<ThingRecord>> FindThing(const std::string& name) = 0;
  // Records that the thing's agent was heard from at `now` (never moves back in time).
  // kNotFound for an unknown thing.
  virtual Status MarkThingSeen(const std::string& name, WallTime now) = 0;
  // Quarantines the thing (a reason of 1-256 bytes) or, with nullopt, lifts its
  // quarantine, and records a security event ("thing_quarantined" or
  // "thing_unquarantined", subject the thing, detail the actor and reason) in the same
  // transaction. Quarantining a quarantined thing keeps its first time and reason and
  // records nothing. kNotFound for an unknown thing; kInvalidArgument for a bad reason.
  virtual Status SetQuarantine(const std::string& name, const std::optional<std::string>& reason,
                               const std::string& actor, WallTime now) = 0;
  // Names of the quarantined things, by name.
  virtual Result<std::vector<std::string>> ListQuarantinedThings() = 0;

  // Stores a new token (its hash only). kAlreadyExists on a hash collision.
  virtual Status CreateToken(const std::string& token_hash, const std::string& serial, WallTime now,
                             WallTime expires_at) = 0;
  virtual Result<std::optional<TokenRecord>> FindToken(const std::string& token_hash) = 0;

  // Fleet provisioning. RecordPending stores the pending certificate and the hash of
  // its ownership token in one durable transaction.
  virtual Status RecordPending(const PendingCert& cert, const std::string& ownership_token_hash) = 0;
  // The pending certificate an unused, unexpired ownership token stands for.
  // kFailedPrecondition (InvalidCertificateOwnershipToken) otherwise.
  virtual Result<PendingCert> FindPendingByToken(const std::string& ownership_token_hash, WallTime now) = 0;
  // RegisterThing's commit, one transaction: consumes the token, creates or updates the
  // thing, and moves the pending certificate into the registry with the template's
  // status, superseding the thing's current certificate only when reprovisioning is
  // allowed or the pending certificate is for the same public key (a device retrying
  // after it lost the answer). kFailedPrecondition for a used/expired/unknown token;
  // kAlreadyExists when the thing already has a current certificate for another key and
  // reprovisioning is not allowed.
  // Nothing is stored on failure.
  virtual Result<CertRecord> ActivatePending(const std::string& ownership_token_hash, const ThingRegistration& reg,
                                             WallTime now) = 0;
  // Deletes pending certificates whose token expired. Returns how many.
  virtual Result<int64_t> DeleteExpiredPending(WallTime now) = 0;

  virtual Status RecordSecurityEvent(const SecurityEvent& event) = 0;
  virtual Result<std::vector<SecurityEvent>> ListSecurityEvents(int64_t limit) = 0;

  // ---- Rotation (docs/rotation.md) ----

  // Stores a PENDING request (published_at, completed_at and new_cert_id must be unset).
  // kNotFound for an unknown thing; kAlreadyExists when the thing has a pending request
  // (one pending request per thing, a unique index) or on a duplicate id;
  // kInvalidArgument for a malformed id, reason or deadline.
  virtual Status CreateRotation(const RotationRecord& rotation) = 0;
  // Newest first.
  virtual Result<std::vector<RotationRecord>> ListRotations(const RotationFilter& filter, int64_t limit) = 0;
  virtual Result<std::optional<RotationRecord>> FindRotation(const std::string& id) = 0;
  virtual Result<std::optional<RotationRecord>> FindPendingRotation(const std::string& thing) = 0;
  // Sets published_at. kNotFound unless the request exists and is PENDING.
  virtual Status MarkRotationPublished(const std::string& id, WallTime now) = 0;
  // Requests no longer PENDING whose retained message may still be on the broker
  // (published, not cleared), oldest first.
  virtual Result<std::vector<RotationRecord>> ListRotationsToClear(int64_t limit) = 0;
  // Sets cleared_at. kNotFound unless the request exists, was published and is not PENDING.
  virtual Status MarkRotationCleared(const std::string& id, WallTime now) = 0;
  // Records a verified ack, one transaction: the new certificate gets proven_at; every
  // other ACTIVE certificate of the thing gets retire_at = now + grace; the request
  // (rotation_id, or with "" the thing's pending request if any) becomes COMPLETED.
  // kFailedPrecondition (nothing stored) if the certificate is not the thing's current
  // ACTIVE certificate, or rotation_id is not the thing's pending request (a completed
  // or cancelled one included); kAlreadyExists if rotation_id is "" and the certificate
  // is already proven (a replayed ack).
  virtual Result<RotationCompletion> CompleteRotation(const RotationProof& proof) = 0;
  // PENDING -> CANCELLED. kNotFound for an unknown id, kFailedPrecondition if not PENDING.
  virtual Status CancelRotation(const std::string& id) = 0;
  // Things whose current certificate's notAfter is before `t`, by name.
  virtual Result<std::vector<ThingRecord>> ListThingsExpiringBefore(WallTime t, int64_t limit) = 0;
  // The lifecycle sweep, one transaction: ACTIVE certificates whose retire_at has come
  // become INACTIVE; INACTIVE ones with retire_at + revoke_after <= now become REVOKED
  // (both in one sweep when revoke_after is 0). Certificates without retire_at (their
  // successor is not proven) are never touched. Returns the changes made.
  virtual Result<std::vector<CertTransition>> SweepCertificates(WallTime now, std::chrono::seconds revoke_after) = 0;
  // How many certificates are REVOKED. REVOKED is final and certificates are never
  // deleted, so the count changes exactly when the revoked set (the CRL) does, whoever
  // revoked (this process, or certfleetctl in another).
  virtual Result<int64_t> CountRevokedCerts() = 0;

  // ---- Operator API ----

  // kAlreadyExists for a name (or hash) in use, kInvalidArgument for a malformed record.
  virtual Status CreateApiToken(const ApiTokenRecord& token) = 0;
  // By the hash of the presented secret; revoked and expired tokens are returned too.
  virtual Result<std::optional<ApiTokenRecord>> FindApiToken(const std::string& token_hash) = 0;
  // By name, hashes included (callers must not print them).
  virtual Result<std::vector<ApiTokenRecord>> ListApiTokens() = 0;
  // Sets revoked_at and records `event` in the same transaction. kNotFound for an
  // unknown name, kFailedPrecondition if already revoked.
  virtual Status RevokeApiToken(const std::string& name, WallTime now, const SecurityEvent& event) = 0;

  // Things by name after `after`. `limit` >= 1.
  virtual Result<ThingPage> ListThingsPage(const std::string& after, int64_t limit) = 0;
  virtual Result<CertPage> ListCertsPage(const CertFilter& filter, int64_t limit) = 0;
  virtual Result<EventPage> ListSecurityEventsPage(const EventFilter& filter, int64_t limit) = 0;
  // Enrollment tokens, newest first (hashes are not returned: TokenRecord has none).
  // With `before` (created_at and a record's `position`), only the tokens after it.
  virtual Result<std::vector<TokenRecord>> ListTokens(int64_t limit,
                                                      const std::optional<ListPosition>& before = std::nullopt) = 0;
  virtual Result<FleetCounts> CountFleet(WallTime now) = 0;
};

struct SqliteRegistryOptions {
  bool read_only = false;
};
// Opens (and migrates, unless read-only) the SQLite registry at `path`.
Result<std::unique_ptr<Registry>> OpenSqliteRegistry(const std::string& path, const SqliteRegistryOptions& options);

}  // namespace certfleet::companion
