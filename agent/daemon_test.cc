#include "agent/daemon.h"

#include <gtest/gtest.h>

#include "agent/est_commands.h"
#include "agent/issuance.h"
#include "agent/testing/est_test_server.h"
#include "hal/memory_keystore.h"
#include "shared/wire/rotation.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"

namespace certfleet::agent {
namespace {

using shared::Code;
using shared::Status;
using std::chrono::hours;
namespace sh = shared;

constexpr char kThing[] = "gw-0001";
constexpr char kCertFile[] = "/var/lib/certfleet-agent/identity.pem";
constexpr char kStateDir[] = "/var/lib/certfleet-agent";
constexpr char kRotationId[] = "00112233445566778899aabbccddeeff";

struct Published {
  std::string client_cert_id;
  std::string topic;
  std::string payload;
  bool retain;
};

// The broker seam: records connections and publications; tests deliver messages and
// connectivity changes to the newest session.
class FakeBroker final : public Broker {
 public:
  struct State {
    std::vector<Published> published;
    std::vector<std::string> connected_cert_ids;
    std::vector<std::string> client_ids;
    std::vector<std::string> subscriptions;
    sh::MqttWill will;
    SessionHandlers handlers;
    int fail_connects = 0;       // the next N connects fail
    bool fail_ack = false;       // publications to .../rotation/ack fail
    int live_sessions = 0;
  };

  class FakeSession final : public Session {
   public:
    FakeSession(State& s, std::string cert_id) : s_(s), cert_id_(std::move(cert_id)) { s_.live_sessions++; }
    ~FakeSession() override { s_.live_sessions--; }
    Status Publish(const std::string& topic, std::string_view payload, int, bool retain) override {
      if (s_.fail_ack && topic.ends_with("/rotation/ack")) return Status(Code::kDeadlineExceeded, "no PUBACK");
      s_.published.push_back({cert_id_, topic, std::string(payload), retain});
      return Status::Ok();
    }
    bool connected() const override { return true; }

   private:
    State& s_;
    std::string cert_id_;
  };

  sh::Result<std::unique_ptr<Session>> Connect(const ClientIdentity& identity, const sh::MqttWill& will,
                                               const std::vector<std::string>& subscriptions,
                                               SessionHandlers handlers) override {
    if (s.fail_connects > 0) {
      s.fail_connects--;
      return sh::Error(Code::kUnavailable, "connection refused");
    }
    auto cert = sh::CertFromPem(identity.cert_pem);
    if (!cert) return sh::Error(cert.error());
    if (!sh::SamePublicKey(X509_get0_pubkey(cert->get()), identity.key)) {
      return sh::Error(Code::kUnauthenticated, "key does not match the certificate");
    }
    std::string id = sh::CertFingerprint(cert->get());
    s.connected_cert_ids.push_back(id);
    s.client_ids.push_back(identity.client_id);
    s.subscriptions = subscriptions;
    s.will = will;
    s.handlers = std::move(handlers);
    return std::unique_ptr<Session>(new FakeSession(s, id));
  }

  std::vector<Published> On(const std::string& suffix) const {
    std::vector<Published> out;
    for (const auto& p : s.published) {
      if (p.topic == "certfleet/things/" + std::string(kThing) + "/" + suffix) out.push_back(p);
    }
    return out;
  }

  State s;
};

class FakeEnroller final : public Enroller {
 public:
  explicit FakeEnroller(const TestCa& ca) : ca_(ca) {}
  sh::Result<Reenrolled> Reenroll(const ClientIdentity& current, X509* current_cert, EVP_PKEY* new_key) override {
    calls++;
    if (fail > 0) {
      fail--;
      return sh::Error(Code::kUnavailable, "EST server unreachable");
    }
    if (refuse) return sh::Error(*refuse);
    if (!sh::SamePublicKey(X509_get0_pubkey(current_cert), current.key)) {
      return sh::Error(Code::kUnauthenticated, "client key does not match");
    }
    new_keys.push_back(*sh::PublicKeyDer(new_key));
    Reenrolled out;
    out.cert = ca_.Issue(X509_get_subject_name(current_cert), new_key);
    if (wrong_key) out.cert = ca_.Issue(X509_get_subject_name(current_cert), NewKey().get());
    return out;
  }
  int calls = 0;
  int fail = 0;
  std::optional<Status> refuse;  // every call fails with it
  bool wrong_key = false;
  std::vector<std::string> new_keys;

 private:
  const TestCa& ca_;
};

// Passes everything to a MemFilesystem, except that WriteFileAtomic of one path fails
// as on a full disk (ENOSPC) while armed; nothing of that write reaches the files.
class DiskFullFilesystem final : public sh::Filesystem {
 public:
  explicit DiskFullFilesystem(sh::Filesystem& inner) : inner_(inner) {}
  void FailWritesTo(std::string path) { full_path_ = std::move(path); }
  int failed_writes = 0;

  sh::Result<std::string> ReadFile(const std::string& path, size_t max_bytes) const override {
    return inner_.ReadFile(path, max_bytes);
  }
  Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) override {
    if (!full_path_.empty() && path == full_path_) {
      failed_writes++;
      return Status(Code::kResourceExhausted, path + ": No space left on device");
    }
    return inner_.WriteFileAtomic(path, data, mode);
  }
  Status CreateFileExclusive(const std::string& path, std::string_view data, mode_t mode) override {
    return inner_.CreateFileExclusive(path, data, mode);
  }
  Status MakeDirs(const std::string& path, mode_t mode) override { return inner_.MakeDirs(path, mode); }
  bool Exists(const std::string& path) const override { return inner_.Exists(path); }
  Status Remove(const std::string& path) override { return inner_.Remove(path); }
  sh::Result<std::vector<std::string>> List(const std::string& dir) const override { return inner_.List(dir); }

 private:
  sh::Filesystem& inner_;
  std::string full_path_;
};

class DaemonTest : public ::testing::Test {
 protected:
  DaemonTest() : ca_(MakeCa("Test Root")), clock_(std::chrono::system_clock::now()), enroller_(ca_) {}

  // An identity on disk: a key in `slot` and its certificate in the certificate file.
  std::string InstallIdentity(const std::string& slot) {
    auto key = keys_.Generate(slot, sh::KeyType::kEcP256);
    EXPECT_TRUE(key);
    auto cert = ca_.Issue(Name(kThing).get(), (*key)->pkey());
    EXPECT_TRUE(fs_.WriteFileAtomic(kCertFile, sh::CertToPem(cert.get()), 0644).ok());
    return sh::CertFingerprint(cert.get());
  }
  // Like InstallIdentity, but the certificate expired an hour ago (the CA is still valid).
  std::string InstallExpiredIdentity(const std::string& slot) {
    auto key = keys_.Generate(slot, sh::KeyType::kEcP256);
    EXPECT_TRUE(key);
    auto cert = ca_.Issue(Name(kThing).get(), (*key)->pkey());
    time_t now = std::time(nullptr);
    EXPECT_NE(X509_time_adj_ex(X509_getm_notBefore(cert.get()), -2, 0, &now), nullptr);
    EXPECT_NE(X509_time_adj_ex(X509_getm_notAfter(cert.get()), 0, -3600, &now), nullptr);
    EXPECT_NE(X509_sign(cert.get(), ca_.key.get(), EVP_sha256()), 0);
    EXPECT_TRUE(fs_.WriteFileAtomic(kCertFile, sh::CertToPem(cert.get()), 0644).ok());
    return sh::CertFingerprint(cert.get());
  }
  // A certificate for the key in `slot`, not installed.
  std::string IssueFor(const std::string& slot) {
    auto key = keys_.Load(slot);
    EXPECT_TRUE(key);
    return sh::CertToPem(ca_.Issue(Name(kThing).get(), (*key)->pkey()).get());
  }

  std::unique_ptr<Daemon> NewDaemon() {
    DaemonOptions o;
    o.cert_file = kCertFile;
    o.key_slot = "identity-a";
    o.trust_anchor_pem = ca_.Pem();
    o.state_dir = kStateDir;
    o.time_sync_file = time_sync_file_;
    o.agent_version = "test";
    o.seed = 42;
    return std::make_unique<Daemon>(o, DaemonDeps{disk_, keys_, clock_, log_, broker_, enroller_, bootstrap_,
                                                  [this](const CommittedIdentity& id) { committed_.push_back(id); },
                                                  recover_});
  }

  Journal Saved() {
    JournalStore store(fs_, kStateDir);
    auto j = store.Load();
    EXPECT_TRUE(j && j->has_value());
    return j && j->has_value() ? **j : Journal{};
  }
  void SaveJournal(const Journal& j) { ASSERT_TRUE(JournalStore(fs_, kStateDir).Save(j).ok()); }
  Journal ActiveJournal(const std::string& slot) {
    Journal j;
    j.state = AgentState::kActive;
    j.thing_name = kThing;
    j.current_slot = slot;
    return j;
  }

  std::string CertFileId() {
    auto pem = fs_.ReadFile(kCertFile, 1 << 20);
    EXPECT_TRUE(pem);
    return sh::CertFingerprint(sh::CertFromPem(*pem)->get());
  }
  bool HasKey(const std::string& slot) { return keys_.Load(slot).has_value(); }
  // The invariant of every test: the certificate file is certified by a key we still hold.
  void ExpectWorkingIdentity(const std::string& slot) {
    EXPECT_EQ(SlotCertifiedBy(fs_, keys_, kCertFile, {"identity-a", "identity-b"}), slot);
    Journal j = Saved();
    EXPECT_EQ(j.state, AgentState::kActive);
    EXPECT_EQ(j.current_slot, slot);
    EXPECT_FALSE(j.pending.has_value());
  }

  sh::AgentStatus LastStatus() {
    auto statuses = broker_.On("status");
    EXPECT_FALSE(statuses.empty());
    auto s = sh::DecodeAgentStatus(statuses.back().payload);
    EXPECT_TRUE(s) << s.error().ToString();
    return *s;
  }

  TestCa ca_;
  sh::FakeClock clock_;
  sh::MemFilesystem fs_;
  DiskFullFilesystem disk_{fs_};
  hal::MemoryKeyStore keys_;
  sh::CaptureLogger log_;
  FakeBroker broker_;
  FakeEnroller enroller_;
  std::function<Status()> bootstrap_;
  std::function<Status(const std::string&)> recover_;
  std::string time_sync_file_;
  std::vector<CommittedIdentity> committed_;
};

TEST_F(DaemonTest, FreshStartTakesTheIdentityOnDiskConnectsAndPublishesStatus) {
  std::string id = InstallIdentity("identity-a");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-a");
  EXPECT_EQ(Saved().thing_name, kThing);
  ASSERT_EQ(broker_.s.connected_cert_ids, std::vector<std::string>{id});
  EXPECT_EQ(broker_.s.client_ids.back(), kThing);
  EXPECT_EQ(broker_.s.subscriptions, std::vector<std::string>{"certfleet/things/gw-0001/rotation/request"});
  EXPECT_EQ(broker_.s.will.topic, "certfleet/things/gw-0001/status");
  auto will = sh::DecodeAgentStatus(broker_.s.will.payload);
  ASSERT_TRUE(will);
  EXPECT_EQ(will->state, "offline");
  sh::AgentStatus st = LastStatus();
  EXPECT_EQ(st.state, "active");
  EXPECT_EQ(st.certificate_id, id);
  EXPECT_EQ(st.agent_version, "test");
  EXPECT_TRUE(st.next_renewal.has_value());
  EXPECT_TRUE(broker_.On("status").back().retain);
}

TEST_F(DaemonTest, CorruptJournalStopsTheDaemon) {
  InstallIdentity("identity-a");
  ASSERT_TRUE(fs_.WriteFileAtomic(std::string(kStateDir) + "/state.json", "{\"version\":1", 0600).ok());
  auto d = NewDaemon();
  Status st = d->Start();
  EXPECT_EQ(st.code(), Code::kDataLoss);
  EXPECT_TRUE(broker_.s.connected_cert_ids.empty());
  EXPECT_TRUE(HasKey("identity-a"));
}

TEST_F(DaemonTest, UnprovisionedRunsBootstrapUntilItWorks) {
  int calls = 0;
  bootstrap_ = [&]() -> Status {
    if (++calls == 1) return Status(Code::kUnavailable, "broker down");
    InstallIdentity("identity-a");
    return Status::Ok();
  };
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  EXPECT_EQ(Saved().state, AgentState::kUnprovisioned);
  EXPECT_NE(Saved().last_error.find("broker down"), std::string::npos);
  d->Tick();  // backoff not over
  EXPECT_EQ(calls, 1);
  clock_.Advance(hours(7));
  d->Tick();
  EXPECT_EQ(calls, 2);
  ExpectWorkingIdentity("identity-a");
  EXPECT_EQ(broker_.s.connected_cert_ids.size(), 1u);
}

TEST_F(DaemonTest, RenewNowRotatesProvesAndCommits) {
  std::string old_id = InstallIdentity("identity-a");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  std::string result;
  d->RequestRenewal([&](const std::string& r) { result = r; });
  d->Tick();

  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
  std::string new_id = CertFileId();
  EXPECT_NE(new_id, old_id);
  EXPECT_EQ(result, "ok certificate_id=" + new_id);
  // Disconnected first, then connected with the new identity, which sent the ack.
  EXPECT_EQ(broker_.s.connected_cert_ids, (std::vector<std::string>{old_id, new_id}));
  EXPECT_EQ(broker_.s.live_sessions, 1);
  auto acks = broker_.On("rotation/ack");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].client_cert_id, new_id);
  EXPECT_FALSE(acks[0].retain);
  auto ack = sh::DecodeRotationAck(acks[0].payload);
  ASSERT_TRUE(ack);
  EXPECT_EQ(ack->certificate_id, new_id);
  EXPECT_EQ(ack->previous_certificate_id, old_id);
  EXPECT_EQ(ack->rotation_id, "");
  auto key_b = keys_.Load("identity-b");
  ASSERT_TRUE(key_b);
  EXPECT_TRUE(sh::VerifySha256((*key_b)->pkey(), sh::RotationAckSignedText(*ack), ack->signature).ok());
  // Status after the commit, from the new identity.
  sh::AgentStatus st = LastStatus();
  EXPECT_EQ(st.certificate_id, new_id);
  EXPECT_EQ(st.state, "active");
  EXPECT_TRUE(st.last_rotation.has_value());
  ASSERT_EQ(committed_.size(), 1u);
  EXPECT_EQ(committed_[0].certificate_id, new_id);

  // And back to A on the next rotation.
  d->RequestRenewal(nullptr);
  d->Tick();
  ExpectWorkingIdentity("identity-a");
  EXPECT_FALSE(HasKey("identity-b"));
}

TEST_F(DaemonTest, CompanionRequestIsActedOnOnceAndClearedRequestIgnored) {
  InstallIdentity("identity-a");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  sh::RotationRequest req{kRotationId, "operator", clock_.Now(), clock_.Now() + hours(1)};
  std::string payload = *sh::EncodeRotationRequest(req);
  broker_.s.handlers.on_message({"certfleet/things/gw-0001/rotation/request", payload, true});
  d->Tick();
  ExpectWorkingIdentity("identity-b");
  auto acks = broker_.On("rotation/ack");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(sh::DecodeRotationAck(acks[0].payload)->rotation_id, kRotationId);
  EXPECT_EQ(Saved().last_rotation_id, kRotationId);

  // The retained request comes back on reconnect until the companion clears it.
  broker_.s.handlers.on_message({"certfleet/things/gw-0001/rotation/request", payload, true});
  broker_.s.handlers.on_message({"certfleet/things/gw-0001/rotation/request", "", true});
  broker_.s.handlers.on_message({"certfleet/things/gw-0001/rotation/request", "{\"bad\":1}", true});
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  ExpectWorkingIdentity("identity-b");
  // The companion may never have seen the first ack (it was down): each time the request
  // comes back, the same signed ack goes out again; nothing else happens.
  auto again = broker_.On("rotation/ack");
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[1].payload, acks[0].payload);
  EXPECT_EQ(Saved().last_ack, acks[0].payload);
}

TEST_F(DaemonTest, PolicyThresholdTriggersRotationOnlyOnATrustedClock) {
  InstallIdentity("identity-a");
  time_sync_file_ = "/run/systemd/timesync/synchronized";
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  clock_.Advance(hours(12));
  d->Tick();
  EXPECT_EQ(enroller_.calls, 0);  // not due yet
  clock_.Advance(hours(11));      // past 80 % of the 25 h lifetime
  d->Tick();
  EXPECT_EQ(enroller_.calls, 0);  // due, but the clock is not synchronised
  EXPECT_TRUE(d->Snapshot().clock_trusted == false);
  ASSERT_TRUE(fs_.WriteFileAtomic(time_sync_file_, "", 0644).ok());
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  ExpectWorkingIdentity("identity-b");
}

TEST_F(DaemonTest, ClockBehindLastTrustedTimeIsNotTrusted) {
  InstallIdentity("identity-a");
  Journal j = ActiveJournal("identity-a");
  j.last_trusted_time = clock_.Now() + hours(24 * 400);  // e.g. a reset RTC after a power loss
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  clock_.Advance(hours(23));
  d->Tick();
  EXPECT_EQ(enroller_.calls, 0);
  EXPECT_FALSE(d->Snapshot().clock_trusted);
  // An explicit request does not depend on our clock.
  d->RequestRenewal(nullptr);
  d->Tick();
  ExpectWorkingIdentity("identity-b");
}

TEST_F(DaemonTest, EnrollFailureRollsBackKeepsTheNewKeyAndRetriesWithBackoff) {
  std::string old_id = InstallIdentity("identity-a");
  enroller_.fail = 1;
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  std::string result;
  d->RequestRenewal([&](const std::string& r) { result = r; });
  d->Tick();
  ExpectWorkingIdentity("identity-a");
  EXPECT_EQ(CertFileId(), old_id);
  EXPECT_NE(result.find("error"), std::string::npos);
  Journal j = Saved();
  EXPECT_EQ(j.failures, 1);
  EXPECT_TRUE(j.next_attempt.has_value());
  EXPECT_TRUE(j.rotation_requested);
  EXPECT_NE(j.last_error.find("unreachable"), std::string::npos);
  EXPECT_TRUE(HasKey("identity-b"));  // kept for the next attempt
  auto pending_key = sh::PublicKeyDer((*keys_.Load("identity-b"))->pkey());

  d->Tick();  // still backing off
  EXPECT_EQ(enroller_.calls, 1);
  clock_.Advance(hours(7));
  d->Tick();
  ExpectWorkingIdentity("identity-b");
  ASSERT_EQ(enroller_.new_keys.size(), 1u);
  EXPECT_EQ(enroller_.new_keys[0], *pending_key);
  EXPECT_EQ(Saved().failures, 0);
  EXPECT_EQ(Saved().last_error, "");
}

TEST_F(DaemonTest, AckFailureRollsBackToTheOldIdentity) {
  std::string old_id = InstallIdentity("identity-a");
  broker_.s.fail_ack = true;
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  d->RequestRenewal(nullptr);
  d->Tick();
  ExpectWorkingIdentity("identity-a");
  EXPECT_EQ(CertFileId(), old_id);
  EXPECT_EQ(broker_.s.connected_cert_ids.back(), old_id);  // reconnected with the old identity
  EXPECT_TRUE(d->connected());
  EXPECT_TRUE(HasKey("identity-b"));
}

TEST_F(DaemonTest, PendingConnectFailureRollsBack) {
  std::string old_id = InstallIdentity("identity-a");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  broker_.s.fail_connects = 1;
  d->RequestRenewal(nullptr);
  d->Tick();
  ExpectWorkingIdentity("identity-a");
  EXPECT_EQ(broker_.s.connected_cert_ids.back(), old_id);
}

TEST_F(DaemonTest, WrongKeyInIssuedCertificateIsRejected) {
  InstallIdentity("identity-a");
  enroller_.wrong_key = true;
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  d->RequestRenewal(nullptr);
  d->Tick();
  ExpectWorkingIdentity("identity-a");
  EXPECT_NE(Saved().last_error.find("public key"), std::string::npos);
}

TEST_F(DaemonTest, ReconnectAfterLossRetriesAFailedRotationAtOnce) {
  InstallIdentity("identity-a");
  enroller_.fail = 1;
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  d->RequestRenewal(nullptr);
  d->Tick();
  ASSERT_EQ(Saved().failures, 1);
  broker_.s.handlers.on_connection(false);
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  broker_.s.handlers.on_connection(true);
  d->Tick();
  EXPECT_EQ(enroller_.calls, 2);
  ExpectWorkingIdentity("identity-b");
}

TEST_F(DaemonTest, BrokerDownAtStartIsRetried) {
  InstallIdentity("identity-a");
  broker_.s.fail_connects = 2;
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  EXPECT_FALSE(d->connected());
  for (int i = 0; i < 3 && !d->connected(); ++i) {
    clock_.SetWall(d->NextWakeup());
    d->Tick();
  }
  EXPECT_TRUE(d->connected());
}

// ---- Crash points: the on-disk state each journaled step leaves, then a restart. ----

TEST_F(DaemonTest, CrashAfterKeyGeneratedRollsBackAndReusesTheKey) {
  InstallIdentity("identity-a");
  ASSERT_TRUE(keys_.Generate("identity-b", sh::KeyType::kEcP256));
  auto leftover = sh::PublicKeyDer((*keys_.Load("identity-b"))->pkey());
  Journal j = ActiveJournal("identity-a");
  j.state = AgentState::kRotating;
  j.pending = PendingRotation{"identity-b", "", "", ""};
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-a");
  EXPECT_TRUE(HasKey("identity-b"));
  EXPECT_TRUE(d->connected());
  clock_.Advance(hours(7));
  d->Tick();
  ExpectWorkingIdentity("identity-b");
  ASSERT_EQ(enroller_.new_keys.size(), 1u);
  EXPECT_EQ(enroller_.new_keys[0], *leftover);
}

TEST_F(DaemonTest, CrashAfterIssuanceResumesTheProof) {
  std::string old_id = InstallIdentity("identity-a");
  ASSERT_TRUE(keys_.Generate("identity-b", sh::KeyType::kEcP256));
  Journal j = ActiveJournal("identity-a");
  j.state = AgentState::kVerifying;
  j.pending = PendingRotation{"identity-b", kRotationId, IssueFor("identity-b"), ""};
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  EXPECT_EQ(broker_.s.connected_cert_ids.size(), 0u);  // not with the old identity first
  d->Tick();
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
  EXPECT_EQ(enroller_.calls, 0);
  auto acks = broker_.On("rotation/ack");
  ASSERT_EQ(acks.size(), 1u);
  auto ack = sh::DecodeRotationAck(acks[0].payload);
  EXPECT_EQ(ack->rotation_id, kRotationId);
  EXPECT_EQ(ack->previous_certificate_id, old_id);
}

TEST_F(DaemonTest, CrashAfterIssuanceWithAnUnusableCertificateRollsBack) {
  InstallIdentity("identity-a");
  ASSERT_TRUE(keys_.Generate("identity-b", sh::KeyType::kEcP256));
  Journal j = ActiveJournal("identity-a");
  j.state = AgentState::kVerifying;
  j.pending = PendingRotation{"identity-b", "", IssueFor("identity-a"), ""};  // not for key B
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  d->Tick();
  ExpectWorkingIdentity("identity-a");
  EXPECT_TRUE(HasKey("identity-b"));
  EXPECT_TRUE(broker_.On("rotation/ack").empty());
}

TEST_F(DaemonTest, CrashAfterAckRollsForward) {
  InstallIdentity("identity-a");
  ASSERT_TRUE(keys_.Generate("identity-b", sh::KeyType::kEcP256));
  Journal j = ActiveJournal("identity-a");
  j.state = AgentState::kCommitting;
  j.pending = PendingRotation{"identity-b", kRotationId, IssueFor("identity-b"), ""};
  j.rotation_requested = true;
  j.requested_rotation_id = kRotationId;
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
  EXPECT_EQ(Saved().last_rotation_id, kRotationId);
  EXPECT_FALSE(Saved().rotation_requested);
  EXPECT_EQ(committed_.size(), 1u);
  EXPECT_TRUE(d->connected());
  EXPECT_EQ(broker_.s.connected_cert_ids.back(), CertFileId());
}

TEST_F(DaemonTest, CrashAfterTheFlipFinishesTheCommit) {
  InstallIdentity("identity-a");
  ASSERT_TRUE(keys_.Generate("identity-b", sh::KeyType::kEcP256));
  std::string pem = IssueFor("identity-b");
  ASSERT_TRUE(fs_.WriteFileAtomic(kCertFile, pem, 0644).ok());  // the flip happened
  Journal j = ActiveJournal("identity-a");
  j.state = AgentState::kCommitting;
  j.pending = PendingRotation{"identity-b", "", pem, ""};
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
}

TEST_F(DaemonTest, CrashBeforeTheOldKeyWasDeletedDeletesItOnStart) {
  InstallIdentity("identity-b");
  ASSERT_TRUE(keys_.Generate("identity-a", sh::KeyType::kEcP256));
  Journal j = ActiveJournal("identity-b");
  j.retired_slot = "identity-a";
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
  EXPECT_EQ(Saved().retired_slot, "");
}

TEST_F(DaemonTest, NeverDeletesTheKeyThatCertifiesTheCertificateFile) {
  // A journal that disagrees with the file (e.g. restored from a backup): the file wins.
  InstallIdentity("identity-b");
  ASSERT_TRUE(keys_.Generate("identity-a", sh::KeyType::kEcP256));
  Journal j = ActiveJournal("identity-a");
  j.retired_slot = "identity-b";
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-b");
  EXPECT_TRUE(HasKey("identity-b"));
  EXPECT_TRUE(HasKey("identity-a"));  // not retired: it may be a pending key
}

TEST_F(DaemonTest, JournalWriteFailureBeforeRotationChangesNothing) {
  std::string old_id = InstallIdentity("identity-a");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  fs_.FailWrites(true);
  d->RequestRenewal(nullptr);
  d->Tick();
  fs_.FailWrites(false);
  EXPECT_EQ(CertFileId(), old_id);
  EXPECT_TRUE(HasKey("identity-a"));
  EXPECT_EQ(enroller_.calls, 0);
}

// ---- Expired certificate recovery ----

const Status kExpiredRefusal(Code::kPermissionDenied,
                             "EST simplereenroll: HTTP 403: expired_certificate: client certificate expired at ...");

TEST(ExpiryRefusalTest, RecognisesTheCompanionsAnswerAndTlsAlerts) {
  EXPECT_TRUE(IsExpiryRefusal(kExpiredRefusal));
  EXPECT_TRUE(IsExpiryRefusal(Status(Code::kUnavailable, "TLS: sslv3 alert certificate expired")));
  EXPECT_FALSE(IsExpiryRefusal(Status(Code::kPermissionDenied, "EST simplereenroll: HTTP 403: client certificate is revoked")));
  EXPECT_FALSE(IsExpiryRefusal(Status(Code::kUnavailable, "EST server unreachable")));
}

TEST_F(DaemonTest, ExpiredCertificateReenrollsWhenTheCompanionAllowsIt) {
  std::string old_id = InstallExpiredIdentity("identity-a");
  int recoveries = 0;
  recover_ = [&](const std::string&) {
    recoveries++;
    return Status(Code::kInternal, "not expected");
  };
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  EXPECT_EQ(recoveries, 0);
  ExpectWorkingIdentity("identity-b");
  EXPECT_NE(CertFileId(), old_id);
}

TEST_F(DaemonTest, ExpiredAndRefusedRecoversThroughClaimProvisioning) {
  std::string old_id = InstallIdentity("identity-a");
  enroller_.refuse = kExpiredRefusal;
  std::vector<std::string> slots;
  recover_ = [&](const std::string& slot) -> Status {
    slots.push_back(slot);
    // Journaled before it runs, and the old identity is untouched meanwhile.
    EXPECT_EQ(Saved().state, AgentState::kRecovering);
    EXPECT_EQ(SlotCertifiedBy(fs_, keys_, kCertFile, {"identity-a"}), "identity-a");
    auto key = keys_.Load(slot);  // the rotation's uncertified key is reused
    EXPECT_TRUE(key);
    if (!key) return Status(Code::kInternal, "no key");
    return fs_.WriteFileAtomic(kCertFile, sh::CertToPem(ca_.Issue(Name(kThing).get(), (*key)->pkey()).get()), 0644);
  };
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  clock_.Advance(hours(30));
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  EXPECT_EQ(slots, std::vector<std::string>{"identity-b"});
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));  // deleted only after the commit
  std::string new_id = CertFileId();
  EXPECT_NE(new_id, old_id);
  EXPECT_EQ(Saved().failures, 0);
  EXPECT_TRUE(Saved().last_error.empty());
  ASSERT_EQ(committed_.size(), 1u);
  EXPECT_EQ(committed_[0].certificate_id, new_id);
  EXPECT_TRUE(log_.Contains("recovering through claim provisioning"));
  EXPECT_TRUE(log_.Contains("expired-certificate recovery committed"));
  EXPECT_EQ(broker_.s.connected_cert_ids.back(), new_id);
}

TEST_F(DaemonTest, FailedRecoveryKeepsTheExpiredIdentityAndRetries) {
  InstallIdentity("identity-a");
  enroller_.refuse = kExpiredRefusal;
  int calls = 0;
  recover_ = [&](const std::string&) {
    calls++;
    return Status(Code::kUnavailable, "claim listener unreachable");
  };
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  clock_.Advance(hours(30));
  d->Tick();
  EXPECT_EQ(calls, 1);
  ExpectWorkingIdentity("identity-a");
  EXPECT_TRUE(HasKey("identity-a"));
  Journal j = Saved();
  EXPECT_EQ(j.failures, 1);
  EXPECT_NE(j.last_error.find("claim listener unreachable"), std::string::npos) << j.last_error;
  EXPECT_TRUE(log_.Contains("expired-certificate recovery failed"));
  d->Tick();  // backoff
  EXPECT_EQ(calls, 1);
  clock_.Advance(hours(7));
  d->Tick();
  EXPECT_EQ(calls, 2);
}

TEST_F(DaemonTest, OtherRefusalsOfAnExpiredCertificateDoNotRecover) {
  InstallIdentity("identity-a");
  enroller_.refuse = Status(Code::kPermissionDenied, "EST simplereenroll: HTTP 403: client certificate is revoked");
  int calls = 0;
  recover_ = [&](const std::string&) {
    calls++;
    return Status::Ok();
  };
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  clock_.Advance(hours(30));
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  EXPECT_EQ(calls, 0);
  ExpectWorkingIdentity("identity-a");
  EXPECT_EQ(Saved().failures, 1);
}

TEST_F(DaemonTest, UntrustedClockMakesNoExpiryDecision) {
  InstallIdentity("identity-a");
  time_sync_file_ = "/run/systemd/timesync/synchronized";  // never created: not synchronised
  enroller_.refuse = kExpiredRefusal;
  int calls = 0;
  recover_ = [&](const std::string&) {
    calls++;
    return Status::Ok();
  };
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  clock_.Advance(hours(30));
  d->Tick();
  EXPECT_EQ(enroller_.calls, 0);
  EXPECT_EQ(calls, 0);
  ExpectWorkingIdentity("identity-a");
  // An explicit renewal still re-enrolls, but a refusal is not taken as expiry: no recovery.
  d->RequestRenewal(nullptr);
  d->Tick();
  EXPECT_EQ(enroller_.calls, 1);
  EXPECT_EQ(calls, 0);
  ExpectWorkingIdentity("identity-a");
}

TEST_F(DaemonTest, CrashDuringRecoveryFollowsWhatWasCommitted) {
  InstallIdentity("identity-a");
  ASSERT_TRUE(keys_.Generate("identity-b", sh::KeyType::kEcP256));
  Journal j = ActiveJournal("identity-a");
  j.state = AgentState::kRecovering;
  SaveJournal(j);
  {
    // Not committed: back to the old identity, which is retried later.
    auto d = NewDaemon();
    ASSERT_TRUE(d->Start().ok());
    ExpectWorkingIdentity("identity-a");
    EXPECT_EQ(Saved().failures, 1);
  }
  // Committed before the crash: the new identity is adopted and the old key deleted.
  ASSERT_TRUE(fs_.WriteFileAtomic(kCertFile, IssueFor("identity-b"), 0644).ok());
  SaveJournal(j);
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
}

TEST_F(DaemonTest, DiskFullWritingTheNewCertificateRollsForwardOnceThereIsSpace) {
  std::string old_id = InstallIdentity("identity-a");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  disk_.FailWritesTo(kCertFile);
  std::string result;
  d->RequestRenewal([&](const std::string& r) { result = r; });
  d->Tick();

  // The broker took the ack, the file could not be replaced: the old identity is intact
  // and the proven new one is kept for the roll-forward.
  EXPECT_EQ(disk_.failed_writes, 1);
  EXPECT_EQ(CertFileId(), old_id);
  EXPECT_EQ(SlotCertifiedBy(fs_, keys_, kCertFile, {"identity-a", "identity-b"}), "identity-a");
  EXPECT_TRUE(HasKey("identity-a"));
  EXPECT_TRUE(HasKey("identity-b"));
  EXPECT_EQ(Saved().state, AgentState::kCommitting);
  EXPECT_EQ(d->journal().pending->slot, "identity-b");
  EXPECT_NE(d->journal().last_error.find("No space left"), std::string::npos);
  EXPECT_EQ(result, "");

  // Still full at the next attempt: retried, nothing lost.
  clock_.Advance(hours(1));
  d->Tick();
  EXPECT_EQ(disk_.failed_writes, 2);
  EXPECT_EQ(CertFileId(), old_id);
  EXPECT_TRUE(HasKey("identity-a"));

  // Space is back: the next attempt rolls forward without a second issuance.
  disk_.FailWritesTo("");
  clock_.Advance(hours(1));
  d->Tick();
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
  EXPECT_NE(CertFileId(), old_id);
  EXPECT_EQ(enroller_.calls, 1);
  EXPECT_EQ(result, "ok certificate_id=" + CertFileId());
  EXPECT_EQ(Saved().failures, 0);
  EXPECT_EQ(committed_.size(), 1u);
}

TEST_F(DaemonTest, DiskFullThenRestartRollsForwardOnStart) {
  std::string old_id = InstallIdentity("identity-a");
  {
    auto d = NewDaemon();
    ASSERT_TRUE(d->Start().ok());
    disk_.FailWritesTo(kCertFile);
    d->RequestRenewal(nullptr);
    d->Tick();
    EXPECT_EQ(Saved().state, AgentState::kCommitting);
  }
  EXPECT_EQ(CertFileId(), old_id);
  disk_.FailWritesTo("");
  auto d = NewDaemon();
  ASSERT_TRUE(d->Start().ok());
  ExpectWorkingIdentity("identity-b");
  EXPECT_FALSE(HasKey("identity-a"));
  EXPECT_EQ(enroller_.calls, 1);
}

}  // namespace
}  // namespace certfleet::agent
