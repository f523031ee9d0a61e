#include "companion/audit.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "companion/audit_policy.h"
#include "companion/config.h"
#include "companion/registry.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"

namespace certfleet::companion {
namespace {

using shared::Code;
using std::chrono::hours;
using nlohmann::json;

// Every time here is relative to 2026-01-01T00:00:00Z.
const WallTime kNow = shared::FromUnixSeconds(1767225600);
constexpr std::chrono::hours Days(int n) { return hours(24 * n); }

class NullLogger final : public shared::Logger {
 public:
  void Log(shared::LogLevel, std::string_view, std::initializer_list<shared::LogField>) override {}
};

// A self-signed certificate PEM for `cn` with a fresh key of `type`.
std::string CertPem(const std::string& cn, shared::KeyType type = shared::KeyType::kEcP256) {
  auto key = shared::GenerateKeyPair(type);
  shared::X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_time_adj_ex(X509_getm_notBefore(cert.get()), 0, 0, nullptr);
  X509_time_adj_ex(X509_getm_notAfter(cert.get()), 30, 0, nullptr);
  X509_set_pubkey(cert.get(), key->get());
  X509_sign(cert.get(), key->get(), EVP_sha256());
  return shared::CertToPem(cert.get());
}

class AuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    path_ = dir_.path() + "/registry.sqlite3";
    auto reg = OpenSqliteRegistry(path_, {});
    ASSERT_TRUE(reg) << reg.error().ToString();
    registry_ = std::move(*reg);
    auto store = OpenSqliteAuditStore(path_);
    ASSERT_TRUE(store) << store.error().ToString();
    store_ = std::move(*store);
    options_.config.report_dir = dir_.path() + "/reports";
  }

  AuditEngine& Engine() {
    AuditNotifier n;
    n.publish = [this](const std::string& topic, const std::string& payload) {
      published_.emplace_back(topic, payload);
      return Status::Ok();
    };
    n.hook = hook_;
    options_.quarantine_changed = [this] {
      ++quarantine_pushes_;
      return Status::Ok();
    };
    engine_ = std::make_unique<AuditEngine>(options_, *registry_, *store_, shared::PosixFilesystem::Instance(), clock_,
                                            log_, n);
    return *engine_;
  }

  // Records an ACTIVE certificate for `thing`, issued at `issued`, valid until `not_after`.
  std::string Issue(const std::string& thing, const std::string& serial, WallTime issued, WallTime not_after,
                    const std::string& pem = "") {
    CertRecord c;
    c.id = shared::Sha256Hex("cert:" + serial);
    c.thing_name = thing;
    c.serial = serial;
    c.subject = "CN=" + thing;
    c.not_before = issued - hours(1);
    c.not_after = not_after;
    c.issued_at = issued;
    c.status = CertStatus::kActive;
    c.source = "test";
    c.pem = pem.empty() ? "PEM " + serial : pem;
    IssueRecord rec;
    rec.cert = c;
    EXPECT_TRUE(registry_->RecordIssued(rec, issued).ok());
    // Test PEMs do not parse: give them the facts of a sound EC key.
    Exec("UPDATE certificates SET key_type = 'EC', key_bits = 256, sig_alg = 'ecdsa-with-SHA256', "
         "sig_hash = 'SHA256', roca = 0 WHERE id = '" + c.id + "' AND key_type = 'UNKNOWN'");
    EXPECT_TRUE(registry_->MarkThingSeen(thing, kNow).ok());
    return c.id;
  }

  void Exec(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(db);
  }

  AuditTask Run(const std::vector<std::string>& checks) {
    auto id = Engine().StartAudit(checks);
    EXPECT_TRUE(id) << id.error().ToString();
    auto task = engine_->GetAuditTask(*id);
    EXPECT_TRUE(task && *task);
    EXPECT_EQ((*task)->status, "COMPLETED") << (*task)->error;
    return **task;
  }

  std::vector<AuditFinding> Findings(const std::string& task) {
    auto f = store_->ListFindings(task, 0, 1000);
    EXPECT_TRUE(f);
    return *f;
  }

  static const AuditCheckSummary& Summary(const AuditTask& t, std::string_view check) {
    for (const auto& c : t.checks) {
      if (c.check_name == check) return c;
    }
    static AuditCheckSummary none;
    ADD_FAILURE() << "no result for " << check;
    return none;
  }

  shared::TempDir dir_;
  std::string path_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<AuditStore> store_;
  shared::FakeClock clock_{kNow};
  NullLogger log_;
  AuditEngineOptions options_;
  std::unique_ptr<AuditEngine> engine_;
  std::vector<std::pair<std::string, std::string>> published_;
  int quarantine_pushes_ = 0;
  std::function<Status(const json&)> hook_;  // the post_audit hook, when a test sets one
};

TEST_F(AuditTest, ExpiringCheckFindsApproachingAndPastExpiration) {
  const std::string soon = Issue("gw-soon", "1", kNow - Days(10), kNow + Days(10));
  const std::string past = Issue("gw-past", "2", kNow - Days(100), kNow - Days(1));
  Issue("gw-fine", "3", kNow - Days(10), kNow + Days(60));
  AuditTask t = Run({std::string(kCheckDeviceCertExpiring)});
  const auto& s = Summary(t, kCheckDeviceCertExpiring);
  EXPECT_EQ(s.run_status, "COMPLETED_NON_COMPLIANT");
  EXPECT_EQ(s.total, 3);
  EXPECT_EQ(s.non_compliant, 2);
  auto findings = Findings(t.id);
  ASSERT_EQ(findings.size(), 2u);
  for (const auto& f : findings) {
    EXPECT_EQ(f.severity, "MEDIUM");
    EXPECT_EQ(f.resource_type, "DEVICE_CERTIFICATE");
    if (f.resource_id == soon) {
      EXPECT_EQ(f.reason_code, "CERTIFICATE_APPROACHING_EXPIRATION");
    }
    if (f.resource_id == past) {
      EXPECT_EQ(f.reason_code, "CERTIFICATE_PAST_EXPIRATION");
    }
  }
}

TEST_F(AuditTest, ExpiringThresholdIsConfigurableWithoutFloor) {
  Issue("gw-a", "1", kNow - Days(10), kNow + Days(60));
  Issue("gw-b", "2", kNow - Days(10), kNow + hours(12));
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].threshold = Days(90);
  EXPECT_EQ(Summary(Run({std::string(kCheckDeviceCertExpiring)}), kCheckDeviceCertExpiring).non_compliant, 2);
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].threshold = Days(1);
  EXPECT_EQ(Summary(Run({std::string(kCheckDeviceCertExpiring)}), kCheckDeviceCertExpiring).non_compliant, 1);
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].threshold = std::chrono::seconds(0);
  EXPECT_EQ(Summary(Run({std::string(kCheckDeviceCertExpiring)}), kCheckDeviceCertExpiring).run_status,
            "COMPLETED_COMPLIANT");
}

TEST_F(AuditTest, AgeCountsFromFirstActivation) {
  Issue("gw-old", "1", kNow - Days(400), kNow + Days(400));
  Issue("gw-new", "2", kNow - Days(100), kNow + Days(400));
  AuditTask t = Run({std::string(kCheckDeviceCertAge)});
  EXPECT_EQ(Summary(t, kCheckDeviceCertAge).non_compliant, 1);
  auto f = Findings(t.id);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].thing_name, "gw-old");
  EXPECT_EQ(f[0].reason_code, "CERTIFICATE_PAST_AGE_THRESHOLD");
  EXPECT_EQ(f[0].severity, "LOW");
  options_.config.checks[std::string(kCheckDeviceCertAge)].threshold = Days(30);
  EXPECT_EQ(Summary(Run({std::string(kCheckDeviceCertAge)}), kCheckDeviceCertAge).non_compliant, 2);
}

TEST_F(AuditTest, RevokedCertificateStillCurrentIsFound) {
  const std::string revoked = Issue("gw-r", "1", kNow - Days(10), kNow + Days(60));
  Issue("gw-ok", "2", kNow - Days(10), kNow + Days(60));
  ASSERT_TRUE(registry_->SetCertStatus(revoked, CertStatus::kRevoked, kNow - Days(1)).ok());
  AuditTask t = Run({std::string(kCheckRevokedStillActive)});
  const auto& s = Summary(t, kCheckRevokedStillActive);
  EXPECT_EQ(s.total, 1);
  EXPECT_EQ(s.non_compliant, 1);
  auto f = Findings(t.id);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].resource_id, revoked);
  EXPECT_EQ(f[0].reason_code, "CERTIFICATE_REVOKED_BY_ISSUER");
  EXPECT_TRUE(f[0].info["stillCurrent"].get<bool>());
}

// The usual remedy for a revoked identity (the device enrolls anew, by claim or token)
// does not supersede the revoked row: the newer certificate of the thing is what says
// the revoked one is no longer current.
TEST_F(AuditTest, RevokedCertificateReplacedByANewerOneIsNotFound) {
  const std::string revoked = Issue("gw-r", "1", kNow - Days(10), kNow + Days(60));
  ASSERT_TRUE(registry_->SetCertStatus(revoked, CertStatus::kRevoked, kNow - Days(2)).ok());
  Issue("gw-r", "2", kNow - Days(1), kNow + Days(90));
  AuditTask t = Run({std::string(kCheckRevokedStillActive)});
  const auto& s = Summary(t, kCheckRevokedStillActive);
  EXPECT_EQ(s.total, 1);
  EXPECT_EQ(s.non_compliant, 0);
  EXPECT_EQ(s.run_status, "COMPLETED_COMPLIANT");
}

TEST_F(AuditTest, KeyQualityUsesFactsRecordedAtIssuance) {
  const std::string real = Issue("gw-ec", "1", kNow - Days(1), kNow + Days(60), CertPem("gw-ec"));
  const std::string short_rsa = Issue("gw-rsa", "2", kNow - Days(1), kNow + Days(60));
  const std::string roca = Issue("gw-roca", "3", kNow - Days(1), kNow + Days(60));
  const std::string sha1 = Issue("gw-sha1", "4", kNow - Days(1), kNow + Days(60));
  Exec("UPDATE certificates SET key_type = 'RSA', key_bits = 1024 WHERE id = '" + short_rsa + "'");
  Exec("UPDATE certificates SET key_type = 'RSA', key_bits = 2048, roca = 1 WHERE id = '" + roca + "'");
  Exec("UPDATE certificates SET sig_hash = 'SHA1' WHERE id = '" + sha1 + "'");
  AuditTask t = Run({std::string(kCheckDeviceKeyQuality)});
  EXPECT_EQ(Summary(t, kCheckDeviceKeyQuality).total, 4);
  std::map<std::string, std::string> reasons;
  for (const auto& f : Findings(t.id)) reasons[f.resource_id] = f.reason_code;
  EXPECT_EQ(reasons.size(), 3u);
  EXPECT_EQ(reasons.count(real), 0u);  // EC P-256, SHA-256: derived from the PEM at issuance
  EXPECT_EQ(reasons[short_rsa], "CERTIFICATE_KEY_TOO_SHORT");
  EXPECT_EQ(reasons[roca], "CERTIFICATE_KEY_VULNERABILITY_CVE-2017-15361");
  EXPECT_EQ(reasons[sha1], "CERTIFICATE_WEAK_SIGNATURE_ALGORITHM");
  options_.config.checks[std::string(kCheckDeviceKeyQuality)].min_rsa_bits = 1024;
  EXPECT_EQ(Summary(Run({std::string(kCheckDeviceKeyQuality)}), kCheckDeviceKeyQuality).non_compliant, 2);
}

TEST(AuditOptionsTest, AgentNotSeenDefaultsToTheRotationDeadline) {
  CompanionConfig config;
  config.rotation.default_deadline = Days(3);
  EXPECT_EQ(*AuditOptionsFromConfig(config).config.For(kCheckAgentNotSeen).threshold, Days(3));
  config.audit.checks[std::string(kCheckAgentNotSeen)].threshold = Days(1);
  EXPECT_EQ(*AuditOptionsFromConfig(config).config.For(kCheckAgentNotSeen).threshold, Days(1)) << "set: kept";
}

TEST_F(AuditTest, AgentNotSeenAndRotationOverdue) {
  Issue("gw-quiet", "1", kNow - Days(30), kNow + Days(60));
  Issue("gw-talks", "2", kNow - Days(30), kNow + Days(60));
  clock_.Advance(Days(8));
  ASSERT_TRUE(registry_->MarkThingSeen("gw-talks", clock_.Now()).ok());
  RotationRecord r;
  r.id = std::string(32, 'a');
  r.thing_name = "gw-talks";
  r.reason = "operator";
  r.created_at = clock_.Now() - Days(3);
  r.deadline = clock_.Now() - Days(1);
  r.created_by = "operator:test";
  ASSERT_TRUE(registry_->CreateRotation(r).ok());
  AuditTask t = Run({std::string(kCheckAgentNotSeen), std::string(kCheckRotationOverdue)});
  EXPECT_EQ(Summary(t, kCheckAgentNotSeen).non_compliant, 1);
  EXPECT_EQ(Summary(t, kCheckRotationOverdue).non_compliant, 1);
  for (const auto& f : Findings(t.id)) {
    if (f.check_name == kCheckAgentNotSeen) {
      EXPECT_EQ(f.resource_id, "gw-quiet");
    }
    if (f.check_name == kCheckRotationOverdue) {
      EXPECT_EQ(f.resource_id, r.id);
    }
  }
}

TEST_F(AuditTest, SupersededCertificateStillActiveWithoutGraceIsFound) {
  const std::string old_id = Issue("gw-1", "1", kNow - Days(30), kNow + Days(60));
  Issue("gw-1", "2", kNow - Days(20), kNow + Days(60));
  AuditTask t = Run({std::string(kCheckActiveWithoutThing)});
  EXPECT_EQ(Summary(t, kCheckActiveWithoutThing).total, 2);
  auto f = Findings(t.id);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].resource_id, old_id);
}

TEST_F(AuditTest, SuppressedFindingsAreMarkedAndNotMitigated) {
  const std::string a = Issue("gw-a", "1", kNow - Days(10), kNow + Days(5));
  Issue("gw-b", "2", kNow - Days(10), kNow + Days(5));
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].mitigations = {std::string(kActionRotate)};
  ASSERT_TRUE(Engine().Suppress({std::string(kCheckDeviceCertExpiring), a, kNow, kNow + Days(3), "known", "test"}).ok());
  AuditTask t = Run({std::string(kCheckDeviceCertExpiring)});
  EXPECT_EQ(Summary(t, kCheckDeviceCertExpiring).non_compliant, 2);
  EXPECT_EQ(Summary(t, kCheckDeviceCertExpiring).suppressed, 1);
  auto actions = store_->ListMitigations(t.id, 0, 100);
  ASSERT_TRUE(actions);
  ASSERT_EQ(actions->size(), 1u);
  EXPECT_TRUE(registry_->FindPendingRotation("gw-b").value());
  EXPECT_FALSE(registry_->FindPendingRotation("gw-a").value());
  // The database refuses a mitigation of a suppressed finding, a second one of the same
  // action, and one under another task than its finding's.
  for (const auto& f : Findings(t.id)) {
    if (f.suppressed) {
      Status st = store_->RecordMitigation({0, t.id, f.id, std::string(kActionNotify), "SUCCEEDED", "x", kNow});
      EXPECT_EQ(st.code(), Code::kFailedPrecondition);
      continue;
    }
    EXPECT_FALSE(store_->RecordMitigation({0, t.id, f.id, std::string(kActionRotate), "SUCCEEDED", "x", kNow}).ok());
    ASSERT_TRUE(store_->CreateTask(std::string(32, 'b'), kTaskOnDemand, kNow).ok());
    EXPECT_FALSE(
        store_->RecordMitigation({0, std::string(32, 'b'), f.id, std::string(kActionNotify), "SUCCEEDED", "x", kNow}).ok());
    EXPECT_TRUE(store_->RecordMitigation({0, t.id, f.id, std::string(kActionNotify), "SUCCEEDED", "x", kNow}).ok());
  }
  // After its expiry the suppression no longer applies, and lists only with expired ones.
  clock_.Advance(Days(4));
  EXPECT_EQ(Summary(Run({std::string(kCheckDeviceCertExpiring)}), kCheckDeviceCertExpiring).suppressed, 0);
  EXPECT_TRUE(engine_->ListSuppressions(false)->empty());
  EXPECT_EQ(engine_->ListSuppressions(true)->size(), 1u);
  EXPECT_TRUE(engine_->Unsuppress(std::string(kCheckDeviceCertExpiring), a).ok());
  EXPECT_EQ(engine_->Unsuppress(std::string(kCheckDeviceCertExpiring), a).code(), Code::kNotFound);
}

TEST_F(AuditTest, RotateMitigationCreatesAuditRotationWithDeadline) {
  Issue("gw-a", "1", kNow - Days(10), kNow + Days(5));
  options_.config.rotation_deadline = Days(2);
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].mitigations = {std::string(kActionRotate)};
  AuditTask t = Run({std::string(kCheckDeviceCertExpiring)});
  auto r = registry_->FindPendingRotation("gw-a");
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->created_by, "audit");
  EXPECT_EQ((*r)->deadline, kNow + Days(2));
  // A second audit finds the pending request and skips.
  AuditTask t2 = Run({std::string(kCheckDeviceCertExpiring)});
  auto actions = store_->ListMitigations(t2.id, 0, 10);
  ASSERT_EQ(actions->size(), 1u);
  EXPECT_EQ((*actions)[0].result, "SKIPPED");
}

TEST_F(AuditTest, DeactivateQuarantineAndNotifyMitigations) {
  const std::string id = Issue("gw-a", "1", kNow - Days(10), kNow - Days(1));
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].mitigations = {
      std::string(kActionNotify), std::string(kActionQuarantine), std::string(kActionDeactivate)};
  AuditTask t = Run({std::string(kCheckDeviceCertExpiring)});
  auto actions = store_->ListMitigations(t.id, 0, 10);
  ASSERT_EQ(actions->size(), 3u);
  for (const auto& a : *actions) EXPECT_EQ(a.result, "SUCCEEDED") << a.action << ": " << a.detail;
  EXPECT_EQ(registry_->FindCert(id).value()->status, CertStatus::kInactive);
  auto thing = registry_->FindThing("gw-a");
  ASSERT_TRUE(thing && *thing);
  EXPECT_TRUE((*thing)->quarantined_at.has_value());
  EXPECT_EQ(quarantine_pushes_, 1);
  EXPECT_EQ(registry_->ListQuarantinedThings().value(), std::vector<std::string>{"gw-a"});
  // Both actions are security events, as when an operator takes them (newest first).
  auto events = registry_->ListSecurityEvents(10);
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].kind, "certificate_deactivated");
  EXPECT_EQ((*events)[0].subject, id);
  EXPECT_NE((*events)[0].detail.find("audit:" + t.id), std::string::npos) << (*events)[0].detail;
  EXPECT_EQ((*events)[1].kind, "thing_quarantined");
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0].first, "certfleet/audit/findings");
  json payload = json::parse(published_[0].second);
  EXPECT_EQ(payload["checkName"], kCheckDeviceCertExpiring);
  EXPECT_EQ(payload["taskStartTime"], shared::FormatRfc3339(t.started_at));
  EXPECT_EQ(payload["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"], id);
  // Lifting the quarantine is recorded too.
  ASSERT_TRUE(registry_->SetQuarantine("gw-a", std::nullopt, "operator:test", kNow).ok());
  EXPECT_FALSE(registry_->FindThing("gw-a").value()->quarantined_at.has_value());
  EXPECT_EQ(registry_->ListSecurityEvents(1)->front().kind, "thing_unquarantined");
}

TEST_F(AuditTest, MitigationResultsSayWhatHappened) {
  const std::string id = Issue("gw-a", "1", kNow - Days(10), kNow - Days(1));
  ASSERT_TRUE(registry_->SetQuarantine("gw-a", "by hand", "operator:test", kNow).ok());
  options_.config.checks[std::string(kCheckDeviceCertExpiring)].mitigations = {std::string(kActionQuarantine),
                                                                                 std::string(kActionNotify)};
  hook_ = [](const json&) { return Status(Code::kResourceExhausted, "post_audit hook queue full: run dropped"); };
  AuditTask t = Run({std::string(kCheckDeviceCertExpiring)});
  auto actions = store_->ListMitigations(t.id, 0, 10);
  ASSERT_TRUE(actions);
  ASSERT_EQ(actions->size(), 2u);
  EXPECT_EQ((*actions)[0].action, kActionQuarantine);
  EXPECT_EQ((*actions)[0].result, "SKIPPED") << "already quarantined: nothing was done";
  EXPECT_EQ((*actions)[1].action, kActionNotify);
  EXPECT_EQ((*actions)[1].result, "FAILED") << "a dropped hook run is not a notification";
  EXPECT_NE((*actions)[1].detail.find("queue full"), std::string::npos) << (*actions)[1].detail;
  EXPECT_EQ(quarantine_pushes_, 0);
  // Paged in id order.
  auto second = store_->ListMitigations(t.id, (*actions)[0].id, 10);
  ASSERT_TRUE(second);
  ASSERT_EQ(second->size(), 1u);
  EXPECT_EQ((*second)[0].id, (*actions)[1].id);
}

TEST_F(AuditTest, OneAuditAtATimeAcrossProcesses) {
  Issue("gw-a", "1", kNow - Days(10), kNow + Days(5));
  // Another process's engine (certfleetctl's local mode) holds the run lock: its store is
  // opened on the same file.
  auto other = OpenSqliteAuditStore(path_);
  ASSERT_TRUE(other);
  auto held = (*other)->TryLockRun();
  ASSERT_TRUE(held) << held.error().ToString();
  ASSERT_TRUE(store_->CreateTask(std::string(32, 'a'), kTaskOnDemand, kNow).ok());  // its live task
  auto refused = Engine().StartAudit({std::string(kCheckDeviceCertExpiring)});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Code::kFailedPrecondition);
  ASSERT_TRUE(engine_->FailInterruptedTasks().ok());
  EXPECT_EQ(engine_->GetAuditTask(std::string(32, 'a')).value()->status, "IN_PROGRESS") << "a live task is left alone";
  held->reset();
  ASSERT_TRUE(engine_->FailInterruptedTasks().ok());
  EXPECT_EQ(engine_->GetAuditTask(std::string(32, 'a')).value()->status, "FAILED") << "its process is gone";
  EXPECT_TRUE(engine_->StartAudit({std::string(kCheckDeviceCertExpiring)}));
}

TEST_F(AuditTest, ReportFileIsTheReferenceShapeAndPrivate) {
  Issue("gw-a", "1", kNow - Days(10), kNow + Days(5));
  AuditTask t = Run({});
  ASSERT_FALSE(t.report_path.empty());
  struct stat st {};
  ASSERT_EQ(::stat(t.report_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  std::ifstream in(t.report_path);
  std::stringstream text;
  text << in.rdbuf();
  json report = json::parse(text.str());
  EXPECT_EQ(report["taskId"], t.id);
  EXPECT_EQ(report["taskStatus"], "COMPLETED");
  EXPECT_EQ(report["taskType"], "ON_DEMAND_AUDIT_TASK");
  EXPECT_EQ(report["auditDetails"].size(), AuditChecks().size());
  const json& d = report["auditDetails"][std::string(kCheckDeviceCertExpiring)];
  EXPECT_EQ(d["checkRunStatus"], "COMPLETED_NON_COMPLIANT");
  EXPECT_EQ(d["totalResourcesCount"], 1);
  EXPECT_EQ(d["nonCompliantResourcesCount"], 1);
  bool found = false;
  for (const json& f : report["findings"]) {
    for (const char* key : {"findingId", "taskId", "checkName", "taskStartTime", "findingTime", "severity",
                            "nonCompliantResource", "reasonForNonComplianceCode", "reasonForNonCompliance",
                            "isSuppressed"}) {
      EXPECT_TRUE(f.contains(key)) << key;
    }
    found = found || f["checkName"] == kCheckDeviceCertExpiring;
  }
  EXPECT_TRUE(found);
  // The API's view is the same report.
  auto api = engine_->AuditReportJson(t.id);
  ASSERT_TRUE(api);
  EXPECT_EQ((*api)["findings"].size(), report["findings"].size());
  EXPECT_EQ(engine_->AuditReportJson(std::string(32, 'f')).error().code(), Code::kNotFound);
}

TEST_F(AuditTest, RetentionPrunesOldTasksAndReports) {
  options_.config.retention = Days(10);
  AuditTask first = Run({std::string(kCheckRotationOverdue)});
  ASSERT_FALSE(first.report_path.empty());
  clock_.Advance(Days(11));
  AuditTask second = Run({std::string(kCheckRotationOverdue)});
  EXPECT_FALSE(engine_->GetAuditTask(first.id).value().has_value());
  EXPECT_FALSE(shared::PosixFilesystem::Instance().Exists(first.report_path));
  EXPECT_TRUE(engine_->GetAuditTask(second.id).value().has_value());
  EXPECT_TRUE(shared::PosixFilesystem::Instance().Exists(second.report_path));
}

TEST_F(AuditTest, ListTasksPagesByCursorAndRejectsMalformedOnes) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(Run({std::string(kCheckRotationOverdue)}).id);
    clock_.Advance(std::chrono::minutes(1));
  }
  AuditTaskFilter f;
  f.limit = 2;
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    auto p = engine_->ListAuditTasks(f);
    ASSERT_TRUE(p);
    for (const auto& t : p->tasks) seen.push_back(t.id);
    if (p->next_cursor.empty()) break;
    f.cursor = p->next_cursor;
  }
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen.front(), ids.back());  // newest first
  EXPECT_EQ(seen.back(), ids.front());
  for (const char* bad : {"x", "1.", ".abc", "12.zz", "99999999999999999999.0123456789abcdef0123456789abcdef"}) {
    AuditTaskFilter b;
    b.cursor = bad;
    EXPECT_EQ(engine_->ListAuditTasks(b).error().code(), Code::kInvalidArgument) << bad;
  }
  AuditTaskFilter typed;
  typed.task_type = std::string(kTaskScheduled);
  EXPECT_TRUE(engine_->ListAuditTasks(typed)->tasks.empty());
  EXPECT_EQ(engine_->StartAudit({"NO_SUCH_CHECK"}).error().code(), Code::kInvalidArgument);
}

TEST_F(AuditTest, PolicyCheckFlagsWildcardGrantsAcrossThings) {
  AuditTask t = Run({std::string(kCheckPolicyPermissive)});
  EXPECT_EQ(Summary(t, kCheckPolicyPermissive).run_status, "COMPLETED_COMPLIANT");  // the generated ACLs
  const std::string acl = dir_.path() + "/wide.acl";
  ASSERT_TRUE(shared::PosixFilesystem::Instance()
                  .WriteFileAtomic(acl, "pattern readwrite certfleet/things/+/rotation/#\n", 0600)
                  .ok());
  options_.config.policy_files = {acl};
  AuditTask t2 = Run({std::string(kCheckPolicyPermissive)});
  EXPECT_EQ(Summary(t2, kCheckPolicyPermissive).non_compliant, 1);
  EXPECT_EQ(Findings(t2.id)[0].reason_code, "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS");
}

TEST(AuditPolicyTest, AclGrantRules) {
  const std::string acl =
      "# comment\n"
      "topic read public/#\n"                        // 2: everyone, wildcard
      "pattern readwrite certfleet/things/%u/+\n"    // fine: wildcard after the client
      "pattern read certfleet/+/%u/x\n"              // 4: wildcard before the client
      "pattern deny #\n"                             // a deny grants nothing
      "user certfleet-companion\n"
      "topic readwrite certfleet/#\n"                // the companion is exempt
      "user gw-1\n"
      "topic readwrite certfleet/things/gw-1/#\n"    // its own subtree
      "topic read certfleet/things/#\n";             // 10: other things
  auto grants = FindPermissiveAclGrants(acl, "certfleet-companion");
  ASSERT_EQ(grants.size(), 3u);
  EXPECT_EQ(grants[0].line, 2);
  EXPECT_EQ(grants[1].line, 4);
  EXPECT_EQ(grants[2].line, 10);
  EXPECT_EQ(grants[2].user, "gw-1");
  EXPECT_TRUE(FindPermissiveAclGrants("", "x").empty());
  EXPECT_TRUE(FindPermissiveAclGrants("topic\npattern\nuser\n\x01\xff #", "x").empty());
}

}  // namespace
}  // namespace certfleet::companion
