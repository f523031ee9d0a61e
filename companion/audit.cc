#include "companion/audit.h"

#include <fcntl.h>
#include <unistd.h>


#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "companion/audit_policy.h"
#include "companion/broker_config.h"
#include "companion/config.h"
#include "companion/operations.h"
#include "companion/rotation_coordinator.h"
#include "shared/x509/cert.h"
#include "shared/x509/key_facts.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
using shared::WallTime;
using nlohmann::json;

namespace {

constexpr int64_t kPage = 500;

std::string_view ReasonText(std::string_view code) {
  for (const auto& [c, text] : AuditReasonTexts()) {
    if (c == code) return text;
  }
  return "";
}

json ResourceIdentifier(const AuditFinding& f) {
  if (f.resource_type == "DEVICE_CERTIFICATE") return {{"deviceCertificateId", f.resource_id}};
  if (f.resource_type == "CA_CERTIFICATE") return {{"caCertificateId", f.resource_id}};
  if (f.resource_type == "IOT_POLICY") return {{"policyVersionIdentifier", {{"policyName", f.resource_id}}}};
  if (f.resource_type == "THING") return {{"thingName", f.resource_id}};
  return {{"rotationRequestId", f.resource_id}};
}

json FindingJson(const AuditFinding& f, WallTime task_start) {
  return {{"findingId", f.task_id + "-" + std::to_string(f.id)},
          {"taskId", f.task_id},
          {"checkName", f.check_name},
          {"taskStartTime", shared::FormatRfc3339(task_start)},
          {"findingTime", shared::FormatRfc3339(f.found_at)},
          {"severity", f.severity},
          {"nonCompliantResource",
           {{"resourceType", f.resource_type}, {"resourceIdentifier", ResourceIdentifier(f)}, {"additionalInfo", f.info}}},
          {"reasonForNonComplianceCode", f.reason_code},
          {"reasonForNonCompliance", ReasonText(f.reason_code)},
          {"isSuppressed", f.suppressed}};
}

json MitigationJson(const MitigationRecord& m) {
  return {{"findingId", m.task_id + "-" + std::to_string(m.finding_id)},
          {"actionName", m.action},
          {"status", m.result},
          {"message", m.detail},
          {"time", shared::FormatRfc3339(m.at)}};
}

json TaskHeader(const AuditTask& t) {
  json details = json::object();
  for (const AuditCheckSummary& c : t.checks) {
    json d = {{"checkRunStatus", c.run_status},
              {"checkCompliant", c.run_status == "COMPLETED_COMPLIANT"},
              {"totalResourcesCount", c.total},
              {"nonCompliantResourcesCount", c.non_compliant},
              {"suppressedNonCompliantResourcesCount", c.suppressed}};
    if (!c.error.empty()) d["message"] = c.error;
    details[c.check_name] = std::move(d);
  }
  json j = {{"taskId", t.id},
            {"taskStatus", t.status},
            {"taskType", t.task_type},
            {"taskStartTime", shared::FormatRfc3339(t.started_at)},
            {"auditDetails", std::move(details)}};
  if (t.ended_at) j["taskEndTime"] = shared::FormatRfc3339(*t.ended_at);
  if (!t.error.empty()) j["message"] = t.error;
  return j;
}

// A report file written as a stream: temp file created O_EXCL with its final mode,
// written, fsync'd, renamed over the target, directory fsync'd.
class StreamingAtomicFile {
 public:
  ~StreamingAtomicFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  Status Open(const std::string& path, mode_t mode) {
    path_ = path;
    tmp_ = path + ".tmp";
    ::unlink(tmp_.c_str());  // a stray from a crash
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd_ < 0) return Errno("create " + tmp_);
    return Status::Ok();
  }
  Status Write(std::string_view data) {
    buf_.append(data);
    return buf_.size() >= (1 << 16) ? Flush() : Status::Ok();
  }
  Status Commit() {
    CF_RETURN_IF_ERROR(Flush());
    if (::fsync(fd_) != 0) return Errno("fsync " + tmp_);
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      Status st = Errno("rename " + tmp_);
      ::unlink(tmp_.c_str());
      return st;
    }
    const std::string dir = shared::DirName(path_);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
    return Status::Ok();
  }

 private:
  static Status Errno(const std::string& what) { return Status(Code::kInternal, what + ": " + std::strerror(errno)); }
  Status Flush() {
    size_t off = 0;
    while (off < buf_.size()) {
      const ssize_t n = ::write(fd_, buf_.data() + off, buf_.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Errno("write " + tmp_);
      }
      off += static_cast<size_t>(n);
    }
    buf_.clear();
    return Status::Ok();
  }

  std::string path_;
  std::string tmp_;
  std::string buf_;
  int fd_ = -1;
};

bool IsSqlCheck(std::string_view c) {
  return c != kCheckCaCertExpiring && c != kCheckCaKeyQuality && c != kCheckPolicyPermissive;
}

}  // namespace

AuditEngineOptions AuditOptionsFromConfig(const CompanionConfig& config) {
  AuditEngineOptions o;
  o.config = config.audit;
  // "Not seen for longer than its rotation deadline": unless set, the window is the
  // fleet's rotation deadline.
  auto& not_seen = o.config.checks[std::string(kCheckAgentNotSeen)];
  if (!not_seen.threshold) not_seen.threshold = config.rotation.default_deadline;
  o.root_ca_file = config.ca.root_cert_file;
  o.issuing_ca_file = config.ca.issuing_cert_file;
  o.mqtt_client_id = config.mqtt.client_id;
  return o;
}

Result<std::string> NewAuditTaskId() { return shared::RandomHex(16); }

AuditEngine::AuditEngine(AuditEngineOptions options, Registry& registry, AuditStore& store, shared::Filesystem& fs,
                         const shared::Clock& clock, shared::Logger& log, AuditNotifier notifier)
    : options_(std::move(options)),
      registry_(registry),
      store_(store),
      fs_(fs),
      clock_(clock),
      log_(log),
      notifier_(std::move(notifier)) {}

AuditEngine::~AuditEngine() { Stop(); }

Result<std::vector<std::string>> AuditEngine::ResolveChecks(const std::vector<std::string>& requested) const {
  std::vector<std::string> checks;
  for (const std::string& c : requested) {
    if (FindAuditCheck(c) == nullptr) {
      return shared::Error(Code::kInvalidArgument, "unknown check '" + c.substr(0, 80) + "'");
    }
    if (std::find(checks.begin(), checks.end(), c) == checks.end()) checks.push_back(c);
  }
  if (checks.empty()) {
    for (const AuditCheckSpec& spec : AuditChecks()) {
      if (options_.config.For(spec.name).enabled) checks.emplace_back(spec.name);
    }
    if (checks.empty()) return shared::Error(Code::kInvalidArgument, "every check is disabled and none was named");
  }
  return checks;
}

Result<std::string> AuditEngine::StartAudit(const std::vector<std::string>& requested, std::string_view task_type) {
  if (task_type != kTaskOnDemand && task_type != kTaskScheduled) {
    return shared::Error(Code::kInvalidArgument, "unknown task type");
  }
  CF_ASSIGN_OR_RETURN(std::vector<std::string> checks, ResolveChecks(requested));
  std::lock_guard run(run_mu_);
  CF_ASSIGN_OR_RETURN(std::unique_ptr<AuditRunLock> held, store_.TryLockRun());
  CF_ASSIGN_OR_RETURN(std::string id, NewAuditTaskId());
  CF_RETURN_IF_ERROR(store_.CreateTask(id, task_type, clock_.Now()));
  RunTask(id, checks);
  return id;
}

Result<std::string> AuditEngine::QueueAudit(const std::vector<std::string>& requested) {
  CF_ASSIGN_OR_RETURN(std::vector<std::string> checks, ResolveChecks(requested));
  std::lock_guard lock(mu_);
  if (!thread_.joinable() || stopping_) {
    return shared::Error(Code::kUnavailable, "the audit engine is not running");
  }
  CF_ASSIGN_OR_RETURN(std::string id, NewAuditTaskId());
  CF_RETURN_IF_ERROR(store_.CreateTask(id, kTaskOnDemand, clock_.Now()));
  queue_.emplace_back(id, std::move(checks));
  cv_.notify_all();
  return id;
}

Status AuditEngine::FailInterruptedTasks() {
  // While another process holds the run lock its task is alive: leave every task alone.
  auto held = store_.TryLockRun();
  if (!held && held.error().code() == Code::kFailedPrecondition) {
    log_.Info("another process is running an audit; unfinished tasks left as they are");
    return Status::Ok();
  }
  if (!held) return held.error();
  CF_ASSIGN_OR_RETURN(int64_t n, store_.FailUnfinishedTasks("the audit's process stopped before the audit ended",
                                                            clock_.Now()));
  if (n > 0) log_.Warn("interrupted audits marked FAILED", {{"count", std::to_string(n)}});
  return Status::Ok();
}

void AuditEngine::RunTask(const std::string& id, const std::vector<std::string>& checks) {
  log_.Info("audit started", {{"task", id}, {"checks", std::to_string(checks.size())}});
  auto phase_start = std::chrono::steady_clock::now();
  auto phase_done = [&](const char* phase) {
    const auto now = std::chrono::steady_clock::now();
    log_.Debug("audit phase done", {{"task", id}, {"phase", phase},
                                    {"ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               now - phase_start).count())}});
    phase_start = now;
  };
  Status st = RunChecks(id, checks);
  phase_done("checks");
  if (st.ok()) st = Mitigate(id);
  phase_done("mitigations");
  // The report says how the task ended: it is written with the end time FinishTask then
  // records, and a report that cannot be written fails the task.
  std::string report;
  const WallTime ended = clock_.Now();
  if (st.ok()) {
    auto written = WriteReport(id, ended);
    if (written) {
      report = *written;
    } else {
      st = written.error();
    }
  }
  phase_done("report");
  Status fin = store_.FinishTask(id, st.ok() ? "COMPLETED" : "FAILED", report, st.ok() ? "" : st.ToString(), ended);
  if (!fin.ok()) log_.Error("audit task not finished", {{"task", id}, {"error", fin.ToString()}});
  log_.Info("audit finished", {{"task", id}, {"ok", st.ok() ? "true" : "false"}, {"report", report}});
  if (observer_) {
    auto task = store_.FindTask(id);
    if (task && *task) observer_(**task);
  }
  Prune();
}

Status AuditEngine::RunChecks(const std::string& task_id, const std::vector<std::string>& checks) {
  const WallTime now = clock_.Now();
  const auto timed = [&](std::string_view what, std::chrono::steady_clock::time_point began) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - began);
    log_.Debug("audit check ran", {{"task", task_id}, {"check", std::string(what)}, {"ms", std::to_string(ms.count())}});
  };
  // The checks of files and configuration first, each on its own; then the database
  // checks, all in one transaction.
  std::vector<SqlCheckParams> sql;
  for (const std::string& check : checks) {
    const AuditCheckConfig cfg = options_.config.For(check);
    if (IsSqlCheck(check)) {
      SqlCheckParams p;
      p.check = check;
      p.now = now;
      p.bound = check == kCheckDeviceCertExpiring ? now + *cfg.threshold : now - *cfg.threshold;
      p.min_rsa_bits = cfg.min_rsa_bits;
      p.min_ec_bits = cfg.min_ec_bits;
      sql.push_back(p);
      continue;
    }
    const auto began = std::chrono::steady_clock::now();
    Status st = check == kCheckPolicyPermissive ? RunPolicyCheck(task_id) : RunCaChecks(task_id, {check});
    if (!st.ok()) {
      log_.Warn("audit check failed", {{"task", task_id}, {"check", check}, {"error", st.ToString()}});
      CF_RETURN_IF_ERROR(store_.RecordCheckFailure(task_id, check, st.ToString()));
    }
    timed(check, began);
  }
  if (sql.empty()) return Status::Ok();
  const auto began = std::chrono::steady_clock::now();
  CF_RETURN_IF_ERROR(store_.RunSqlChecks(task_id, sql, [&](std::string_view check, const Status& st) {
    log_.Warn("audit check failed", {{"task", task_id}, {"check", std::string(check)}, {"error", st.ToString()}});
  }));
  timed("database checks", began);
  return Status::Ok();
}

Status AuditEngine::RunCaChecks(const std::string& task_id, const std::vector<std::string>& checks) {
  const WallTime now = clock_.Now();
  std::vector<std::pair<std::string, shared::X509Ptr>> cas;
  for (const std::string& file : {options_.root_ca_file, options_.issuing_ca_file}) {
    if (file.empty()) continue;
    CF_ASSIGN_OR_RETURN(std::string pem, fs_.ReadFile(file, 1 << 20));
    CF_ASSIGN_OR_RETURN(std::vector<shared::X509Ptr> certs, shared::CertsFromPem(pem));
    for (auto& c : certs) {
      const std::string id = shared::CertFingerprint(c.get());
      const bool dup = std::any_of(cas.begin(), cas.end(), [&](const auto& e) { return shared::CertFingerprint(e.second.get()) == id; });
      if (!dup) cas.emplace_back(file, std::move(c));
    }
  }
  for (const std::string& check : checks) {
    const AuditCheckConfig cfg = options_.config.For(check);
    std::vector<AuditFinding> findings;
    for (const auto& [file, cert] : cas) {
      const shared::CertInfo info = shared::DescribeCert(cert.get());
      AuditFinding f;
      f.resource_id = info.id;
      f.info = {{"file", file}, {"subject", info.subject}, {"notAfter", shared::FormatRfc3339(info.not_after)}};
      if (check == kCheckCaCertExpiring) {
        if (info.not_after >= now + *cfg.threshold) continue;
        f.reason_code = info.not_after <= now ? "CERTIFICATE_PAST_EXPIRATION" : "CERTIFICATE_APPROACHING_EXPIRATION";
      } else {
        const shared::KeyFacts k = shared::DeriveKeyFacts(cert.get());
        f.info["keyType"] = k.key_type;
        f.info["keyBits"] = k.key_bits;
        f.info["signatureHash"] = k.sig_hash;
        const bool weak_hash = k.sig_hash == "MD2" || k.sig_hash == "MD4" || k.sig_hash == "MD5" || k.sig_hash == "SHA1";
        if (k.roca) {
          f.reason_code = "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361";
        } else if (k.key_type != "RSA" && k.key_type != "EC" && k.key_type != "ED25519" && k.key_type != "ED448") {
          f.reason_code = "CERTIFICATE_KEY_TYPE_NOT_ALLOWED";
        } else if (weak_hash) {
          f.reason_code = "CERTIFICATE_WEAK_SIGNATURE_ALGORITHM";
        } else if ((k.key_type == "RSA" && k.key_bits < cfg.min_rsa_bits) ||
                   (k.key_type == "EC" && k.key_bits < cfg.min_ec_bits)) {
          f.reason_code = "CERTIFICATE_KEY_TOO_SHORT";
        } else {
          continue;
        }
      }
      findings.push_back(std::move(f));
    }
    auto recorded = store_.RecordCheck(task_id, check, static_cast<int64_t>(cas.size()), findings, now);
    if (!recorded) return recorded.error();
  }
  return Status::Ok();
}

Status AuditEngine::RunPolicyCheck(const std::string& task_id) {
  std::vector<std::pair<std::string, std::string>> policies;  // name, ACL text
  if (options_.config.policy_files.empty()) {
    policies.emplace_back("things.acl", ThingsAcl(options_.mqtt_client_id));
    policies.emplace_back("claim.acl", ClaimAcl());
  } else {
    for (const std::string& file : options_.config.policy_files) {
      CF_ASSIGN_OR_RETURN(std::string text, fs_.ReadFile(file, 4 << 20));
      policies.emplace_back(file, std::move(text));
    }
  }
  std::vector<AuditFinding> findings;
  for (const auto& [name, text] : policies) {
    std::vector<PermissiveGrant> grants = FindPermissiveAclGrants(text, options_.mqtt_client_id);
    if (grants.empty()) continue;
    AuditFinding f;
    f.resource_id = name;
    f.reason_code = "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS";
    json lines = json::array();
    for (const auto& g : grants) lines.push_back({{"line", g.line}, {"user", g.user}, {"grant", g.grant}});
    f.info = {{"grants", std::move(lines)}};
    findings.push_back(std::move(f));
  }
  auto recorded = store_.RecordCheck(task_id, kCheckPolicyPermissive, static_cast<int64_t>(policies.size()), findings,
                                     clock_.Now());
  return recorded ? Status::Ok() : recorded.error();
}

Status AuditEngine::Mitigate(const std::string& task_id) {
  bool any_action = false;
  for (const auto& [name, cfg] : options_.config.checks) any_action = any_action || !cfg.mitigations.empty();
  if (!any_action) return Status::Ok();
  CF_ASSIGN_OR_RETURN(std::optional<AuditTask> task, store_.FindTask(task_id));
  if (!task) return Status(Code::kNotFound, "no audit task " + task_id);
  bool quarantined = false;
  // An action that was applied but could not be recorded fails the task, after the
  // other findings had theirs: one busy write does not leave the rest unmitigated.
  Status unrecorded;
  int64_t after = 0;
  for (;;) {
    CF_ASSIGN_OR_RETURN(std::vector<AuditFinding> page, store_.ListFindings(task_id, after, kPage));
    if (page.empty()) break;
    after = page.back().id;
    for (const AuditFinding& f : page) {
      if (f.suppressed) continue;  // nothing is applied to a suppressed finding
      const AuditCheckConfig cfg = options_.config.For(f.check_name);
      for (const std::string& action : cfg.mitigations) {
        std::string detail;
        Result<bool> applied = ApplyAction(f, task->started_at, action, &detail, &quarantined);
        MitigationRecord m;
        m.task_id = task_id;
        m.finding_id = f.id;
        m.action = action;
        m.result = !applied ? "FAILED" : (*applied ? "SUCCEEDED" : "SKIPPED");
        m.detail = applied ? detail : applied.error().ToString();
        m.at = clock_.Now();
        if (!applied) {
          log_.Warn("audit mitigation failed", {{"task", task_id}, {"action", action}, {"resource", f.resource_id},
                                                {"error", applied.error().ToString()}});
        }
        Status rec = store_.RecordMitigation(m);
        if (!rec.ok()) {
          log_.Error("audit mitigation not recorded", {{"task", task_id}, {"action", action},
                                                       {"resource", f.resource_id}, {"result", m.result},
                                                       {"error", rec.ToString()}});
          if (unrecorded.ok()) unrecorded = rec.WithContext("recording " + action + " for " + f.resource_id);
        }
      }
    }
  }
  if (quarantined && options_.quarantine_changed) {
    Status st = options_.quarantine_changed();
    if (!st.ok()) log_.Warn("broker quarantine update failed", {{"error", st.ToString()}});
  }
  return unrecorded;
}

Result<bool> AuditEngine::ApplyAction(const AuditFinding& f, WallTime task_start, std::string_view action,
                                      std::string* detail, bool* quarantined) {
  const WallTime now = clock_.Now();
  const std::string why = f.check_name + " " + f.reason_code;
  if (action == kActionNotify) {
    if (!notifier_.publish && !notifier_.hook) {
      *detail = "skipped: no MQTT connection or post_audit hook";
      return false;
    }
    const json payload = FindingJson(f, task_start);
    std::vector<std::string> sent;
    if (notifier_.publish) {
      CF_RETURN_IF_ERROR(notifier_.publish(options_.config.notify_topic, payload.dump()));
      sent.push_back("published on " + options_.config.notify_topic);
    }
    if (notifier_.hook) {
      Status st = notifier_.hook(payload);
      if (!st.ok()) return shared::Error(st.WithContext(sent.empty() ? "post_audit hook" : sent[0] + "; post_audit hook"));
      sent.push_back("given to the post_audit hook");
    }
    *detail = sent[0] + (sent.size() > 1 ? "; " + sent[1] : "");
    return true;
  }
  if (f.thing_name.empty()) {
    *detail = "skipped: the finding names no thing";
    return false;
  }
  if (action == kActionRotate) {
    RotationConfig rc;
    rc.default_deadline = options_.config.rotation_deadline;
    std::string reason = "audit " + f.task_id + ": " + why;
    if (reason.size() > 256) reason.resize(256);
    auto r = CreateRotationRequest(registry_, rc, f.thing_name, std::move(reason), std::nullopt, "audit", now);
    if (!r && r.error().code() == Code::kAlreadyExists) {
      *detail = "skipped: a rotation is already pending";
      return false;
    }
    if (!r) return shared::Error(r.error());
    *detail = "rotation " + r->id + " requested, deadline " + shared::FormatRfc3339(r->deadline);
    return true;
  }
  if (action == kActionDeactivate) {
    if (f.resource_type != "DEVICE_CERTIFICATE") {
      *detail = "skipped: the finding names no device certificate";
      return false;
    }
    CF_RETURN_IF_ERROR(ChangeCertificateStatus(registry_, f.resource_id, CertStatus::kInactive, "audit:" + f.task_id,
                                               why, now));
    *detail = "certificate " + f.resource_id + " INACTIVE";
    return true;
  }
  if (action == kActionQuarantine) {
    CF_ASSIGN_OR_RETURN(std::optional<ThingRecord> thing, registry_.FindThing(f.thing_name));
    if (thing && thing->quarantined_at) {
      *detail = "skipped: thing " + f.thing_name + " is already quarantined";
      return false;
    }
    CF_RETURN_IF_ERROR(registry_.SetQuarantine(f.thing_name, why, "audit:" + f.task_id, now));
    *quarantined = true;
    *detail = "thing " + f.thing_name + " quarantined";
    return true;
  }
  return shared::Error(Code::kInvalidArgument, "unknown mitigation " + std::string(action));
}

Result<std::string> AuditEngine::WriteReport(const std::string& task_id, WallTime ended) {
  if (options_.config.report_dir.empty()) return std::string();
  CF_RETURN_IF_ERROR(fs_.MakeDirs(options_.config.report_dir, 0750));
  CF_ASSIGN_OR_RETURN(std::optional<AuditTask> task, store_.FindTask(task_id));
  if (!task) return shared::Error(Code::kNotFound, "no audit task " + task_id);
  task->status = "COMPLETED";
  task->ended_at = std::max(ended, task->started_at);
  const std::string path = shared::JoinPath(options_.config.report_dir, task_id + ".json");
  StreamingAtomicFile out;
  CF_RETURN_IF_ERROR(out.Open(path, 0640));
  std::string head = TaskHeader(*task).dump();
  head.pop_back();  // reopen the object
  CF_RETURN_IF_ERROR(out.Write(head));
  CF_RETURN_IF_ERROR(out.Write(",\"findings\":["));
  bool first = true;
  CF_RETURN_IF_ERROR(store_.StreamFindingsJson(task_id, [&](std::string_view finding) -> Status {
    if (!first) {
      Status comma = out.Write(",");
      if (!comma.ok()) return comma;
    }
    first = false;
    return out.Write(finding);
  }));
  CF_RETURN_IF_ERROR(out.Write("],\"mitigationActions\":["));
  first = true;
  CF_RETURN_IF_ERROR(ForEachMitigation(task_id, [&](const MitigationRecord& m) -> Status {
    const std::string item = (first ? "" : ",") + MitigationJson(m).dump();
    first = false;
    return out.Write(item);
  }));
  CF_RETURN_IF_ERROR(out.Write("]}\n"));
  CF_RETURN_IF_ERROR(out.Commit());
  return path;
}

Status AuditEngine::ForEachMitigation(const std::string& task_id,
                                      const std::function<Status(const MitigationRecord&)>& sink) {
  int64_t after = 0;
  for (;;) {
    CF_ASSIGN_OR_RETURN(std::vector<MitigationRecord> page, store_.ListMitigations(task_id, after, kPage));
    if (page.empty()) return Status::Ok();
    after = page.back().id;
    for (const MitigationRecord& m : page) CF_RETURN_IF_ERROR(sink(m));
  }
}

void AuditEngine::Prune() {
  if (options_.config.retention.count() <= 0) return;
  auto paths = store_.PruneTasks(clock_.Now() - options_.config.retention);
  if (!paths) {
    log_.Warn("audit retention pruning failed", {{"error", paths.error().ToString()}});
    return;
  }
  for (const std::string& p : *paths) {
    Status st = fs_.Remove(p);
    if (!st.ok() && st.code() != Code::kNotFound) log_.Warn("audit report not removed", {{"path", p}, {"error", st.ToString()}});
  }
  if (!paths->empty()) log_.Info("audit reports pruned", {{"count", std::to_string(paths->size())}});
}

Result<AuditTaskPage> AuditEngine::ListAuditTasks(const AuditTaskFilter& filter) { return store_.ListTasks(filter); }

Result<std::optional<AuditTask>> AuditEngine::GetAuditTask(const std::string& id) { return store_.FindTask(id); }

Result<json> AuditEngine::AuditReportJson(const std::string& id) {
  CF_ASSIGN_OR_RETURN(std::optional<AuditTask> task, store_.FindTask(id));
  if (!task) return shared::Error(Code::kNotFound, "no audit task " + id);
  json j = TaskHeader(*task);
  json findings = json::array();
  int64_t after = 0;
  for (;;) {
    CF_ASSIGN_OR_RETURN(std::vector<AuditFinding> page, store_.ListFindings(id, after, kPage));
    if (page.empty()) break;
    after = page.back().id;
    for (const AuditFinding& f : page) findings.push_back(FindingJson(f, task->started_at));
  }
  j["findings"] = std::move(findings);
  json actions = json::array();
  CF_RETURN_IF_ERROR(ForEachMitigation(id, [&](const MitigationRecord& m) {
    actions.push_back(MitigationJson(m));
    return Status::Ok();
  }));
  j["mitigationActions"] = std::move(actions);
  if (!task->report_path.empty()) j["reportPath"] = task->report_path;
  return j;
}

Result<AuditEngine::ReportPage> AuditEngine::AuditReportPage(const std::string& id, int64_t after_finding,
                                                              int64_t limit) {
  if (limit < 1) return shared::Error(Code::kInvalidArgument, "limit must be at least 1");
  CF_ASSIGN_OR_RETURN(std::optional<AuditTask> task, store_.FindTask(id));
  if (!task) return shared::Error(Code::kNotFound, "no audit task " + id);
  ReportPage page;
  page.report = TaskHeader(*task);
  CF_ASSIGN_OR_RETURN(std::vector<AuditFinding> rows, store_.ListFindings(id, after_finding, limit + 1));
  if (static_cast<int64_t>(rows.size()) > limit) {
    rows.pop_back();
    page.next_after = rows.back().id;
  }
  json findings = json::array();
  for (const AuditFinding& f : rows) findings.push_back(FindingJson(f, task->started_at));
  json actions = json::array();
  if (!rows.empty()) {
    CF_ASSIGN_OR_RETURN(std::vector<MitigationRecord> ms,
                        store_.ListMitigationsOfFindings(id, after_finding, rows.back().id));
    for (const auto& m : ms) actions.push_back(MitigationJson(m));
  }
  page.report["findings"] = std::move(findings);
  page.report["mitigationActions"] = std::move(actions);
  return page;
}

Status AuditEngine::Suppress(const AuditSuppression& s) { return store_.PutSuppression(s); }

Result<std::vector<AuditSuppression>> AuditEngine::ListSuppressions(bool include_expired) {
  return store_.ListSuppressions(clock_.Now(), include_expired);
}

Status AuditEngine::Unsuppress(const std::string& check, const std::string& resource_id) {
  return store_.DeleteSuppression(check, resource_id);
}

void AuditEngine::Start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  thread_ = std::thread([this] { Loop(); });
}

void AuditEngine::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Queued audits that never ran end FAILED, not IN_PROGRESS forever.
  std::deque<std::pair<std::string, std::vector<std::string>>> left;
  {
    std::lock_guard lock(mu_);
    left.swap(queue_);
  }
  for (const auto& [id, checks] : left) {
    Status st = store_.FinishTask(id, "FAILED", "", "the companion stopped before the audit ran", clock_.Now());
    if (!st.ok()) log_.Warn("queued audit not closed", {{"task", id}, {"error", st.ToString()}});
  }
}

void AuditEngine::Loop() {
  const bool scheduled = options_.config.schedule.kind != AuditSchedule::kOff;
  WallTime next = scheduled ? NextAuditRun(options_.config.schedule, clock_.Now()) : WallTime::max();
  if (scheduled) log_.Info("audit schedule", {{"next", shared::FormatRfc3339(next)}});
  std::unique_lock lock(mu_);
  while (!stopping_) {
    if (!queue_.empty()) {
      // Another process (certfleetctl) may be auditing: the queued task waits its turn,
      // polling the lock once a second.
      auto held = store_.TryLockRun();
      if (!held) {
        if (held.error().code() != Code::kFailedPrecondition) {
          log_.Warn("audit lock unavailable", {{"error", held.error().ToString()}});
        }
        cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; });
        continue;
      }
      auto [id, checks] = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      {
        std::lock_guard run(run_mu_);
        RunTask(id, checks);
      }
      held->reset();
      lock.lock();
      continue;
    }
    const WallTime now = clock_.Now();
    if (scheduled && now >= next) {
      lock.unlock();
      auto id = StartAudit({}, kTaskScheduled);
      if (!id) log_.Error("scheduled audit failed", {{"error", id.error().ToString()}});
      next = NextAuditRun(options_.config.schedule, clock_.Now());
      log_.Info("audit schedule", {{"next", shared::FormatRfc3339(next)}});
      lock.lock();
      continue;
    }
    // Wake at least once a minute so that a wall clock step is noticed.
    const auto wait = scheduled ? std::min<std::chrono::nanoseconds>(next - now, std::chrono::minutes(1))
                                : std::chrono::nanoseconds(std::chrono::minutes(1));
    cv_.wait_for(lock, wait, [this] { return stopping_ || !queue_.empty(); });
  }
}

}  // namespace certfleet::companion
