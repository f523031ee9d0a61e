// SQLite implementation of the registry. One connection, serialized by a mutex;
// WAL + synchronous=FULL, so a committed transaction survives power loss.
#include <algorithm>
#include <cctype>
#include <map>
#include <mutex>
#include <utility>

#include "companion/registry.h"
#include "shared/sqlite/sqlite.h"
#include "shared/wire/rotation.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"
#include "shared/x509/key_facts.h"

namespace certfleet::companion {

using shared::Code;
using shared::Database;
using shared::Statement;
using shared::Transaction;

std::string_view CertStatusName(CertStatus s) {
  switch (s) {
    case CertStatus::kPendingActivation: return "PENDING_ACTIVATION";
    case CertStatus::kActive: return "ACTIVE";
    case CertStatus::kInactive: return "INACTIVE";
    case CertStatus::kRevoked: return "REVOKED";
  }
  return "UNKNOWN";
}

Result<CertStatus> ParseCertStatus(std::string_view s) {
  for (CertStatus c : {CertStatus::kPendingActivation, CertStatus::kActive, CertStatus::kInactive, CertStatus::kRevoked}) {
    if (CertStatusName(c) == s) return c;
  }
  return shared::Error(Code::kDataLoss, "unknown certificate status '" + std::string(s) + "'");
}

std::string_view RotationStateName(RotationState s) {
  switch (s) {
    case RotationState::kPending: return "PENDING";
    case RotationState::kCompleted: return "COMPLETED";
    case RotationState::kCancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}

std::string_view ApiRoleName(ApiRole r) { return r == ApiRole::kAdmin ? "admin" : "read-only"; }

Result<ApiRole> ParseApiRole(std::string_view s) {
  if (s == "admin") return ApiRole::kAdmin;
  if (s == "read-only") return ApiRole::kReadOnly;
  return shared::Error(Code::kInvalidArgument, "unknown role '" + std::string(s) + "' (read-only or admin)");
}

Result<RotationState> ParseRotationState(std::string_view s) {
  for (RotationState r : {RotationState::kPending, RotationState::kCompleted, RotationState::kCancelled}) {
    if (RotationStateName(r) == s) return r;
  }
  return shared::Error(Code::kInvalidArgument, "unknown rotation state '" + std::string(s) + "'");
}

namespace {

// Whether two certificate PEMs carry the same public key (false if either does not parse).
bool SameKeyAs(const std::string& a_pem, const std::string& b_pem) {
  auto a = shared::CertFromPem(a_pem);
  auto b = shared::CertFromPem(b_pem);
  return a && b && shared::SamePublicKey(X509_get0_pubkey(a->get()), X509_get0_pubkey(b->get()));
}

// The key facts of a certificate PEM; an unparseable one is recorded as UNKNOWN so that
// the backfill does not try it again.
shared::KeyFacts FactsOf(const std::string& pem) {
  auto f = shared::DeriveKeyFactsFromPem(pem);
  if (f) return *f;
  shared::KeyFacts unknown;
  unknown.key_type = "UNKNOWN";
  return unknown;
}

// Binds key_type, key_bits, sig_alg, sig_hash, roca to ?first .. ?first+4.
void BindKeyFacts(Statement& st, int first, const shared::KeyFacts& f) {
  st.Bind(first, f.key_type).Bind(first + 1, static_cast<int64_t>(f.key_bits)).Bind(first + 2, f.sig_alg);
  st.Bind(first + 3, f.sig_hash).Bind(first + 4, static_cast<int64_t>(f.roca ? 1 : 0));
}

// Schema versions. Append only: never edit a migration that has shipped.
constexpr std::string_view kMigration1 = R"sql(
CREATE TABLE things (
  name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
  created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE certificates (
  id             TEXT PRIMARY KEY CHECK (length(id) = 64 AND id NOT GLOB '*[^0-9a-f]*'),
  thing_name     TEXT NOT NULL REFERENCES things(name),
  serial         TEXT NOT NULL UNIQUE CHECK (length(serial) BETWEEN 1 AND 40),
  subject        TEXT NOT NULL,
  not_before     INTEGER NOT NULL,
  not_after      INTEGER NOT NULL CHECK (not_after > not_before),
  issued_at      INTEGER NOT NULL,
  status         TEXT NOT NULL CHECK (status IN ('PENDING_ACTIVATION', 'ACTIVE', 'INACTIVE', 'REVOKED')),
  source         TEXT NOT NULL,
  superseded_by  TEXT REFERENCES certificates(id) DEFERRABLE INITIALLY DEFERRED,
  superseded_at  INTEGER,
  pem            TEXT NOT NULL,
  CHECK ((superseded_by IS NULL) = (superseded_at IS NULL))
) STRICT;
CREATE INDEX certificates_by_thing ON certificates(thing_name, issued_at);
-- The invariant: at most one current (active, not superseded) certificate per thing.
CREATE UNIQUE INDEX one_current_certificate_per_thing
  ON certificates(thing_name) WHERE status = 'ACTIVE' AND superseded_by IS NULL;

CREATE TABLE enrollment_tokens (
  token_hash    TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
  serial        TEXT NOT NULL CHECK (length(serial) BETWEEN 1 AND 128),
  created_at    INTEGER NOT NULL,
  expires_at    INTEGER NOT NULL CHECK (expires_at > created_at),
  used_at       INTEGER,
  used_by_cert  TEXT UNIQUE REFERENCES certificates(id),
  CHECK ((used_at IS NULL) = (used_by_cert IS NULL))
) STRICT;

CREATE TABLE security_events (
  id       INTEGER PRIMARY KEY,
  at       INTEGER NOT NULL,
  kind     TEXT NOT NULL,
  subject  TEXT NOT NULL,
  detail   TEXT NOT NULL
) STRICT;
CREATE INDEX security_events_by_time ON security_events(at);
)sql";

// When a certificate last changed status (revocation time for the CRL).
constexpr std::string_view kMigration2 = R"sql(
ALTER TABLE certificates ADD COLUMN status_changed_at INTEGER;
UPDATE certificates SET status_changed_at = issued_at;
)sql";

// Fleet provisioning: pending certificates with their ownership tokens, and what
// templates say about things. Serials stay unique across both certificate tables.
constexpr std::string_view kMigration3 = R"sql(
CREATE TABLE pending_certificates (
  id             TEXT PRIMARY KEY CHECK (length(id) = 64 AND id NOT GLOB '*[^0-9a-f]*'),
  serial         TEXT NOT NULL UNIQUE CHECK (length(serial) BETWEEN 1 AND 40),
  subject        TEXT NOT NULL,
  not_before     INTEGER NOT NULL,
  not_after      INTEGER NOT NULL CHECK (not_after > not_before),
  issued_at      INTEGER NOT NULL,
  pem            TEXT NOT NULL,
  claim_subject  TEXT NOT NULL,
  client_id      TEXT NOT NULL,
  token_hash     TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64),
  expires_at     INTEGER NOT NULL CHECK (expires_at > issued_at)
) STRICT;
CREATE INDEX pending_by_expiry ON pending_certificates(expires_at);
CREATE TRIGGER pending_serial_unique BEFORE INSERT ON pending_certificates
  WHEN EXISTS (SELECT 1 FROM certificates WHERE serial = NEW.serial OR id = NEW.id)
  BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: serial already issued'); END;
CREATE TRIGGER certificate_serial_unique BEFORE INSERT ON certificates
  WHEN EXISTS (SELECT 1 FROM pending_certificates WHERE serial = NEW.serial AND id <> NEW.id)
  BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: serial already issued'); END;

-- Ownership tokens that were used, so that a replay is told apart from garbage.
CREATE TABLE used_ownership_tokens (
  token_hash  TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
  cert_id     TEXT NOT NULL UNIQUE REFERENCES certificates(id),
  used_at     INTEGER NOT NULL
) STRICT;

ALTER TABLE things ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attributes));
ALTER TABLE things ADD COLUMN groups TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(groups));
ALTER TABLE things ADD COLUMN thing_type TEXT NOT NULL DEFAULT '';
ALTER TABLE things ADD COLUMN policy_name TEXT NOT NULL DEFAULT '';
)sql";

// Rotation: requests to things, proof that a device holds its new certificate, and the
// grace window of the certificates it replaces (docs/rotation.md).
constexpr std::string_view kMigration4 = R"sql(
ALTER TABLE certificates ADD COLUMN proven_at INTEGER;
ALTER TABLE certificates ADD COLUMN retire_at INTEGER CHECK (retire_at IS NULL OR superseded_by IS NOT NULL);
CREATE INDEX certificates_by_retire_at ON certificates(retire_at) WHERE retire_at IS NOT NULL;

-- The invariant: at most one ACTIVE certificate per thing outside a grace window. While
-- a thing's current certificate is unproven, a rotation is under way and its
-- predecessors stay ACTIVE (the device may still hold only the old key). Once the current
-- certificate is proven, every other ACTIVE certificate of the thing must carry the end
-- of its grace window (retire_at), which the lifecycle sweep enforces.
CREATE TRIGGER proof_requires_grace_windows BEFORE UPDATE OF proven_at ON certificates
  WHEN NEW.proven_at IS NOT NULL AND (NEW.status <> 'ACTIVE' OR NEW.superseded_by IS NOT NULL OR EXISTS (
    SELECT 1 FROM certificates WHERE thing_name = NEW.thing_name AND id <> NEW.id AND status = 'ACTIVE'
      AND retire_at IS NULL))
  BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: one ACTIVE certificate per thing outside the grace window'); END;
CREATE TRIGGER reactivation_requires_grace_window BEFORE UPDATE OF status ON certificates
  WHEN NEW.status = 'ACTIVE' AND NEW.superseded_by IS NOT NULL AND NEW.retire_at IS NULL AND EXISTS (
    SELECT 1 FROM certificates WHERE thing_name = NEW.thing_name AND status = 'ACTIVE' AND superseded_by IS NULL
      AND proven_at IS NOT NULL)
  BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: one ACTIVE certificate per thing outside the grace window'); END;

CREATE TABLE rotation_requests (
  id            TEXT PRIMARY KEY CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'),
  thing_name    TEXT NOT NULL REFERENCES things(name),
  reason        TEXT NOT NULL CHECK (length(CAST(reason AS BLOB)) BETWEEN 1 AND 256),
  created_at    INTEGER NOT NULL,
  deadline      INTEGER NOT NULL CHECK (deadline >= created_at),
  state         TEXT NOT NULL CHECK (state IN ('PENDING', 'COMPLETED', 'CANCELLED')),
  published_at  INTEGER,
  cleared_at    INTEGER CHECK (cleared_at IS NULL OR (published_at IS NOT NULL AND state <> 'PENDING')),
  completed_at  INTEGER,
  new_cert_id   TEXT REFERENCES certificates(id),
  created_by    TEXT NOT NULL,
  CHECK ((state = 'COMPLETED') = (completed_at IS NOT NULL)),
  CHECK ((state = 'COMPLETED') = (new_cert_id IS NOT NULL))
) STRICT;
-- At most one pending request per thing.
CREATE UNIQUE INDEX one_pending_rotation_per_thing ON rotation_requests(thing_name) WHERE state = 'PENDING';
CREATE INDEX rotation_requests_by_thing ON rotation_requests(thing_name, created_at);
)sql";

// Audits (docs/audit.md): key facts derived at issuance so that an audit never parses
// certificates, when a certificate was first activated, when a thing's agent was last
// seen and whether it is quarantined; audit tasks with per-check results, findings,
// suppressions and the mitigation actions taken. Key facts of rows recorded before this
// migration are filled in when the registry opens (they need the PEM parsed).
constexpr std::string_view kMigration5 = R"sql(
ALTER TABLE certificates ADD COLUMN key_type TEXT;
ALTER TABLE certificates ADD COLUMN key_bits INTEGER CHECK (key_bits IS NULL OR key_bits >= 0);
ALTER TABLE certificates ADD COLUMN sig_alg TEXT;
ALTER TABLE certificates ADD COLUMN sig_hash TEXT;
ALTER TABLE certificates ADD COLUMN roca INTEGER CHECK (roca IS NULL OR roca IN (0, 1));
ALTER TABLE certificates ADD COLUMN activated_at INTEGER;
UPDATE certificates SET activated_at = issued_at WHERE status <> 'PENDING_ACTIVATION';
-- First activation: set once, when a certificate is first ACTIVE.
CREATE TRIGGER certificate_first_activation_insert AFTER INSERT ON certificates
  WHEN NEW.status = 'ACTIVE' AND NEW.activated_at IS NULL
  BEGIN UPDATE certificates SET activated_at = COALESCE(NEW.status_changed_at, NEW.issued_at) WHERE id = NEW.id; END;
CREATE TRIGGER certificate_first_activation_update AFTER UPDATE OF status ON certificates
  WHEN NEW.status = 'ACTIVE' AND NEW.activated_at IS NULL
  BEGIN UPDATE certificates SET activated_at = COALESCE(NEW.status_changed_at, NEW.issued_at) WHERE id = NEW.id; END;
-- The audit's scans read these partial covering indexes (named with INDEXED BY in
-- sqlite_audit_store.cc), each holding only the rows its check can flag, never the PEM pages.
CREATE INDEX certificates_audit_active ON certificates(superseded_by) WHERE status = 'ACTIVE';
CREATE INDEX certificates_audit_expiry ON certificates(not_after, thing_name, id)
  WHERE status = 'ACTIVE' AND superseded_by IS NULL;
CREATE INDEX certificates_audit_age ON certificates(activated_at, thing_name, id)
  WHERE status = 'ACTIVE' AND superseded_by IS NULL;
CREATE INDEX certificates_audit_revoked ON certificates(not_after, superseded_by, proven_at, status_changed_at, thing_name, id)
  WHERE status = 'REVOKED';
CREATE INDEX certificates_audit_superseded ON certificates(superseded_at, retire_at, superseded_by, thing_name, id)
  WHERE status = 'ACTIVE' AND superseded_by IS NOT NULL;
CREATE INDEX certificates_audit_weak ON certificates(thing_name, id)
  WHERE status = 'ACTIVE' AND (roca = 1 OR sig_hash IN ('MD2', 'MD4', 'MD5', 'SHA1')
                               OR key_type NOT IN ('RSA', 'EC', 'ED25519', 'ED448'));
CREATE INDEX certificates_audit_keysize ON certificates(key_type, key_bits) WHERE status = 'ACTIVE';
-- The rows whose key facts are still to be derived (BackfillKeyFacts): empty once done,
-- so that opening the registry does not scan the table to find nothing.
CREATE INDEX certificates_key_facts_missing ON certificates(id) WHERE key_type IS NULL;

ALTER TABLE things ADD COLUMN last_seen_at INTEGER;
ALTER TABLE things ADD COLUMN quarantined_at INTEGER;
ALTER TABLE things ADD COLUMN quarantine_reason TEXT CHECK (quarantine_reason IS NULL OR length(quarantine_reason) <= 256);
CREATE TRIGGER quarantine_needs_reason BEFORE UPDATE OF quarantined_at ON things
  WHEN NEW.quarantined_at IS NOT NULL AND NEW.quarantine_reason IS NULL
  BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: a quarantine has a reason'); END;
-- A quarantined thing gets no new certificate, whoever writes it.
CREATE TRIGGER certificates_quarantine BEFORE INSERT ON certificates
  WHEN (SELECT quarantined_at FROM things WHERE name = NEW.thing_name) IS NOT NULL
  BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: the thing is quarantined'); END;

CREATE TABLE audit_tasks (
  id          TEXT PRIMARY KEY CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'),
  task_type   TEXT NOT NULL CHECK (task_type IN ('ON_DEMAND_AUDIT_TASK', 'SCHEDULED_AUDIT_TASK')),
  status      TEXT NOT NULL CHECK (status IN ('IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELED')),
  started_at  INTEGER NOT NULL,
  ended_at    INTEGER CHECK (ended_at IS NULL OR ended_at >= started_at),
  report_path TEXT,
  error       TEXT,
  CHECK ((status = 'IN_PROGRESS') = (ended_at IS NULL))
) STRICT;
CREATE INDEX audit_tasks_by_start ON audit_tasks(started_at, id);

CREATE TABLE audit_check_results (
  task_id        TEXT NOT NULL REFERENCES audit_tasks(id) ON DELETE CASCADE,
  check_name     TEXT NOT NULL CHECK (length(check_name) BETWEEN 1 AND 64),
  run_status     TEXT NOT NULL CHECK (run_status IN ('IN_PROGRESS', 'COMPLETED_COMPLIANT', 'COMPLETED_NON_COMPLIANT',
                                                     'FAILED', 'CANCELED')),
  total          INTEGER NOT NULL DEFAULT 0 CHECK (total >= 0),
  non_compliant  INTEGER NOT NULL DEFAULT 0 CHECK (non_compliant >= 0),
  suppressed     INTEGER NOT NULL DEFAULT 0 CHECK (suppressed BETWEEN 0 AND non_compliant),
  error          TEXT,
  PRIMARY KEY (task_id, check_name)
) STRICT, WITHOUT ROWID;

CREATE TABLE audit_findings (
  id             INTEGER PRIMARY KEY,
  task_id        TEXT NOT NULL REFERENCES audit_tasks(id) ON DELETE CASCADE,
  check_name     TEXT NOT NULL,
  severity       TEXT NOT NULL CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
  resource_type  TEXT NOT NULL,
  resource_id    TEXT NOT NULL,
  thing_name     TEXT,
  reason_code    TEXT NOT NULL,
  info           TEXT NOT NULL,
  found_at       INTEGER NOT NULL,
  suppressed     INTEGER NOT NULL CHECK (suppressed IN (0, 1))
) STRICT;
CREATE INDEX audit_findings_by_task ON audit_findings(task_id, id);

CREATE TABLE audit_suppressions (
  check_name     TEXT NOT NULL CHECK (length(check_name) BETWEEN 1 AND 64),
  resource_id    TEXT NOT NULL CHECK (length(resource_id) BETWEEN 1 AND 256),
  created_at     INTEGER NOT NULL,
  expires_at     INTEGER NOT NULL CHECK (expires_at > created_at),
  description    TEXT NOT NULL CHECK (length(description) <= 1000),
  created_by     TEXT NOT NULL,
  PRIMARY KEY (check_name, resource_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE mitigation_actions (
  id          INTEGER PRIMARY KEY,
  task_id     TEXT NOT NULL REFERENCES audit_tasks(id) ON DELETE CASCADE,
  finding_id  INTEGER NOT NULL REFERENCES audit_findings(id) ON DELETE CASCADE,
  action      TEXT NOT NULL CHECK (action IN ('ROTATE_DEVICE_CERTIFICATE', 'DEACTIVATE_DEVICE_CERTIFICATE',
                                              'QUARANTINE_THING', 'NOTIFY')),
  result      TEXT NOT NULL CHECK (result IN ('SUCCEEDED', 'FAILED', 'SKIPPED')),
  detail      TEXT NOT NULL,
  at          INTEGER NOT NULL
) STRICT;
CREATE INDEX mitigation_actions_by_task ON mitigation_actions(task_id, id);
-- Each configured action is applied to a finding once.
CREATE UNIQUE INDEX mitigation_once_per_finding ON mitigation_actions(finding_id, action);
-- Nothing is applied to a suppressed finding.
CREATE TRIGGER no_mitigation_for_suppressed BEFORE INSERT ON mitigation_actions
  WHEN (SELECT suppressed FROM audit_findings WHERE id = NEW.finding_id) <> 0
  BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: no mitigation for a suppressed finding'); END;
-- A mitigation belongs to its finding's task.
CREATE TRIGGER mitigation_of_the_findings_task BEFORE INSERT ON mitigation_actions
  WHEN (SELECT task_id FROM audit_findings WHERE id = NEW.finding_id) IS NOT NEW.task_id
  BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: a mitigation belongs to its finding''s task'); END;
)sql";

// The operator API: bearer tokens (hashes only), and indexes for its filtered lists.
constexpr std::string_view kMigration6 = R"sql(
CREATE TABLE api_tokens (
  name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
  token_hash  TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*'),
  role        TEXT NOT NULL CHECK (role IN ('read-only', 'admin')),
  created_at  INTEGER NOT NULL,
  expires_at  INTEGER CHECK (expires_at IS NULL OR expires_at > created_at),
  revoked_at  INTEGER
) STRICT;
CREATE INDEX security_events_by_kind ON security_events(kind, id);
CREATE INDEX certificates_by_status ON certificates(status, not_after);
)sql";

const std::vector<std::string_view> kMigrations = {kMigration1, kMigration2, kMigration3, kMigration4, kMigration5,
                                                   kMigration6};

int64_t Secs(WallTime t) { return shared::ToUnixSeconds(t); }
WallTime Wall(int64_t s) { return shared::FromUnixSeconds(s); }

constexpr std::string_view kCertColumns =
    "id, thing_name, serial, subject, not_before, not_after, issued_at, status, source, superseded_by, "
    "superseded_at, pem, status_changed_at, proven_at, retire_at";

Result<CertRecord> ReadCert(const Statement& st) {
  CertRecord c;
  c.id = st.Text(0);
  c.thing_name = st.Text(1);
  c.serial = st.Text(2);
  c.subject = st.Text(3);
  c.not_before = Wall(st.Int(4));
  c.not_after = Wall(st.Int(5));
  c.issued_at = Wall(st.Int(6));
  CF_ASSIGN_OR_RETURN(c.status, ParseCertStatus(st.Text(7)));
  c.source = st.Text(8);
  if (!st.IsNull(9)) c.superseded_by = st.Text(9);
  if (!st.IsNull(10)) c.superseded_at = Wall(st.Int(10));
  c.pem = st.Text(11);
  c.status_changed_at = st.IsNull(12) ? c.issued_at : Wall(st.Int(12));
  if (!st.IsNull(13)) c.proven_at = Wall(st.Int(13));
  if (!st.IsNull(14)) c.retire_at = Wall(st.Int(14));
  return c;
}

// Things joined (LEFT JOIN certificates c) with their current certificate.
constexpr std::string_view kThingColumns =
    "t.name, t.created_at, c.id, c.not_after, t.last_seen_at, t.quarantined_at, t.quarantine_reason";

ThingRecord ReadThing(const Statement& st) {
  ThingRecord t;
  t.name = st.Text(0);
  t.created_at = Wall(st.Int(1));
  if (!st.IsNull(2)) {
    t.current_cert_id = st.Text(2);
    t.current_not_after = Wall(st.Int(3));
  }
  if (!st.IsNull(4)) t.last_seen_at = Wall(st.Int(4));
  if (!st.IsNull(5)) t.quarantined_at = Wall(st.Int(5));
  if (!st.IsNull(6)) t.quarantine_reason = st.Text(6);
  return t;
}

constexpr std::string_view kRotationColumns =
    "id, thing_name, reason, created_at, deadline, state, published_at, completed_at, new_cert_id, created_by, "
    "cleared_at";

Result<RotationRecord> ReadRotation(const Statement& st) {
  RotationRecord r;
  r.id = st.Text(0);
  r.thing_name = st.Text(1);
  r.reason = st.Text(2);
  r.created_at = Wall(st.Int(3));
  r.deadline = Wall(st.Int(4));
  CF_ASSIGN_OR_RETURN(r.state, ParseRotationState(st.Text(5)));
  if (!st.IsNull(6)) r.published_at = Wall(st.Int(6));
  if (!st.IsNull(7)) r.completed_at = Wall(st.Int(7));
  if (!st.IsNull(8)) r.new_cert_id = st.Text(8);
  r.created_by = st.Text(9);
  if (!st.IsNull(10)) r.cleared_at = Wall(st.Int(10));
  return r;
}

// A cached prepared statement, reset (bindings cleared, read snapshot released) when
// the lease ends.
class StatementLease {
 public:
  explicit StatementLease(Statement* s) : s_(s) {}
  StatementLease(StatementLease&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  StatementLease& operator=(StatementLease&&) = delete;
  ~StatementLease() {
    if (s_ != nullptr) (void)s_->Reset();
  }
  Statement* operator->() const { return s_; }
  Statement& operator*() const { return *s_; }

 private:
  Statement* s_;
};

class SqliteRegistry final : public Registry {
 public:
  explicit SqliteRegistry(Database db) : db_(std::move(db)) {}

  Status RecordIssued(const IssueRecord& rec, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    const CertRecord& c = rec.cert;

    if (rec.token_hash) {
      CF_ASSIGN_OR_RETURN(StatementLease q, Use(
          "SELECT serial, expires_at, used_at FROM enrollment_tokens WHERE token_hash = ?1"));
      q->Bind(1, *rec.token_hash);
      CF_ASSIGN_OR_RETURN(bool found, q->Step());
      if (!found) return Status(Code::kFailedPrecondition, "unknown enrollment token");
      if (!q->IsNull(2)) return Status(Code::kFailedPrecondition, "enrollment token already used");
      if (q->Int(1) <= Secs(now)) return Status(Code::kFailedPrecondition, "enrollment token expired");
      if (q->Text(0) != c.thing_name) {
        return Status(Code::kFailedPrecondition, "enrollment token is bound to another serial");
      }
    }

    CF_RETURN_IF_ERROR(RefuseQuarantinedLocked(c.thing_name));
    CF_ASSIGN_OR_RETURN(StatementLease thing, Use(
        "INSERT INTO things(name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING"));
    thing->Bind(1, c.thing_name).Bind(2, Secs(now));
    CF_RETURN_IF_ERROR(thing->Run());

    CF_ASSIGN_OR_RETURN(StatementLease cur, Use(
        "SELECT id, pem FROM certificates WHERE thing_name = ?1 AND status = 'ACTIVE' AND superseded_by IS NULL"));
    cur->Bind(1, c.thing_name);
    CF_ASSIGN_OR_RETURN(bool has_current, cur->Step());
    std::optional<std::string> current_id;
    std::string current_pem;
    if (has_current) {
      current_id = cur->Text(0);
      current_pem = cur->Text(1);
    }
    // A claim enrollment retried with the key of the current certificate is the same
    // device asking again: it lost the answer (a crash before it stored the certificate)
    // and holds that key, so the new certificate replaces the current one.
    if (rec.require_no_current && current_id && !SameKeyAs(current_pem, c.pem)) {
      return Status(Code::kFailedPrecondition,
                    "thing '" + c.thing_name + "' already has an active certificate; use re-enrollment");
    }

    // Move the current pointer first (the foreign key to the new row is checked at
    // commit), then insert the new certificate as the current one.
    if (c.status == CertStatus::kActive && current_id) {
      CF_ASSIGN_OR_RETURN(StatementLease sup, Use(
          "UPDATE certificates SET superseded_by = ?1, superseded_at = ?2 WHERE id = ?3"));
      sup->Bind(1, c.id).Bind(2, Secs(now)).Bind(3, *current_id);
      CF_RETURN_IF_ERROR(sup->Run());
    }
    if (rec.replaces_cert_id && rec.replaces_cert_id != current_id) {
      // A retried re-enrollment with an already superseded certificate: point it at
      // the newest successor.
      CF_ASSIGN_OR_RETURN(StatementLease sup, Use(
          "UPDATE certificates SET superseded_by = ?1 WHERE id = ?2 AND thing_name = ?3"));
      sup->Bind(1, c.id).Bind(2, *rec.replaces_cert_id).Bind(3, c.thing_name);
      CF_RETURN_IF_ERROR(sup->Run());
    }
    CF_ASSIGN_OR_RETURN(StatementLease ins, Use(
        "INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, status, "
        "source, pem, status_changed_at, key_type, key_bits, sig_alg, sig_hash, roca) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?7, ?11, ?12, ?13, ?14, ?15)"));
    ins->Bind(1, c.id).Bind(2, c.thing_name).Bind(3, c.serial).Bind(4, c.subject);
    ins->Bind(5, Secs(c.not_before)).Bind(6, Secs(c.not_after)).Bind(7, Secs(now));
    ins->Bind(8, CertStatusName(c.status)).Bind(9, c.source).Bind(10, c.pem);
    BindKeyFacts(*ins, 11, FactsOf(c.pem));
    CF_RETURN_IF_ERROR(ins->Run());

    if (rec.token_hash) {
      CF_ASSIGN_OR_RETURN(StatementLease use, Use(
          "UPDATE enrollment_tokens SET used_at = ?1, used_by_cert = ?2 "
          "WHERE token_hash = ?3 AND used_at IS NULL AND expires_at > ?1"));
      use->Bind(1, Secs(now)).Bind(2, c.id).Bind(3, *rec.token_hash);
      CF_RETURN_IF_ERROR(use->Run());
      if (db_.Changes() != 1) return Status(Code::kFailedPrecondition, "enrollment token already used");
    }
    if (rec.event) CF_RETURN_IF_ERROR(InsertEventLocked(*rec.event));
    return tx.Commit();
  }

  Status SetCertStatus(const std::string& id, CertStatus status, WallTime now,
                       const std::optional<SecurityEvent>& event) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT status FROM certificates WHERE id = ?1"));
    q->Bind(1, id);
    CF_ASSIGN_OR_RETURN(bool found, q->Step());
    if (!found) return Status(Code::kNotFound, "no certificate " + id);
    if (q->Text(0) == CertStatusName(CertStatus::kRevoked) && status != CertStatus::kRevoked) {
      return Status(Code::kFailedPrecondition, "certificate " + id + " is revoked; that is final");
    }
    CF_ASSIGN_OR_RETURN(StatementLease u, Use("UPDATE certificates SET status = ?1, status_changed_at = ?3 WHERE id = ?2"));
    u->Bind(1, CertStatusName(status)).Bind(2, id).Bind(3, Secs(now));
    CF_RETURN_IF_ERROR(u->Run());
    if (event) CF_RETURN_IF_ERROR(InsertEventLocked(*event));
    return tx.Commit();
  }

  Result<std::optional<CertRecord>> FindCert(const std::string& id) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT " + std::string(kCertColumns) +
                                                 " FROM certificates WHERE id = ?1"));
    q->Bind(1, id);
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<CertRecord>();
    CF_ASSIGN_OR_RETURN(CertRecord c, ReadCert(*q));
    return std::optional<CertRecord>(std::move(c));
  }

  Result<std::vector<CertRecord>> ListCerts(const std::string& thing, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT " + std::string(kCertColumns) +
        " FROM certificates WHERE (?1 = '' OR thing_name = ?1) ORDER BY issued_at, rowid LIMIT ?2"));
    q->Bind(1, thing).Bind(2, limit);
    std::vector<CertRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      CF_ASSIGN_OR_RETURN(CertRecord c, ReadCert(*q));
      out.push_back(std::move(c));
    }
    return out;
  }

  Result<std::vector<ThingRecord>> ListThings(int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT " + std::string(kThingColumns) + " FROM things t LEFT JOIN certificates c "
        "ON c.thing_name = t.name AND c.status = 'ACTIVE' AND c.superseded_by IS NULL "
        "ORDER BY t.name LIMIT ?1"));
    q->Bind(1, limit);
    std::vector<ThingRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back(ReadThing(*q));
    }
    return out;
  }

  Result<std::optional<ThingRecord>> FindThing(const std::string& name) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT " + std::string(kThingColumns) + " FROM things t LEFT JOIN certificates c "
        "ON c.thing_name = t.name AND c.status = 'ACTIVE' AND c.superseded_by IS NULL WHERE t.name = ?1"));
    q->Bind(1, name);
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<ThingRecord>();
    return std::optional<ThingRecord>(ReadThing(*q));
  }

  Status MarkThingSeen(const std::string& name, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "UPDATE things SET last_seen_at = max(COALESCE(last_seen_at, ?2), ?2) WHERE name = ?1"));
    q->Bind(1, name).Bind(2, Secs(now));
    CF_RETURN_IF_ERROR(q->Run());
    if (db_.Changes() != 1) return Status(Code::kNotFound, "no thing '" + name + "'");
    return Status::Ok();
  }

  Status SetQuarantine(const std::string& name, const std::optional<std::string>& reason, const std::string& actor,
                       WallTime now) override {
    if (reason && (reason->empty() || reason->size() > 256)) {
      return Status(Code::kInvalidArgument, "a quarantine reason is 1-256 bytes");
    }
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(StatementLease t, Use("SELECT quarantined_at IS NOT NULL FROM things WHERE name = ?1"));
    t->Bind(1, name);
    CF_ASSIGN_OR_RETURN(bool found, t->Step());
    if (!found) return Status(Code::kNotFound, "no thing '" + name + "'");
    const bool quarantined = t->Int(0) != 0;
    if (quarantined == reason.has_value()) return Status::Ok();  // already so: nothing to record
    CF_ASSIGN_OR_RETURN(StatementLease u, Use(
        "UPDATE things SET quarantine_reason = ?2, quarantined_at = ?3 WHERE name = ?1"));
    u->Bind(1, name);
    if (reason) {
      u->Bind(2, *reason).Bind(3, Secs(now));
    } else {
      u->BindNull(2).BindNull(3);
    }
    CF_RETURN_IF_ERROR(u->Run());
    CF_ASSIGN_OR_RETURN(StatementLease e, Use(
        "INSERT INTO security_events(at, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)"));
    e->Bind(1, Secs(now)).Bind(2, reason ? "thing_quarantined" : "thing_unquarantined").Bind(3, name);
    e->Bind(4, "by " + actor + (reason ? ": " + *reason : std::string()));
    CF_RETURN_IF_ERROR(e->Run());
    return tx.Commit();
  }

  Result<std::vector<std::string>> ListQuarantinedThings() override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT name FROM things WHERE quarantined_at IS NOT NULL ORDER BY name"));
    std::vector<std::string> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back(q->Text(0));
    }
    return out;
  }

  // kPermissionDenied when `name` is a quarantined thing: it gets no certificate by any
  // path (EST, CVM, fleet provisioning) until an operator lifts the quarantine. The
  // certificates_quarantine trigger holds the same rule for any other writer.
  Status RefuseQuarantinedLocked(const std::string& name) {
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT 1 FROM things WHERE name = ?1 AND quarantined_at IS NOT NULL"));
    q->Bind(1, name);
    CF_ASSIGN_OR_RETURN(bool quarantined, q->Step());
    if (quarantined) return Status(Code::kPermissionDenied, "thing '" + name + "' is quarantined");
    return Status::Ok();
  }

  // Derives the key facts of certificates recorded before the audit columns existed,
  // in batches of one transaction each.
  Status BackfillKeyFacts() {
    std::lock_guard lock(mu_);
    for (;;) {
      std::vector<std::pair<std::string, std::string>> batch;
      {
        CF_ASSIGN_OR_RETURN(StatementLease q, Use(
            "SELECT id, pem FROM certificates INDEXED BY certificates_key_facts_missing WHERE key_type IS NULL LIMIT 500"));
        for (;;) {
          CF_ASSIGN_OR_RETURN(bool row, q->Step());
          if (!row) break;
          batch.emplace_back(q->Text(0), q->Text(1));
        }
      }
      if (batch.empty()) return Status::Ok();
      CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
      for (const auto& [id, pem] : batch) {
        CF_ASSIGN_OR_RETURN(StatementLease u, Use(
            "UPDATE certificates SET key_type = ?1, key_bits = ?2, sig_alg = ?3, sig_hash = ?4, roca = ?5 WHERE id = ?6"));
        BindKeyFacts(*u, 1, FactsOf(pem));
        u->Bind(6, id);
        CF_RETURN_IF_ERROR(u->Run());
      }
      CF_RETURN_IF_ERROR(tx.Commit());
    }
  }

  Status CreateToken(const std::string& token_hash, const std::string& serial, WallTime now,
                     WallTime expires_at) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "INSERT INTO enrollment_tokens(token_hash, serial, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)"));
    q->Bind(1, token_hash).Bind(2, serial).Bind(3, Secs(now)).Bind(4, Secs(expires_at));
    return q->Run();
  }

  Result<std::optional<TokenRecord>> FindToken(const std::string& token_hash) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT serial, created_at, expires_at, used_at FROM enrollment_tokens WHERE token_hash = ?1"));
    q->Bind(1, token_hash);
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<TokenRecord>();
    TokenRecord t;
    t.serial = q->Text(0);
    t.created_at = Wall(q->Int(1));
    t.expires_at = Wall(q->Int(2));
    if (!q->IsNull(3)) t.used_at = Wall(q->Int(3));
    return std::optional<TokenRecord>(std::move(t));
  }

  Status RecordPending(const PendingCert& c, const std::string& token_hash) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "INSERT INTO pending_certificates(id, serial, subject, not_before, not_after, issued_at, pem, claim_subject, "
        "client_id, token_hash, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"));
    q->Bind(1, c.id).Bind(2, c.serial).Bind(3, c.subject).Bind(4, Secs(c.not_before)).Bind(5, Secs(c.not_after));
    q->Bind(6, Secs(c.issued_at)).Bind(7, c.pem).Bind(8, c.claim_subject).Bind(9, c.client_id);
    q->Bind(10, token_hash).Bind(11, Secs(c.expires_at));
    return q->Run();
  }

  Result<PendingCert> FindPendingByToken(const std::string& token_hash, WallTime now) override {
    std::lock_guard lock(mu_);
    return FindPendingLocked(token_hash, now);
  }

  Result<CertRecord> ActivatePending(const std::string& token_hash, const ThingRegistration& reg, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(PendingCert p, FindPendingLocked(token_hash, now));
    CF_RETURN_IF_ERROR(RefuseQuarantinedLocked(reg.thing_name));

    CF_ASSIGN_OR_RETURN(StatementLease thing, Use(
        "INSERT INTO things(name, created_at, attributes, groups, thing_type, policy_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
        "ON CONFLICT(name) DO UPDATE SET attributes = excluded.attributes, groups = excluded.groups, "
        "thing_type = excluded.thing_type, policy_name = excluded.policy_name"));
    thing->Bind(1, reg.thing_name).Bind(2, Secs(now)).Bind(3, reg.attributes_json).Bind(4, reg.groups_json);
    thing->Bind(5, reg.thing_type).Bind(6, reg.policy_name);
    CF_RETURN_IF_ERROR(thing->Run());

    CF_ASSIGN_OR_RETURN(StatementLease cur, Use(
        "SELECT id, pem FROM certificates WHERE thing_name = ?1 AND status = 'ACTIVE' AND superseded_by IS NULL"));
    cur->Bind(1, reg.thing_name);
    CF_ASSIGN_OR_RETURN(bool has_current, cur->Step());
    std::optional<std::string> current_id;
    bool same_key = false;
    if (has_current) {
      current_id = cur->Text(0);
      same_key = SameKeyAs(cur->Text(1), p.pem);
    }
    // As for claim enrollment: RegisterThing retried with the key of the thing's current
    // certificate is the device that lost the answer (a crash before it stored it).
    if (current_id && !reg.allow_reprovisioning && !same_key) {
      return shared::Error(Code::kAlreadyExists, "thing '" + reg.thing_name + "' is already provisioned");
    }
    if (current_id && reg.certificate_status == CertStatus::kActive) {
      CF_ASSIGN_OR_RETURN(StatementLease sup, Use(
          "UPDATE certificates SET superseded_by = ?1, superseded_at = ?2 WHERE id = ?3"));
      sup->Bind(1, p.id).Bind(2, Secs(now)).Bind(3, *current_id);
      CF_RETURN_IF_ERROR(sup->Run());
    }
    CF_ASSIGN_OR_RETURN(StatementLease del, Use("DELETE FROM pending_certificates WHERE id = ?1"));
    del->Bind(1, p.id);
    CF_RETURN_IF_ERROR(del->Run());
    CertRecord c;
    c.id = p.id;
    c.thing_name = reg.thing_name;
    c.serial = p.serial;
    c.subject = p.subject;
    c.not_before = p.not_before;
    c.not_after = p.not_after;
    c.issued_at = p.issued_at;
    c.status = reg.certificate_status;
    c.source = "fleet-provisioning";
    c.pem = p.pem;
    c.status_changed_at = now;
    CF_ASSIGN_OR_RETURN(StatementLease ins, Use(
        "INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, status, "
        "source, pem, status_changed_at, key_type, key_bits, sig_alg, sig_hash, roca) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"));
    ins->Bind(1, c.id).Bind(2, c.thing_name).Bind(3, c.serial).Bind(4, c.subject);
    ins->Bind(5, Secs(c.not_before)).Bind(6, Secs(c.not_after)).Bind(7, Secs(c.issued_at));
    ins->Bind(8, CertStatusName(c.status)).Bind(9, c.source).Bind(10, c.pem).Bind(11, Secs(now));
    BindKeyFacts(*ins, 12, FactsOf(c.pem));
    CF_RETURN_IF_ERROR(ins->Run());
    CF_ASSIGN_OR_RETURN(StatementLease used, Use(
        "INSERT INTO used_ownership_tokens(token_hash, cert_id, used_at) VALUES (?1, ?2, ?3)"));
    used->Bind(1, token_hash).Bind(2, c.id).Bind(3, Secs(now));
    CF_RETURN_IF_ERROR(used->Run());
    CF_RETURN_IF_ERROR(tx.Commit());
    return c;
  }

  Result<int64_t> DeleteExpiredPending(WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("DELETE FROM pending_certificates WHERE expires_at <= ?1"));
    q->Bind(1, Secs(now));
    CF_RETURN_IF_ERROR(q->Run());
    return static_cast<int64_t>(db_.Changes());
  }

  Status RecordSecurityEvent(const SecurityEvent& e) override {
    std::lock_guard lock(mu_);
    return InsertEventLocked(e);
  }

  Status InsertEventLocked(const SecurityEvent& e) {
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "INSERT INTO security_events(at, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)"));
    q->Bind(1, Secs(e.at)).Bind(2, e.kind).Bind(3, e.subject).Bind(4, e.detail);
    return q->Run();
  }

  // ---- Operator API ----

  Status CreateApiToken(const ApiTokenRecord& t) override {
    if (!IsValidThingName(t.name)) return Status(Code::kInvalidArgument, "token name must be 1-64 of A-Z a-z 0-9 - _ . :");
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "INSERT INTO api_tokens(name, token_hash, role, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)"));
    q->Bind(1, t.name).Bind(2, t.token_hash).Bind(3, ApiRoleName(t.role)).Bind(4, Secs(t.created_at));
    if (t.expires_at) q->Bind(5, Secs(*t.expires_at));
    return q->Run();
  }

  static Result<ApiTokenRecord> ReadApiToken(const Statement& q) {
    ApiTokenRecord t;
    t.name = q.Text(0);
    t.token_hash = q.Text(1);
    CF_ASSIGN_OR_RETURN(t.role, ParseApiRole(q.Text(2)));
    t.created_at = Wall(q.Int(3));
    if (!q.IsNull(4)) t.expires_at = Wall(q.Int(4));
    if (!q.IsNull(5)) t.revoked_at = Wall(q.Int(5));
    return t;
  }

  Result<std::optional<ApiTokenRecord>> FindApiToken(const std::string& token_hash) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT name, token_hash, role, created_at, expires_at, revoked_at FROM api_tokens WHERE token_hash = ?1"));
    q->Bind(1, token_hash);
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<ApiTokenRecord>();
    CF_ASSIGN_OR_RETURN(ApiTokenRecord t, ReadApiToken(*q));
    return std::optional<ApiTokenRecord>(std::move(t));
  }

  Result<std::vector<ApiTokenRecord>> ListApiTokens() override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT name, token_hash, role, created_at, expires_at, revoked_at FROM api_tokens ORDER BY name"));
    std::vector<ApiTokenRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      CF_ASSIGN_OR_RETURN(ApiTokenRecord t, ReadApiToken(*q));
      out.push_back(std::move(t));
    }
    return out;
  }

  Status RevokeApiToken(const std::string& name, WallTime now, const SecurityEvent& event) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT revoked_at FROM api_tokens WHERE name = ?1"));
    q->Bind(1, name);
    CF_ASSIGN_OR_RETURN(bool found, q->Step());
    if (!found) return Status(Code::kNotFound, "no API token '" + name + "'");
    if (!q->IsNull(0)) return Status(Code::kFailedPrecondition, "API token '" + name + "' is already revoked");
    CF_ASSIGN_OR_RETURN(StatementLease u, Use("UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1"));
    u->Bind(1, name).Bind(2, Secs(now));
    CF_RETURN_IF_ERROR(u->Run());
    CF_RETURN_IF_ERROR(InsertEventLocked(event));
    return tx.Commit();
  }

  Result<ThingPage> ListThingsPage(const std::string& after, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT " + std::string(kThingColumns) + " FROM things t LEFT JOIN certificates c "
        "ON c.thing_name = t.name AND c.status = 'ACTIVE' AND c.superseded_by IS NULL "
        "WHERE t.name > ?1 ORDER BY t.name LIMIT ?2"));
    q->Bind(1, after).Bind(2, limit + 1);
    ThingPage page;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      if (static_cast<int64_t>(page.items.size()) == limit) {
        page.next = page.items.back().name;
        break;
      }
      page.items.push_back(ReadThing(*q));
    }
    return page;
  }

  Result<CertPage> ListCertsPage(const CertFilter& f, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT rowid, " + std::string(kCertColumns) +
        " FROM certificates WHERE rowid > ?1 AND (?2 = '' OR status = ?2) AND (?3 = '' OR thing_name = ?3) "
        "AND (?4 IS NULL OR not_after < ?4) ORDER BY rowid LIMIT ?5"));
    q->Bind(1, f.after).Bind(2, f.status ? CertStatusName(*f.status) : std::string_view("")).Bind(3, f.thing);
    if (f.expiring_before) q->Bind(4, Secs(*f.expiring_before));
    q->Bind(5, limit + 1);
    CertPage page;
    int64_t last = 0;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      if (static_cast<int64_t>(page.items.size()) == limit) {
        page.next = last;
        break;
      }
      last = q->Int(0);
      Statement& st = *q;
      CertRecord c;
      c.id = st.Text(1);
      c.thing_name = st.Text(2);
      c.serial = st.Text(3);
      c.subject = st.Text(4);
      c.not_before = Wall(st.Int(5));
      c.not_after = Wall(st.Int(6));
      c.issued_at = Wall(st.Int(7));
      CF_ASSIGN_OR_RETURN(c.status, ParseCertStatus(st.Text(8)));
      c.source = st.Text(9);
      if (!st.IsNull(10)) c.superseded_by = st.Text(10);
      if (!st.IsNull(11)) c.superseded_at = Wall(st.Int(11));
      c.pem = st.Text(12);
      c.status_changed_at = st.IsNull(13) ? c.issued_at : Wall(st.Int(13));
      if (!st.IsNull(14)) c.proven_at = Wall(st.Int(14));
      if (!st.IsNull(15)) c.retire_at = Wall(st.Int(15));
      page.items.push_back(std::move(c));
    }
    return page;
  }

  Result<EventPage> ListSecurityEventsPage(const EventFilter& f, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT id, at, kind, subject, detail FROM security_events WHERE (?1 = 0 OR id < ?1) "
        "AND (?2 = '' OR kind = ?2) AND (?3 = '' OR subject = ?3) AND (?4 IS NULL OR at >= ?4) "
        "AND (?5 IS NULL OR at < ?5) ORDER BY id DESC LIMIT ?6"));
    q->Bind(1, f.before).Bind(2, f.kind).Bind(3, f.subject);
    if (f.since) q->Bind(4, Secs(*f.since));
    if (f.until) q->Bind(5, Secs(*f.until));
    q->Bind(6, limit + 1);
    EventPage page;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      if (static_cast<int64_t>(page.items.size()) == limit) {
        page.next = page.items.back().id;
        break;
      }
      page.items.push_back({q->Int(0), Wall(q->Int(1)), q->Text(2), q->Text(3), q->Text(4)});
    }
    return page;
  }

  Result<std::vector<TokenRecord>> ListTokens(int64_t limit, const std::optional<ListPosition>& before) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT serial, created_at, expires_at, used_at, rowid FROM enrollment_tokens "
        "WHERE ?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND rowid < ?3) "
        "ORDER BY created_at DESC, rowid DESC LIMIT ?1"));
    q->Bind(1, limit);
    if (before) {
      // The position is the rowid of the last token shown; anything else finds nothing.
      int64_t row = 0;
      const std::string& k = before->key;
      if (k.empty() || k.size() > 18 || k.find_first_not_of("0123456789") != std::string::npos) {
        return std::vector<TokenRecord>{};
      }
      for (char c : k) row = row * 10 + (c - '0');
      q->Bind(2, Secs(before->time)).Bind(3, row);
    } else {
      q->BindNull(2).Bind(3, int64_t{0});
    }
    std::vector<TokenRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      TokenRecord t{q->Text(0), Wall(q->Int(1)), Wall(q->Int(2)), std::nullopt, std::to_string(q->Int(4))};
      if (!q->IsNull(3)) t.used_at = Wall(q->Int(3));
      out.push_back(std::move(t));
    }
    return out;
  }

  Result<FleetCounts> CountFleet(WallTime now) override {
    std::lock_guard lock(mu_);
    FleetCounts out;
    for (CertStatus c : {CertStatus::kPendingActivation, CertStatus::kActive, CertStatus::kInactive, CertStatus::kRevoked}) {
      out.certs_by_status.emplace_back(std::string(CertStatusName(c)), 0);
    }
    CF_ASSIGN_OR_RETURN(StatementLease s, Use("SELECT status, count(*) FROM certificates GROUP BY status"));
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, s->Step());
      if (!row) break;
      for (auto& [name, n] : out.certs_by_status) {
        if (name == s->Text(0)) n = s->Int(1);
      }
    }
    CF_ASSIGN_OR_RETURN(StatementLease e, Use(
        "SELECT coalesce(sum(not_after <= ?1), 0), coalesce(sum(not_after > ?1 AND not_after <= ?1 + 7 * 86400), 0), "
        "coalesce(sum(not_after > ?1 + 7 * 86400 AND not_after <= ?1 + 30 * 86400), 0), "
        "coalesce(sum(not_after > ?1 + 30 * 86400 AND not_after <= ?1 + 90 * 86400), 0), "
        "coalesce(sum(not_after > ?1 + 90 * 86400), 0) FROM certificates WHERE status = 'ACTIVE'"));
    e->Bind(1, Secs(now));
    CF_ASSIGN_OR_RETURN(bool erow, e->Step());
    const char* buckets[] = {"expired", "lt7d", "lt30d", "lt90d", "ge90d"};
    for (int i = 0; i < 5; ++i) out.active_by_expiry.emplace_back(buckets[i], erow ? e->Int(i) : 0);
    for (RotationState r : {RotationState::kPending, RotationState::kCompleted, RotationState::kCancelled}) {
      out.rotations_by_state.emplace_back(std::string(RotationStateName(r)), 0);
    }
    CF_ASSIGN_OR_RETURN(StatementLease r, Use("SELECT state, count(*) FROM rotation_requests GROUP BY state"));
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, r->Step());
      if (!row) break;
      for (auto& [name, n] : out.rotations_by_state) {
        if (name == r->Text(0)) n = r->Int(1);
      }
    }
    return out;
  }

  Result<std::vector<SecurityEvent>> ListSecurityEvents(int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT id, at, kind, subject, detail FROM security_events ORDER BY id DESC LIMIT ?1"));
    q->Bind(1, limit);
    std::vector<SecurityEvent> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      out.push_back({q->Int(0), Wall(q->Int(1)), q->Text(2), q->Text(3), q->Text(4)});
    }
    return out;
  }

  Status CreateRotation(const RotationRecord& r) override {
    CF_RETURN_IF_ERROR(shared::ValidateRotationId(r.id));
    if (r.reason.empty() || r.reason.size() > shared::kMaxRotationReasonLength) {
      return Status(Code::kInvalidArgument, "rotation reason must be 1-256 bytes");
    }
    if (r.deadline < r.created_at) return Status(Code::kInvalidArgument, "rotation deadline is before its creation");
    if (r.state != RotationState::kPending || r.published_at || r.completed_at || r.new_cert_id) {
      return Status(Code::kInvalidArgument, "a new rotation request is PENDING and unpublished");
    }
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(StatementLease t, Use("SELECT 1 FROM things WHERE name = ?1"));
    t->Bind(1, r.thing_name);
    CF_ASSIGN_OR_RETURN(bool thing_found, t->Step());
    if (!thing_found) return Status(Code::kNotFound, "no thing '" + r.thing_name + "'");
    CF_ASSIGN_OR_RETURN(std::optional<RotationRecord> pending, FindPendingRotationLocked(r.thing_name));
    if (pending) {
      return Status(Code::kAlreadyExists, "thing '" + r.thing_name + "' already has a pending rotation " + pending->id);
    }
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "INSERT INTO rotation_requests(id, thing_name, reason, created_at, deadline, state, created_by) "
        "VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING', ?6)"));
    q->Bind(1, r.id).Bind(2, r.thing_name).Bind(3, r.reason).Bind(4, Secs(r.created_at)).Bind(5, Secs(r.deadline));
    q->Bind(6, r.created_by);
    CF_RETURN_IF_ERROR(q->Run());
    return tx.Commit();
  }

  Result<std::vector<RotationRecord>> ListRotations(const RotationFilter& f, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT " + std::string(kRotationColumns) + " FROM rotation_requests WHERE (?1 = '' OR state = ?1) "
        "AND (?2 = '' OR thing_name = ?2) AND (?4 IS NULL OR created_at < ?4 OR (created_at = ?4 AND id < ?5)) "
        "ORDER BY created_at DESC, id DESC LIMIT ?3"));
    q->Bind(1, f.state ? RotationStateName(*f.state) : std::string_view("")).Bind(2, f.thing).Bind(3, limit);
    if (f.before) {
      q->Bind(4, Secs(f.before->time)).Bind(5, f.before->key);
    } else {
      q->BindNull(4).Bind(5, "");
    }
    std::vector<RotationRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      CF_ASSIGN_OR_RETURN(RotationRecord r, ReadRotation(*q));
      out.push_back(std::move(r));
    }
    return out;
  }

  Result<std::optional<RotationRecord>> FindRotation(const std::string& id) override {
    std::lock_guard lock(mu_);
    return FindRotationLocked(id);
  }

  Result<std::optional<RotationRecord>> FindPendingRotation(const std::string& thing) override {
    std::lock_guard lock(mu_);
    return FindPendingRotationLocked(thing);
  }

  Status MarkRotationPublished(const std::string& id, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "UPDATE rotation_requests SET published_at = ?2 WHERE id = ?1 AND state = 'PENDING'"));
    q->Bind(1, id).Bind(2, Secs(now));
    CF_RETURN_IF_ERROR(q->Run());
    if (db_.Changes() != 1) return Status(Code::kNotFound, "no pending rotation " + id);
    return Status::Ok();
  }

  Result<std::vector<RotationRecord>> ListRotationsToClear(int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT " + std::string(kRotationColumns) + " FROM rotation_requests WHERE state <> 'PENDING' "
        "AND published_at IS NOT NULL AND cleared_at IS NULL ORDER BY created_at, rowid LIMIT ?1"));
    q->Bind(1, limit);
    std::vector<RotationRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      CF_ASSIGN_OR_RETURN(RotationRecord r, ReadRotation(*q));
      out.push_back(std::move(r));
    }
    return out;
  }

  Status MarkRotationCleared(const std::string& id, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "UPDATE rotation_requests SET cleared_at = ?2 WHERE id = ?1 AND state <> 'PENDING' AND published_at IS NOT NULL"));
    q->Bind(1, id).Bind(2, Secs(now));
    CF_RETURN_IF_ERROR(q->Run());
    if (db_.Changes() != 1) return Status(Code::kNotFound, "no published, finished rotation " + id);
    return Status::Ok();
  }

  Result<RotationCompletion> CompleteRotation(const RotationProof& p) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(StatementLease c, Use(
        "SELECT thing_name, status, superseded_by IS NULL, proven_at IS NOT NULL FROM certificates WHERE id = ?1"));
    c->Bind(1, p.new_cert_id);
    CF_ASSIGN_OR_RETURN(bool cert_found, c->Step());
    if (!cert_found || c->Text(0) != p.thing_name) {
      return shared::Error(Code::kFailedPrecondition, "certificate " + p.new_cert_id + " is not thing '" +
                                                          p.thing_name + "''s");
    }
    if (c->Text(1) != CertStatusName(CertStatus::kActive) || c->Int(2) == 0) {
      return shared::Error(Code::kFailedPrecondition, "certificate " + p.new_cert_id + " is not the thing's current ACTIVE certificate");
    }
    const bool already_proven = c->Int(3) != 0;
    CF_ASSIGN_OR_RETURN(std::optional<RotationRecord> pending, FindPendingRotationLocked(p.thing_name));
    RotationCompletion out;
    if (!p.rotation_id.empty()) {
      if (!pending || pending->id != p.rotation_id) {
        return shared::Error(Code::kFailedPrecondition, "rotation " + p.rotation_id + " is not thing '" + p.thing_name +
                                                            "''s pending rotation");
      }
    } else if (already_proven) {
      return shared::Error(Code::kAlreadyExists, "certificate " + p.new_cert_id + " is already proven");
    }
    if (pending) {
      CF_ASSIGN_OR_RETURN(StatementLease done, Use(
          "UPDATE rotation_requests SET state = 'COMPLETED', completed_at = ?2, new_cert_id = ?3 WHERE id = ?1"));
      done->Bind(1, pending->id).Bind(2, Secs(p.now)).Bind(3, p.new_cert_id);
      CF_RETURN_IF_ERROR(done->Run());
      out.completed_rotation_id = pending->id;
    }
    // Grace windows first: the trigger refuses a proof that leaves an ACTIVE certificate without one.
    CF_ASSIGN_OR_RETURN(StatementLease others, Use(
        "SELECT id FROM certificates WHERE thing_name = ?1 AND id <> ?2 AND status = 'ACTIVE' AND retire_at IS NULL"));
    others->Bind(1, p.thing_name).Bind(2, p.new_cert_id);
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, others->Step());
      if (!row) break;
      out.retiring_cert_ids.push_back(others->Text(0));
    }
    for (const auto& id : out.retiring_cert_ids) {
      CF_ASSIGN_OR_RETURN(StatementLease r, Use("UPDATE certificates SET retire_at = ?2 WHERE id = ?1"));
      r->Bind(1, id).Bind(2, Secs(p.now + p.grace));
      CF_RETURN_IF_ERROR(r->Run());
    }
    if (!already_proven) {
      CF_ASSIGN_OR_RETURN(StatementLease proven, Use("UPDATE certificates SET proven_at = ?2 WHERE id = ?1"));
      proven->Bind(1, p.new_cert_id).Bind(2, Secs(p.now));
      CF_RETURN_IF_ERROR(proven->Run());
    }
    CF_RETURN_IF_ERROR(tx.Commit());
    return out;
  }

  Status CancelRotation(const std::string& id) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(std::optional<RotationRecord> r, FindRotationLocked(id));
    if (!r) return Status(Code::kNotFound, "no rotation " + id);
    if (r->state != RotationState::kPending) {
      return Status(Code::kFailedPrecondition, "rotation " + id + " is " + std::string(RotationStateName(r->state)));
    }
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("UPDATE rotation_requests SET state = 'CANCELLED' WHERE id = ?1"));
    q->Bind(1, id);
    CF_RETURN_IF_ERROR(q->Run());
    return tx.Commit();
  }

  Result<std::vector<ThingRecord>> ListThingsExpiringBefore(WallTime t, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT t.name, t.created_at, c.id, c.not_after FROM things t JOIN certificates c "
        "ON c.thing_name = t.name AND c.status = 'ACTIVE' AND c.superseded_by IS NULL "
        "WHERE c.not_after < ?1 ORDER BY t.name LIMIT ?2"));
    q->Bind(1, Secs(t)).Bind(2, limit);
    std::vector<ThingRecord> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q->Step());
      if (!row) break;
      ThingRecord rec;
      rec.name = q->Text(0);
      rec.created_at = Wall(q->Int(1));
      rec.current_cert_id = q->Text(2);
      rec.current_not_after = Wall(q->Int(3));
      out.push_back(std::move(rec));
    }
    return out;
  }

  Result<std::vector<CertTransition>> SweepCertificates(WallTime now, std::chrono::seconds revoke_after) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    std::vector<CertTransition> out;
    auto collect = [&](std::string_view sql, int64_t bound, CertStatus from, CertStatus to) -> Status {
      CF_ASSIGN_OR_RETURN(StatementLease q, Use(sql));
      q->Bind(1, bound);
      for (;;) {
        CF_ASSIGN_OR_RETURN(bool row, q->Step());
        if (!row) break;
        out.push_back({q->Text(0), q->Text(1), from, to});
      }
      return Status::Ok();
    };
    const size_t before = out.size();
    CF_RETURN_IF_ERROR(collect("SELECT id, thing_name FROM certificates WHERE status = 'ACTIVE' AND retire_at <= ?1 "
                               "ORDER BY retire_at, id",
                               Secs(now), CertStatus::kActive, CertStatus::kInactive));
    for (size_t i = before; i < out.size(); ++i) {
      CF_ASSIGN_OR_RETURN(StatementLease u, Use(
          "UPDATE certificates SET status = 'INACTIVE', status_changed_at = ?2 WHERE id = ?1"));
      u->Bind(1, out[i].cert_id).Bind(2, Secs(now));
      CF_RETURN_IF_ERROR(u->Run());
    }
    const size_t deactivated = out.size();
    CF_RETURN_IF_ERROR(collect("SELECT id, thing_name FROM certificates WHERE status = 'INACTIVE' AND retire_at <= ?1 "
                               "ORDER BY retire_at, id",
                               Secs(now) - revoke_after.count(), CertStatus::kInactive, CertStatus::kRevoked));
    for (size_t i = deactivated; i < out.size(); ++i) {
      CF_ASSIGN_OR_RETURN(StatementLease u, Use(
          "UPDATE certificates SET status = 'REVOKED', status_changed_at = ?2 WHERE id = ?1"));
      u->Bind(1, out[i].cert_id).Bind(2, Secs(now));
      CF_RETURN_IF_ERROR(u->Run());
    }
    CF_RETURN_IF_ERROR(tx.Commit());
    return out;
  }

  Result<int64_t> CountRevokedCerts() override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT COUNT(*) FROM certificates WHERE status = 'REVOKED'"));
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return shared::Error(Code::kInternal, "COUNT returned no row");
    return q->Int(0);
  }

 private:
  Result<std::optional<RotationRecord>> FindRotationLocked(const std::string& id) {
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT " + std::string(kRotationColumns) +
                                                 " FROM rotation_requests WHERE id = ?1"));
    q->Bind(1, id);
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<RotationRecord>();
    CF_ASSIGN_OR_RETURN(RotationRecord r, ReadRotation(*q));
    return std::optional<RotationRecord>(std::move(r));
  }

  Result<std::optional<RotationRecord>> FindPendingRotationLocked(const std::string& thing) {
    CF_ASSIGN_OR_RETURN(StatementLease q, Use("SELECT " + std::string(kRotationColumns) +
                                                 " FROM rotation_requests WHERE thing_name = ?1 AND state = 'PENDING'"));
    q->Bind(1, thing);
    CF_ASSIGN_OR_RETURN(bool row, q->Step());
    if (!row) return std::optional<RotationRecord>();
    CF_ASSIGN_OR_RETURN(RotationRecord r, ReadRotation(*q));
    return std::optional<RotationRecord>(std::move(r));
  }

  Result<PendingCert> FindPendingLocked(const std::string& token_hash, WallTime now) {
    CF_ASSIGN_OR_RETURN(StatementLease q, Use(
        "SELECT id, serial, subject, not_before, not_after, issued_at, pem, claim_subject, client_id, expires_at "
        "FROM pending_certificates WHERE token_hash = ?1"));
    q->Bind(1, token_hash);
    CF_ASSIGN_OR_RETURN(bool found, q->Step());
    if (!found) {
      CF_ASSIGN_OR_RETURN(StatementLease u, Use("SELECT 1 FROM used_ownership_tokens WHERE token_hash = ?1"));
      u->Bind(1, token_hash);
      CF_ASSIGN_OR_RETURN(bool used, u->Step());
      return shared::Error(Code::kFailedPrecondition,
                           used ? "certificate ownership token already used" : "unknown certificate ownership token");
    }
    PendingCert p{q->Text(0), q->Text(1), q->Text(2), Wall(q->Int(3)), Wall(q->Int(4)), Wall(q->Int(5)),
                  q->Text(6), q->Text(7), q->Text(8), Wall(q->Int(9))};
    if (p.expires_at <= now) return shared::Error(Code::kFailedPrecondition, "certificate ownership token expired");
    return p;
  }

  // Prepares each SQL text once per connection. Callers hold mu_.
  Result<StatementLease> Use(std::string_view sql) {
    auto it = statements_.find(sql);
    if (it == statements_.end()) {
      CF_ASSIGN_OR_RETURN(Statement st, db_.Prepare(sql));
      it = statements_.emplace(std::string(sql), std::move(st)).first;
    }
    return StatementLease(&it->second);
  }

  std::mutex mu_;
  Database db_;
  std::map<std::string, Statement, std::less<>> statements_;
};

}  // namespace

Result<std::unique_ptr<Registry>> OpenSqliteRegistry(const std::string& path, const SqliteRegistryOptions& options) {
  Database::Options db_options;
  db_options.read_only = options.read_only;
  CF_ASSIGN_OR_RETURN(Database db, Database::Open(path, db_options));
  if (!options.read_only) {
    CF_RETURN_IF_ERROR(db.Migrate(kMigrations).WithContext("registry " + path));
  } else {
    CF_ASSIGN_OR_RETURN(int version, db.SchemaVersion());
    if (version != static_cast<int>(kMigrations.size())) {
      return shared::Error(Code::kFailedPrecondition, "registry " + path + " has schema version " +
                                                          std::to_string(version) + ", expected " +
                                                          std::to_string(kMigrations.size()));
    }
  }
  auto registry = std::make_unique<SqliteRegistry>(std::move(db));
  if (!options.read_only) CF_RETURN_IF_ERROR(registry->BackfillKeyFacts().WithContext("registry " + path));
  return std::unique_ptr<Registry>(std::move(registry));
}

}  // namespace certfleet::companion
