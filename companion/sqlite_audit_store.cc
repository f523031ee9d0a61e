// The audit tables in the registry's SQLite database, on a connection of their own.
// The database-backed checks are single INSERT ... SELECT statements over covering
// indexes: the rows never pass through this process, so an audit of a million
// certificates uses the memory of one statement.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "companion/api_input.h"
#include "companion/audit.h"
#include "shared/sqlite/sqlite.h"

namespace certfleet::companion {

using shared::Code;
using shared::Database;
using shared::Statement;
using shared::Transaction;
using shared::WallTime;

namespace {

int64_t Secs(WallTime t) { return shared::ToUnixSeconds(t); }
WallTime Wall(int64_t s) { return shared::FromUnixSeconds(s); }

// A check's SQL. Parameters: ?1 task id, ?2 now, ?3 bound, ?4 min RSA bits, ?5 min EC
// bits, ?6 check name, ?7 severity, ?8 resource type. `findings` selects the columns
// (resource_id, thing_name, reason_code, info); `total` counts the resources.
struct CheckSql {
  std::string_view check;
  std::string_view findings;
  std::string_view total;
};

const std::vector<CheckSql>& SqlChecks() {
  // Every scan names its partial covering index (kMigration5 in sqlite_registry.cc), so the
  // plan does not depend on statistics: each reads only the rows its check can flag.
  static constexpr std::string_view kCurrentTotal =
      "SELECT COUNT(*) FROM certificates INDEXED BY certificates_audit_active "
      "WHERE status = 'ACTIVE' AND superseded_by IS NULL";
  static constexpr std::string_view kActiveTotal =
      "SELECT COUNT(*) FROM certificates INDEXED BY certificates_audit_active WHERE status = 'ACTIVE'";
  static const std::vector<CheckSql> checks = {
      {kCheckDeviceCertExpiring,
       "SELECT id, thing_name, CASE WHEN not_after <= ?2 THEN 'CERTIFICATE_PAST_EXPIRATION' "
       "ELSE 'CERTIFICATE_APPROACHING_EXPIRATION' END, "
       "json_object('thingName', thing_name, 'notAfter', strftime('%Y-%m-%dT%H:%M:%SZ', not_after, 'unixepoch')) "
       "FROM certificates INDEXED BY certificates_audit_expiry "
       "WHERE status = 'ACTIVE' AND superseded_by IS NULL AND not_after < ?3",
       kCurrentTotal},
      {kCheckDeviceCertAge,
       "SELECT id, thing_name, 'CERTIFICATE_PAST_AGE_THRESHOLD', "
       "json_object('thingName', thing_name, 'activatedAt', strftime('%Y-%m-%dT%H:%M:%SZ', activated_at, 'unixepoch')) "
       "FROM certificates INDEXED BY certificates_audit_age "
       "WHERE status = 'ACTIVE' AND superseded_by IS NULL AND activated_at < ?3",
       kCurrentTotal},
      // "Still current": nothing replaced it (superseded_by is set only when an ACTIVE
      // certificate is replaced) and no certificate was issued to the thing after it (a
      // revoked device re-provisioned or re-enrolled with a token).
      {kCheckRevokedStillActive,
       "SELECT id, thing_name, 'CERTIFICATE_REVOKED_BY_ISSUER', "
       "json_object('thingName', thing_name, 'revokedAt', strftime('%Y-%m-%dT%H:%M:%SZ', status_changed_at, 'unixepoch'), "
       "'stillCurrent', json(CASE WHEN still_current THEN 'true' ELSE 'false' END), "
       "'provenAfterRevocation', json(CASE WHEN proven_at > status_changed_at THEN 'true' ELSE 'false' END)) "
       "FROM (SELECT id, thing_name, status_changed_at, proven_at, superseded_by IS NULL AND NOT EXISTS ("
       "SELECT 1 FROM certificates n INDEXED BY certificates_by_thing WHERE n.thing_name = r.thing_name "
       "AND n.rowid > r.rowid AND n.status <> 'PENDING_ACTIVATION') AS still_current "
       "FROM certificates r INDEXED BY certificates_audit_revoked WHERE r.status = 'REVOKED' AND r.not_after > ?2) "
       "WHERE still_current OR proven_at > status_changed_at",
       "SELECT COUNT(*) FROM certificates INDEXED BY certificates_audit_revoked "
       "WHERE status = 'REVOKED' AND not_after > ?2"},
      {kCheckDeviceKeyQuality,
       "SELECT id, thing_name, CASE WHEN roca = 1 THEN 'CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361' "
       "WHEN key_type NOT IN ('RSA', 'EC', 'ED25519', 'ED448') THEN 'CERTIFICATE_KEY_TYPE_NOT_ALLOWED' "
       "WHEN sig_hash IN ('MD2', 'MD4', 'MD5', 'SHA1') THEN 'CERTIFICATE_WEAK_SIGNATURE_ALGORITHM' "
       "ELSE 'CERTIFICATE_KEY_TOO_SHORT' END, "
       "json_object('thingName', thing_name, 'keyType', key_type, 'keyBits', key_bits, 'signatureHash', sig_hash) "
       "FROM certificates WHERE rowid IN ("
       "SELECT rowid FROM certificates INDEXED BY certificates_audit_weak WHERE status = 'ACTIVE' "
       "AND (roca = 1 OR sig_hash IN ('MD2', 'MD4', 'MD5', 'SHA1') OR key_type NOT IN ('RSA', 'EC', 'ED25519', 'ED448')) "
       "UNION SELECT rowid FROM certificates INDEXED BY certificates_audit_keysize "
       "WHERE status = 'ACTIVE' AND key_type = 'RSA' AND key_bits < ?4 "
       "UNION SELECT rowid FROM certificates INDEXED BY certificates_audit_keysize "
       "WHERE status = 'ACTIVE' AND key_type = 'EC' AND key_bits < ?5)",
       kActiveTotal},
      {kCheckAgentNotSeen,
       "SELECT t.name, t.name, 'AGENT_NOT_SEEN_PAST_THRESHOLD', "
       "json_object('thingName', t.name, 'lastSeen', CASE WHEN t.last_seen_at IS NULL THEN NULL "
       "ELSE strftime('%Y-%m-%dT%H:%M:%SZ', t.last_seen_at, 'unixepoch') END) "
       "FROM things t WHERE COALESCE(t.last_seen_at, t.created_at) < ?3 AND EXISTS (SELECT 1 FROM certificates c "
       "WHERE c.thing_name = t.name AND c.status = 'ACTIVE' AND c.superseded_by IS NULL)",
       kCurrentTotal},
      {kCheckRotationOverdue,
       "SELECT id, thing_name, 'ROTATION_REQUEST_PAST_DEADLINE', "
       "json_object('thingName', thing_name, 'deadline', strftime('%Y-%m-%dT%H:%M:%SZ', deadline, 'unixepoch'), "
       "'createdBy', created_by, 'published', json(CASE WHEN published_at IS NULL THEN 'false' ELSE 'true' END)) "
       "FROM rotation_requests WHERE state = 'PENDING' AND deadline < ?2",
       "SELECT COUNT(*) FROM rotation_requests WHERE state = 'PENDING'"},
      {kCheckActiveWithoutThing,
       "SELECT id, thing_name, 'ACTIVE_CERTIFICATE_NOT_CURRENT', "
       "json_object('thingName', thing_name, 'supersededBy', superseded_by, "
       "'supersededAt', strftime('%Y-%m-%dT%H:%M:%SZ', superseded_at, 'unixepoch')) "
       "FROM certificates INDEXED BY certificates_audit_superseded "
       "WHERE status = 'ACTIVE' AND superseded_by IS NOT NULL AND retire_at IS NULL AND superseded_at < ?3",
       kActiveTotal},
  };
  return checks;
}

const CheckSql* FindSqlCheck(std::string_view name) {
  for (const auto& c : SqlChecks()) {
    if (c.check == name) return &c;
  }
  return nullptr;
}

// The finding JSON, built by SQLite. The CASE tables are constants of this file.
const std::string& FindingJsonSql() {
  static const std::string sql = [] {
    std::string reason = "CASE f.reason_code";
    auto quote = [](std::string_view v) {
      std::string q = "'";
      for (char ch : v) q += ch == '\'' ? std::string("''") : std::string(1, ch);
      return q + "'";
    };
    for (const auto& [code, text] : AuditReasonTexts()) reason += " WHEN " + quote(code) + " THEN " + quote(text);
    reason += " ELSE '' END";
    // ?2: the task's start time, formatted once; ?3/?4: the usual finding time and its
    // text (every finding of a scan shares it), so that strftime runs only for others.
    return "SELECT json_object('findingId', f.task_id || '-' || f.id, 'taskId', f.task_id, 'checkName', f.check_name, "
           "'taskStartTime', ?2, "
           "'findingTime', CASE f.found_at WHEN ?3 THEN ?4 ELSE strftime('%Y-%m-%dT%H:%M:%SZ', f.found_at, 'unixepoch') END, "
           "'severity', f.severity, "
           "'nonCompliantResource', json_object('resourceType', f.resource_type, 'resourceIdentifier', "
           "CASE f.resource_type WHEN 'DEVICE_CERTIFICATE' THEN json_object('deviceCertificateId', f.resource_id) "
           "WHEN 'CA_CERTIFICATE' THEN json_object('caCertificateId', f.resource_id) "
           "WHEN 'IOT_POLICY' THEN json_object('policyVersionIdentifier', json_object('policyName', f.resource_id)) "
           "WHEN 'THING' THEN json_object('thingName', f.resource_id) "
           "ELSE json_object('rotationRequestId', f.resource_id) END, 'additionalInfo', json(f.info)), "
           "'reasonForNonComplianceCode', f.reason_code, 'reasonForNonCompliance', " + reason + ", "
           "'isSuppressed', json(CASE WHEN f.suppressed THEN 'true' ELSE 'false' END)) "
           "FROM audit_findings f WHERE f.task_id = ?1 ORDER BY f.id";
  }();
  return sql;
}

constexpr std::string_view kFindingColumns =
    "id, task_id, check_name, severity, resource_type, resource_id, thing_name, reason_code, info, found_at, suppressed";

AuditFinding ReadFinding(const Statement& st) {
  AuditFinding f;
  f.id = st.Int(0);
  f.task_id = st.Text(1);
  f.check_name = st.Text(2);
  f.severity = st.Text(3);
  f.resource_type = st.Text(4);
  f.resource_id = st.Text(5);
  if (!st.IsNull(6)) f.thing_name = st.Text(6);
  f.reason_code = st.Text(7);
  f.info = nlohmann::json::parse(st.Text(8), nullptr, false);
  if (f.info.is_discarded()) f.info = nlohmann::json::object();
  f.found_at = Wall(st.Int(9));
  f.suppressed = st.Int(10) != 0;
  return f;
}

// "<started_at>.<id>": the position after which the next page starts.
// The rows of a SELECT of id, task_id, finding_id, action, result, detail, at.
Result<std::vector<MitigationRecord>> ReadMitigations(Statement& q) {
  std::vector<MitigationRecord> out;
  for (;;) {
    CF_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return out;
    out.push_back({q.Int(0), q.Text(1), q.Int(2), q.Text(3), q.Text(4), q.Text(5), Wall(q.Int(6))});
  }
}

bool ParseCursor(const std::string& cursor, int64_t* started_at, std::string* id) {
  auto pos = SplitPositionKey(cursor);
  if (!pos || !IsLowerHex(pos->rest, 32)) return false;
  *started_at = pos->seconds;
  *id = std::move(pos->rest);
  return true;
}

// An exclusive flock on "<registry>.audit-lock". The file is opened read-only (flock
// needs no write access), so certfleetctl run as root and the companion's own user can
// both take it whoever created it.
class FlockRunLock final : public AuditRunLock {
 public:
  explicit FlockRunLock(int fd) : fd_(fd) {}
  ~FlockRunLock() override { ::close(fd_); }

 private:
  int fd_;
};

class SqliteAuditStore final : public AuditStore {
 public:
  SqliteAuditStore(Database db, std::string lock_path) : db_(std::move(db)), lock_path_(std::move(lock_path)) {}

  Result<std::unique_ptr<AuditRunLock>> TryLockRun() override {
    const int fd = ::open(lock_path_.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return shared::Error(Code::kUnavailable, "open " + lock_path_ + ": " + std::strerror(errno));
    (void)::fchmod(fd, 0644);  // readable by both whatever the creator's umask (fails harmlessly if not ours)
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) return shared::Error(Code::kFailedPrecondition, "another audit is running");
      return shared::Error(Code::kUnavailable, "flock " + lock_path_ + ": " + std::strerror(err));
    }
    return std::unique_ptr<AuditRunLock>(std::make_unique<FlockRunLock>(fd));
  }

  Status CreateTask(const std::string& id, std::string_view task_type, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "INSERT INTO audit_tasks(id, task_type, status, started_at) VALUES (?1, ?2, 'IN_PROGRESS', ?3)"));
    q.Bind(1, id).Bind(2, task_type).Bind(3, Secs(now));
    return q.Run();
  }

  Status RunSqlChecks(const std::string& task_id, const std::vector<SqlCheckParams>& checks,
                      const std::function<void(std::string_view, const Status&)>& failed) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    std::map<std::string_view, int64_t> totals;  // by SQL text: checks that count the same set share it
    for (const SqlCheckParams& p : checks) {
      CF_ASSIGN_OR_RETURN(Statement savepoint, db_.Prepare("SAVEPOINT sql_check"));
      CF_RETURN_IF_ERROR(savepoint.Run());
      Status st = RunSqlCheckLocked(task_id, p, totals);
      if (st.ok()) {
        CF_ASSIGN_OR_RETURN(Statement release, db_.Prepare("RELEASE sql_check"));
        CF_RETURN_IF_ERROR(release.Run());
        continue;
      }
      CF_ASSIGN_OR_RETURN(Statement rollback, db_.Prepare("ROLLBACK TO sql_check"));
      CF_RETURN_IF_ERROR(rollback.Run());
      CF_ASSIGN_OR_RETURN(Statement release, db_.Prepare("RELEASE sql_check"));
      CF_RETURN_IF_ERROR(release.Run());
      CF_RETURN_IF_ERROR(RecordFailureLocked(task_id, p.check, st.ToString()));
      if (failed) failed(p.check, st);
    }
    return tx.Commit();
  }

  Result<AuditCheckSummary> RecordCheck(const std::string& task_id, std::string_view check, int64_t total,
                                        const std::vector<AuditFinding>& findings, WallTime now) override {
    const AuditCheckSpec* spec = FindAuditCheck(check);
    if (spec == nullptr) return shared::Error(Code::kInvalidArgument, "unknown check " + std::string(check));
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    CF_ASSIGN_OR_RETURN(int64_t before, LastFindingId());
    CF_ASSIGN_OR_RETURN(Statement ins, db_.Prepare(
        "INSERT INTO audit_findings(task_id, check_name, severity, resource_type, resource_id, thing_name, "
        "reason_code, info, found_at, suppressed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
        "EXISTS (SELECT 1 FROM audit_suppressions s WHERE s.check_name = ?2 AND s.resource_id = ?5 "
        "AND s.expires_at > ?9))"));
    for (const AuditFinding& f : findings) {
      ins.Bind(1, task_id).Bind(2, check).Bind(3, spec->severity).Bind(4, spec->resource_type);
      ins.Bind(5, f.resource_id).Bind(7, f.reason_code).Bind(8, f.info.dump()).Bind(9, Secs(now));
      if (f.thing_name.empty()) {
        ins.BindNull(6);
      } else {
        ins.Bind(6, f.thing_name);
      }
      CF_RETURN_IF_ERROR(ins.Run());
      CF_RETURN_IF_ERROR(ins.Reset());
    }
    AuditCheckSummary s;
    s.check_name = std::string(check);
    s.total = total;
    s.non_compliant = static_cast<int64_t>(findings.size());
    CF_ASSIGN_OR_RETURN(s.suppressed, CountSuppressed(task_id, check, before));
    CF_RETURN_IF_ERROR(PutResult(task_id, s));
    CF_RETURN_IF_ERROR(tx.Commit());
    return s;
  }

  Status RecordCheckFailure(const std::string& task_id, std::string_view check, const std::string& error) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "INSERT OR REPLACE INTO audit_check_results(task_id, check_name, run_status, error) "
        "VALUES (?1, ?2, 'FAILED', ?3)"));
    q.Bind(1, task_id).Bind(2, check).Bind(3, error);
    return q.Run();
  }

  Status FinishTask(const std::string& id, std::string_view status, const std::string& report_path,
                    const std::string& error, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "UPDATE audit_tasks SET status = ?2, ended_at = max(?3, started_at), report_path = NULLIF(?4, ''), "
        "error = NULLIF(?5, '') WHERE id = ?1 AND status = 'IN_PROGRESS'"));
    q.Bind(1, id).Bind(2, status).Bind(3, Secs(now)).Bind(4, report_path).Bind(5, error);
    CF_RETURN_IF_ERROR(q.Run());
    if (db_.Changes() != 1) return Status(Code::kFailedPrecondition, "audit task " + id + " is not in progress");
    return Status::Ok();
  }

  Result<int64_t> FailUnfinishedTasks(const std::string& error, WallTime now) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "UPDATE audit_tasks SET status = 'FAILED', ended_at = max(?1, started_at), error = ?2 "
        "WHERE status = 'IN_PROGRESS'"));
    q.Bind(1, Secs(now)).Bind(2, error);
    CF_RETURN_IF_ERROR(q.Run());
    return db_.Changes();
  }

  Result<std::optional<AuditTask>> FindTask(const std::string& id) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT id, task_type, status, started_at, ended_at, report_path, error FROM audit_tasks WHERE id = ?1"));
    q.Bind(1, id);
    CF_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return std::optional<AuditTask>();
    AuditTask t = ReadTask(q);
    CF_RETURN_IF_ERROR(FillChecks(t));
    return std::optional<AuditTask>(std::move(t));
  }

  Result<AuditTaskPage> ListTasks(const AuditTaskFilter& f) override {
    if (f.limit < 1 || f.limit > 1000) return shared::Error(Code::kInvalidArgument, "limit must be 1-1000");
    int64_t cursor_start = INT64_MAX;
    std::string cursor_id = "g";  // sorts after every hex id
    if (!f.cursor.empty() && !ParseCursor(f.cursor, &cursor_start, &cursor_id)) {
      return shared::Error(Code::kInvalidArgument, "malformed cursor");
    }
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT id, task_type, status, started_at, ended_at, report_path, error FROM audit_tasks "
        "WHERE (?1 = '' OR status = ?1) AND (?2 = '' OR task_type = ?2) AND started_at >= ?3 AND started_at < ?4 "
        "AND (started_at < ?5 OR (started_at = ?5 AND id < ?6)) ORDER BY started_at DESC, id DESC LIMIT ?7"));
    q.Bind(1, f.status).Bind(2, f.task_type);
    q.Bind(3, f.started_after ? Secs(*f.started_after) : INT64_MIN);
    q.Bind(4, f.started_before ? Secs(*f.started_before) : INT64_MAX);
    q.Bind(5, cursor_start).Bind(6, cursor_id).Bind(7, f.limit + 1);
    AuditTaskPage page;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      page.tasks.push_back(ReadTask(q));
    }
    if (static_cast<int64_t>(page.tasks.size()) > f.limit) {
      page.tasks.pop_back();
      const AuditTask& last = page.tasks.back();
      page.next_cursor = std::to_string(Secs(last.started_at)) + "." + last.id;
    }
    for (AuditTask& t : page.tasks) CF_RETURN_IF_ERROR(FillChecks(t));
    return page;
  }

  Result<std::vector<AuditFinding>> ListFindings(const std::string& task_id, int64_t after_id, int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT " + std::string(kFindingColumns) + " FROM audit_findings WHERE task_id = ?1 AND id > ?2 "
        "ORDER BY id LIMIT ?3"));
    q.Bind(1, task_id).Bind(2, after_id).Bind(3, limit);
    std::vector<AuditFinding> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      out.push_back(ReadFinding(q));
    }
    return out;
  }

  Status StreamFindingsJson(const std::string& task_id,
                            const std::function<Status(std::string_view)>& sink) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement t, db_.Prepare(
        "SELECT t.started_at, (SELECT f.found_at FROM audit_findings f WHERE f.task_id = t.id ORDER BY f.id LIMIT 1) "
        "FROM audit_tasks t WHERE t.id = ?1"));
    t.Bind(1, task_id);
    CF_ASSIGN_OR_RETURN(bool found, t.Step());
    if (!found) return Status(Code::kNotFound, "no audit task " + task_id);
    const std::string started = shared::FormatRfc3339(Wall(t.Int(0)));
    const int64_t usual = t.IsNull(1) ? 0 : t.Int(1);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(FindingJsonSql()));
    q.Bind(1, task_id).Bind(2, started).Bind(3, usual).Bind(4, shared::FormatRfc3339(Wall(usual)));
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      CF_RETURN_IF_ERROR(sink(q.Text(0)));
    }
    return Status::Ok();
  }

  Status RecordMitigation(const MitigationRecord& m) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "INSERT INTO mitigation_actions(task_id, finding_id, action, result, detail, at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
    q.Bind(1, m.task_id).Bind(2, m.finding_id).Bind(3, m.action).Bind(4, m.result).Bind(5, m.detail);
    q.Bind(6, Secs(m.at));
    Status st = q.Run();
    if (!st.ok() && st.message().find("suppressed") != std::string::npos) {
      return Status(Code::kFailedPrecondition, "no mitigation for a suppressed finding");
    }
    return st;
  }

  Result<std::vector<MitigationRecord>> ListMitigations(const std::string& task_id, int64_t after_id,
                                                        int64_t limit) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT id, task_id, finding_id, action, result, detail, at FROM mitigation_actions "
        "INDEXED BY mitigation_actions_by_task WHERE task_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"));
    q.Bind(1, task_id).Bind(2, after_id).Bind(3, limit);
    return ReadMitigations(q);
  }

  Result<std::vector<MitigationRecord>> ListMitigationsOfFindings(const std::string& task_id, int64_t after_finding,
                                                                  int64_t last_finding) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT id, task_id, finding_id, action, result, detail, at FROM mitigation_actions WHERE task_id = ?1 "
        "AND finding_id > ?2 AND finding_id <= ?3 ORDER BY id"));
    q.Bind(1, task_id).Bind(2, after_finding).Bind(3, last_finding);
    return ReadMitigations(q);
  }

  Status PutSuppression(const AuditSuppression& s) override {
    if (FindAuditCheck(s.check_name) == nullptr) return Status(Code::kInvalidArgument, "unknown check " + s.check_name);
    if (s.resource_id.empty() || s.resource_id.size() > 256) {
      return Status(Code::kInvalidArgument, "a suppressed resource is 1-256 characters");
    }
    if (s.expires_at <= s.created_at) return Status(Code::kInvalidArgument, "a suppression must expire in the future");
    if (s.description.size() > 1000) return Status(Code::kInvalidArgument, "description longer than 1000 bytes");
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "INSERT OR REPLACE INTO audit_suppressions(check_name, resource_id, created_at, expires_at, description, "
        "created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
    q.Bind(1, s.check_name).Bind(2, s.resource_id).Bind(3, Secs(s.created_at)).Bind(4, Secs(s.expires_at));
    q.Bind(5, s.description).Bind(6, s.created_by);
    return q.Run();
  }

  Result<std::vector<AuditSuppression>> ListSuppressions(WallTime now, bool include_expired) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT check_name, resource_id, created_at, expires_at, description, created_by FROM audit_suppressions "
        "WHERE ?1 OR expires_at > ?2 ORDER BY check_name, resource_id"));
    q.Bind(1, int64_t{include_expired ? 1 : 0}).Bind(2, Secs(now));
    std::vector<AuditSuppression> out;
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      out.push_back({q.Text(0), q.Text(1), Wall(q.Int(2)), Wall(q.Int(3)), q.Text(4), q.Text(5)});
    }
    return out;
  }

  Status DeleteSuppression(const std::string& check, const std::string& resource_id) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "DELETE FROM audit_suppressions WHERE check_name = ?1 AND resource_id = ?2"));
    q.Bind(1, check).Bind(2, resource_id);
    CF_RETURN_IF_ERROR(q.Run());
    if (db_.Changes() != 1) return Status(Code::kNotFound, "no suppression of " + check + " for " + resource_id);
    return Status::Ok();
  }

  Result<std::vector<std::string>> PruneTasks(WallTime before) override {
    std::lock_guard lock(mu_);
    CF_ASSIGN_OR_RETURN(Transaction tx, Transaction::Begin(db_));
    std::vector<std::string> paths;
    {
      CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
          "SELECT report_path FROM audit_tasks WHERE started_at < ?1 AND status <> 'IN_PROGRESS' "
          "AND report_path IS NOT NULL"));
      q.Bind(1, Secs(before));
      for (;;) {
        CF_ASSIGN_OR_RETURN(bool row, q.Step());
        if (!row) break;
        paths.push_back(q.Text(0));
      }
    }
    CF_ASSIGN_OR_RETURN(Statement d, db_.Prepare(
        "DELETE FROM audit_tasks WHERE started_at < ?1 AND status <> 'IN_PROGRESS'"));
    d.Bind(1, Secs(before));
    CF_RETURN_IF_ERROR(d.Run());
    CF_RETURN_IF_ERROR(tx.Commit());
    return paths;
  }

 private:
  static AuditTask ReadTask(const Statement& q) {
    AuditTask t;
    t.id = q.Text(0);
    t.task_type = q.Text(1);
    t.status = q.Text(2);
    t.started_at = Wall(q.Int(3));
    if (!q.IsNull(4)) t.ended_at = Wall(q.Int(4));
    if (!q.IsNull(5)) t.report_path = q.Text(5);
    if (!q.IsNull(6)) t.error = q.Text(6);
    return t;
  }

  Status FillChecks(AuditTask& t) {
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT check_name, run_status, total, non_compliant, suppressed, error FROM audit_check_results "
        "WHERE task_id = ?1 ORDER BY check_name"));
    q.Bind(1, t.id);
    for (;;) {
      CF_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      AuditCheckSummary s;
      s.check_name = q.Text(0);
      s.run_status = q.Text(1);
      s.total = q.Int(2);
      s.non_compliant = q.Int(3);
      s.suppressed = q.Int(4);
      if (!q.IsNull(5)) s.error = q.Text(5);
      t.checks.push_back(std::move(s));
    }
    return Status::Ok();
  }

  Status RunSqlCheckLocked(const std::string& task_id, const SqlCheckParams& p,
                           std::map<std::string_view, int64_t>& totals) {
    const CheckSql* sql = FindSqlCheck(p.check);
    const AuditCheckSpec* spec = FindAuditCheck(p.check);
    if (sql == nullptr || spec == nullptr) {
      return Status(Code::kInvalidArgument, std::string(p.check) + " is not a database check");
    }
    // Every statement names ?1..?8 (the unused ones in a no-op condition), so all bind.
    auto bind = [&](Statement& st) {
      st.Bind(1, task_id).Bind(2, Secs(p.now)).Bind(3, Secs(p.bound)).Bind(4, p.min_rsa_bits);
      st.Bind(5, p.min_ec_bits).Bind(6, p.check).Bind(7, spec->severity).Bind(8, spec->resource_type);
    };
    CF_ASSIGN_OR_RETURN(int64_t before, LastFindingId());
    const std::string insert =
        "WITH r(rid, thing, code, info) AS (" + std::string(sql->findings) + ") "
        "INSERT INTO audit_findings(task_id, check_name, severity, resource_type, resource_id, thing_name, "
        "reason_code, info, found_at, suppressed) SELECT ?1, ?6, ?7, ?8, r.rid, r.thing, r.code, r.info, ?2, "
        "EXISTS (SELECT 1 FROM audit_suppressions s WHERE s.check_name = ?6 AND s.resource_id = r.rid "
        "AND s.expires_at > ?2) FROM r WHERE ?3 = ?3 AND ?4 = ?4 AND ?5 = ?5";
    CF_ASSIGN_OR_RETURN(Statement ins, db_.Prepare(insert));
    bind(ins);
    CF_RETURN_IF_ERROR(ins.Run());
    AuditCheckSummary s;
    s.check_name = std::string(p.check);
    s.non_compliant = db_.Changes();
    auto cached = totals.find(sql->total);
    if (cached != totals.end()) {
      s.total = cached->second;
    } else {
      CF_ASSIGN_OR_RETURN(Statement total, db_.Prepare(
          "SELECT (" + std::string(sql->total) + ") WHERE ?1 = ?1 AND ?2 = ?2 AND ?3 = ?3 AND ?4 = ?4 AND ?5 = ?5 "
          "AND ?6 = ?6 AND ?7 = ?7 AND ?8 = ?8"));
      bind(total);
      CF_ASSIGN_OR_RETURN(bool row, total.Step());
      s.total = row ? total.Int(0) : 0;
      totals.emplace(sql->total, s.total);
    }
    CF_ASSIGN_OR_RETURN(s.suppressed, CountSuppressed(task_id, p.check, before));
    return PutResult(task_id, s);
  }

  Status RecordFailureLocked(const std::string& task_id, std::string_view check, const std::string& error) {
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "INSERT OR REPLACE INTO audit_check_results(task_id, check_name, run_status, error) "
        "VALUES (?1, ?2, 'FAILED', ?3)"));
    q.Bind(1, task_id).Bind(2, check).Bind(3, error);
    return q.Run();
  }

  Result<int64_t> LastFindingId() {
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare("SELECT COALESCE(MAX(id), 0) FROM audit_findings"));
    CF_ASSIGN_OR_RETURN(bool row, q.Step());
    return row ? q.Int(0) : 0;
  }

  // The suppressed findings a check just inserted: its rows all have ids above `after`
  // (INTEGER PRIMARY KEY, so a rowid range scan, no index of its own).
  Result<int64_t> CountSuppressed(const std::string& task_id, std::string_view check, int64_t after) {
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "SELECT COUNT(*) FROM audit_findings WHERE id > ?3 AND task_id = ?1 AND check_name = ?2 AND suppressed = 1"));
    q.Bind(1, task_id).Bind(2, check).Bind(3, after);
    CF_ASSIGN_OR_RETURN(bool row, q.Step());
    return row ? q.Int(0) : 0;
  }

  Status PutResult(const std::string& task_id, AuditCheckSummary& s) {
    s.run_status = s.non_compliant > 0 ? "COMPLETED_NON_COMPLIANT" : "COMPLETED_COMPLIANT";
    CF_ASSIGN_OR_RETURN(Statement q, db_.Prepare(
        "INSERT OR REPLACE INTO audit_check_results(task_id, check_name, run_status, total, non_compliant, suppressed) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)"));
    q.Bind(1, task_id).Bind(2, s.check_name).Bind(3, s.run_status).Bind(4, s.total).Bind(5, s.non_compliant);
    q.Bind(6, s.suppressed);
    return q.Run();
  }

  std::mutex mu_;
  Database db_;
  const std::string lock_path_;
};

}  // namespace

Result<std::unique_ptr<AuditStore>> OpenSqliteAuditStore(const std::string& path) {
  CF_ASSIGN_OR_RETURN(Database db, Database::Open(path));
  CF_ASSIGN_OR_RETURN(Statement probe, db.Prepare("SELECT 1 FROM audit_tasks LIMIT 1"));
  (void)probe;
  return std::unique_ptr<AuditStore>(std::make_unique<SqliteAuditStore>(std::move(db), path + ".audit-lock"));
}

}  // namespace certfleet::companion
