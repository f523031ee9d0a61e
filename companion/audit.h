// The audit engine (docs/audit.md): Device Defender-style certificate audits of the whole
// fleet, their reports, suppressions and mitigations.
//
// This is what the operator API serves: `POST /start-audit` is StartAudit, `GET
// /list-audits` is ListAuditTasks (filters, cursor pagination), `GET
// /get-audit-status/{task_id}` is AuditReportJson (the task's status, per-check summary
// and findings, in the JSON shape of REFERENCE.md section 3). certfleetctl's local mode
// and the companion's scheduler call the same methods.
//
// Storage is an AuditStore (SQLite behind it, in the registry's database file): every
// mutation is one durable transaction and the invariants (one result per check and task,
// no mitigation for a suppressed finding, a finished task has an end time) are database
// constraints. Checks never parse certificates: they are SQL scans over indexes of the
// key facts recorded at issuance, and findings are inserted by the database itself, so
// an audit's memory does not grow with the fleet.
//
// Thread-safety: AuditEngine's methods may be called from several threads; audits run
// one at a time (a second StartAudit waits for the first).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "companion/audit_config.h"
#include "companion/registry.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/core/status.h"

namespace certfleet::companion {

inline constexpr std::string_view kTaskOnDemand = "ON_DEMAND_AUDIT_TASK";
inline constexpr std::string_view kTaskScheduled = "SCHEDULED_AUDIT_TASK";

struct AuditCheckSummary {
  std::string check_name;
  std::string run_status;  // IN_PROGRESS, COMPLETED_COMPLIANT, COMPLETED_NON_COMPLIANT, FAILED
  int64_t total = 0;           // totalResourcesCount
  int64_t non_compliant = 0;   // nonCompliantResourcesCount (suppressed ones included)
  int64_t suppressed = 0;      // suppressedNonCompliantResourcesCount
  std::string error;
};

struct AuditTask {
  std::string id;         // 32 lowercase hex
  std::string task_type;  // kTaskOnDemand, kTaskScheduled
  std::string status;     // IN_PROGRESS, COMPLETED, FAILED, CANCELED
  shared::WallTime started_at;
  std::optional<shared::WallTime> ended_at;
  std::string report_path;  // "" until written
  std::string error;
  std::vector<AuditCheckSummary> checks;
};

struct AuditFinding {
  int64_t id = 0;
  std::string task_id;
  std::string check_name;
  std::string severity;
  std::string resource_type;
  std::string resource_id;  // certificate id, CA fingerprint, policy name, thing, rotation id
  std::string thing_name;   // "" when the finding names no thing
  std::string reason_code;
  nlohmann::json info = nlohmann::json::object();  // additionalInfo
  shared::WallTime found_at;
  bool suppressed = false;
};

struct MitigationRecord {
  int64_t id = 0;
  std::string task_id;
  int64_t finding_id = 0;
  std::string action;
  std::string result;  // SUCCEEDED, FAILED, SKIPPED
  std::string detail;
  shared::WallTime at;
};

struct AuditSuppression {
  std::string check_name;
  std::string resource_id;
  shared::WallTime created_at;
  shared::WallTime expires_at;
  std::string description;
  std::string created_by;
};

struct AuditTaskFilter {
  std::string status;     // "" = any
  std::string task_type;  // "" = any
  std::optional<shared::WallTime> started_after;
  std::optional<shared::WallTime> started_before;
  std::string cursor;     // from a previous page's next_cursor; "" = newest first
  int64_t limit = 50;     // 1-1000
};

struct AuditTaskPage {
  std::vector<AuditTask> tasks;  // newest first, checks filled
  std::string next_cursor;       // "" when there is no more
};

// What a database-backed check scans for (the thresholds resolved to instants).
struct SqlCheckParams {
  std::string_view check;
  shared::WallTime now;
  shared::WallTime bound;  // expiry/age/not-seen/leftover bound, per check
  int64_t min_rsa_bits = 2048;
  int64_t min_ec_bits = 256;
};

// The audit tables. Thread-safe.
// Held while one audit runs; released when destroyed, or when its process dies.
class AuditRunLock {
 public:
  virtual ~AuditRunLock() = default;
};

class AuditStore {
 public:
  virtual ~AuditStore() = default;
  // One audit at a time per registry, across processes (the companion and certfleetctl's
  // local mode): kFailedPrecondition while another holds the lock.
  virtual Result<std::unique_ptr<AuditRunLock>> TryLockRun() = 0;
  // kAlreadyExists on a duplicate id.
  virtual Status CreateTask(const std::string& id, std::string_view task_type, shared::WallTime now) = 0;
  // Runs one database-backed check of the task in one transaction: its findings (marked
  // suppressed under an unexpired suppression) and its result row. kInvalidArgument for a
  // check that is not database-backed.
  // Runs the database checks in one transaction (one commit for the whole scan). A check
  // whose statement fails is recorded FAILED (and passed to `failed`) and the others go on;
  // an error is returned only when the transaction itself fails.
  virtual Status RunSqlChecks(const std::string& task_id, const std::vector<SqlCheckParams>& checks,
                              const std::function<void(std::string_view check, const Status& error)>& failed) = 0;
  // Records a check computed outside the database (CA files, broker policies): `total`
  // resources, `findings` (suppression marks applied here), one transaction.
  virtual Result<AuditCheckSummary> RecordCheck(const std::string& task_id, std::string_view check, int64_t total,
                                                const std::vector<AuditFinding>& findings,
                                                shared::WallTime now) = 0;
  virtual Status RecordCheckFailure(const std::string& task_id, std::string_view check, const std::string& error) = 0;
  // IN_PROGRESS -> `status` with its end time. kFailedPrecondition if not IN_PROGRESS.
  virtual Status FinishTask(const std::string& id, std::string_view status, const std::string& report_path,
                            const std::string& error, shared::WallTime now) = 0;
  // Every IN_PROGRESS task -> FAILED with `error` (a companion that stopped mid-audit).
  // Returns how many.
  virtual Result<int64_t> FailUnfinishedTasks(const std::string& error, shared::WallTime now) = 0;
  virtual Result<std::optional<AuditTask>> FindTask(const std::string& id) = 0;
  virtual Result<AuditTaskPage> ListTasks(const AuditTaskFilter& filter) = 0;
  // Findings of a task in id order after `after_id`, at most `limit`.
  virtual Result<std::vector<AuditFinding>> ListFindings(const std::string& task_id, int64_t after_id,
                                                         int64_t limit) = 0;
  // Calls `sink` with each finding of the task, in id order, as the JSON object of
  // REFERENCE.md section 3 (built by the database, one statement); stops at the first
  // error `sink` returns.
  virtual Status StreamFindingsJson(const std::string& task_id,
                                    const std::function<Status(std::string_view)>& sink) = 0;
  // kFailedPrecondition for a suppressed finding (a database trigger).
  virtual Status RecordMitigation(const MitigationRecord& record) = 0;
  // Mitigations of a task in id order after `after_id`, at most `limit`.
  virtual Result<std::vector<MitigationRecord>> ListMitigations(const std::string& task_id, int64_t after_id,
                                                                int64_t limit) = 0;
  // The mitigations of findings with after_finding < finding id <= last_finding, in id order.
  virtual Result<std::vector<MitigationRecord>> ListMitigationsOfFindings(const std::string& task_id,
                                                                          int64_t after_finding,
                                                                          int64_t last_finding) = 0;
  // Creates or replaces. kInvalidArgument for an unknown check, an empty resource or an
  // expiry not after creation.
  virtual Status PutSuppression(const AuditSuppression& s) = 0;
  // Unexpired at `now` unless include_expired; by check, resource.
  virtual Result<std::vector<AuditSuppression>> ListSuppressions(shared::WallTime now, bool include_expired) = 0;
  // kNotFound when there is none.
  virtual Status DeleteSuppression(const std::string& check, const std::string& resource_id) = 0;
  // Deletes finished tasks that started before `before` (with their results, findings
  // and mitigations) and returns their report paths.
  virtual Result<std::vector<std::string>> PruneTasks(shared::WallTime before) = 0;
};

// Opens the audit tables in the registry database at `path`; the registry must have been
// opened (and so migrated) first.
Result<std::unique_ptr<AuditStore>> OpenSqliteAuditStore(const std::string& path);

// Where NOTIFY mitigations go: an MQTT publish on the operator topic and the post-audit
// hook. Either may be empty.
struct AuditNotifier {
  std::function<Status(const std::string& topic, const std::string& payload)> publish;
  // Runs (or queues) the post_audit hook; an error (the hook failed, or its queue is
  // full) makes the NOTIFY action FAILED.
  std::function<Status(const nlohmann::json& input)> hook;
};

struct AuditEngineOptions {
  AuditConfig config;
  std::string root_ca_file;     // CA checks
  std::string issuing_ca_file;
  std::string mqtt_client_id = "certfleet-companion";  // exempt from the policy check
  // Called after quarantines change, to push the broker's quarantine list; may be empty.
  std::function<Status()> quarantine_changed;
};

class AuditEngine {
 public:
  // Everything passed must outlive the engine.
  AuditEngine(AuditEngineOptions options, Registry& registry, AuditStore& store, shared::Filesystem& fs,
              const shared::Clock& clock, shared::Logger& log, AuditNotifier notifier = {});
  ~AuditEngine();
  AuditEngine(const AuditEngine&) = delete;
  AuditEngine& operator=(const AuditEngine&) = delete;

  // Runs an audit of `checks` (every enabled check when empty) now, to the end: findings,
  // report file, mitigations, retention pruning. Returns the task id; the task records
  // whether it COMPLETED or FAILED. kInvalidArgument for an unknown check name, or no check to run.
  Result<std::string> StartAudit(const std::vector<std::string>& checks, std::string_view task_type = kTaskOnDemand);
  // Creates the task (IN_PROGRESS) and returns its id at once; the audit runs on the
  // engine's thread (Start must have been called). kInvalidArgument as for StartAudit.
  Result<std::string> QueueAudit(const std::vector<std::string>& checks);
  // Marks tasks a stopped companion left IN_PROGRESS as FAILED. Call once at start-up,
  // before Start, from the process that runs audits.
  Status FailInterruptedTasks();
  // Called after every audit with the task as it ended (metrics); may be empty.
  void SetObserver(std::function<void(const AuditTask&)> observer) { observer_ = std::move(observer); }
  Result<AuditTaskPage> ListAuditTasks(const AuditTaskFilter& filter);
  Result<std::optional<AuditTask>> GetAuditTask(const std::string& id);
  // The report: {"taskId", "taskStatus", "taskType", "taskStartTime", "taskEndTime",
  // "auditDetails": {check: {checkRunStatus, totalResourcesCount, nonCompliantResourcesCount,
  // suppressedNonCompliantResourcesCount}}, "findings": [...], "mitigationActions": [...]}.
  // kNotFound for an unknown task.
  Result<nlohmann::json> AuditReportJson(const std::string& id);
  // One page of the report, for the API: the same header, at most `limit` findings after
  // finding id `after_finding`, and the mitigations of those findings. `next_after` is set
  // when more findings follow. kNotFound for an unknown task.
  struct ReportPage {
    nlohmann::json report;
    std::optional<int64_t> next_after;
  };
  Result<ReportPage> AuditReportPage(const std::string& id, int64_t after_finding, int64_t limit);

  Status Suppress(const AuditSuppression& s);
  Result<std::vector<AuditSuppression>> ListSuppressions(bool include_expired);
  Status Unsuppress(const std::string& check, const std::string& resource_id);

  // Scheduled and queued audits on a thread of their own, per config.schedule.
  void Start();
  void Stop();

 private:
  Result<std::vector<std::string>> ResolveChecks(const std::vector<std::string>& requested) const;
  // Runs a created task to its end (COMPLETED or FAILED) and prunes.
  void RunTask(const std::string& task_id, const std::vector<std::string>& checks);
  Status RunChecks(const std::string& task_id, const std::vector<std::string>& checks);
  Status RunCaChecks(const std::string& task_id, const std::vector<std::string>& checks);
  Status RunPolicyCheck(const std::string& task_id);
  Status Mitigate(const std::string& task_id);
  // True: applied; false: skipped (`detail` says why); an error: FAILED.
  Result<bool> ApplyAction(const AuditFinding& finding, shared::WallTime task_start, std::string_view action,
                           std::string* detail, bool* quarantined);
  Result<std::string> WriteReport(const std::string& task_id, shared::WallTime ended);
  // Every mitigation of the task in id order, a page at a time.
  Status ForEachMitigation(const std::string& task_id, const std::function<Status(const MitigationRecord&)>& sink);
  void Prune();
  void Loop();

  AuditEngineOptions options_;
  Registry& registry_;
  AuditStore& store_;
  shared::Filesystem& fs_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  AuditNotifier notifier_;

  std::mutex run_mu_;  // one audit at a time
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::deque<std::pair<std::string, std::vector<std::string>>> queue_;  // queued task ids and checks
  std::function<void(const AuditTask&)> observer_;
  std::thread thread_;
};

struct CompanionConfig;
// The engine options companion.toml gives ([audit], ca.*, mqtt.client_id).
AuditEngineOptions AuditOptionsFromConfig(const CompanionConfig& config);

// A fresh task id: 32 lowercase hex from 128 random bits.
Result<std::string> NewAuditTaskId();

}  // namespace certfleet::companion
