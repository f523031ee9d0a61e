#include <sqlite3.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "companion/registry.h"
#include "shared/core/clock.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"

namespace certfleet::companion {
namespace {

using shared::Code;
using shared::TempDir;
using std::chrono::hours;
using std::chrono::seconds;

// Every time in these tests is relative to 2026-01-01T00:00:00Z.
const WallTime kNow = shared::FromUnixSeconds(1767225600);

// A raw SQLite connection to the registry file, bypassing the Registry code.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) == SQLITE_OK) {
      sqlite3_extended_result_codes(db_, 1);
      sqlite3_busy_timeout(db_, 5000);
    }
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  // The (extended) result code of running `sql`.
  int Exec(const std::string& sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    last_error_ = err != nullptr ? err : "";
    sqlite3_free(err);
    return rc == SQLITE_OK ? rc : sqlite3_extended_errcode(db_);
  }
  int64_t QueryInt(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
      v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
  }
  bool ok() const { return db_ != nullptr; }
  const std::string& last_error() const { return last_error_; }

 private:
  sqlite3* db_ = nullptr;
  std::string last_error_;
};

// 64 lower-case hex characters that differ per `seed`.
std::string HexId(const std::string& seed) { return shared::Sha256Hex(seed); }

CertRecord MakeCert(const std::string& thing, const std::string& serial, WallTime issued = kNow) {
  CertRecord c;
  c.id = HexId("cert:" + serial);
  c.thing_name = thing;
  c.serial = serial;
  c.subject = "CN=" + thing;
  c.not_before = issued - std::chrono::minutes(5);
  c.not_after = issued + hours(24 * 90);
  c.issued_at = issued;
  c.status = CertStatus::kActive;
  c.source = "test";
  c.pem = "-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n";
  return c;
}

IssueRecord Plain(CertRecord c) {
  IssueRecord r;
  r.cert = std::move(c);
  return r;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    path_ = dir_.path() + "/registry.sqlite3";
    auto reg = OpenSqliteRegistry(path_, {});
    ASSERT_TRUE(reg) << reg.error().ToString();
    reg_ = std::move(*reg);
  }

  size_t CountCerts() {
    auto all = reg_->ListCerts("", 1000);
    EXPECT_TRUE(all) << all.error().ToString();
    return all ? all->size() : 0;
  }
  std::optional<CertRecord> Find(const std::string& id) {
    auto c = reg_->FindCert(id);
    EXPECT_TRUE(c) << c.error().ToString();
    return c ? *c : std::nullopt;
  }
  // The ids of the thing's current (active, not superseded) certificates.
  std::vector<std::string> CurrentIds(const std::string& thing) {
    std::vector<std::string> out;
    auto all = reg_->ListCerts(thing, 1000);
    EXPECT_TRUE(all);
    if (!all) return out;
    for (const auto& c : *all) {
      if (c.status == CertStatus::kActive && !c.superseded_by) out.push_back(c.id);
    }
    return out;
  }
  // RecordIssued(rec, at) must be refused as FailedPrecondition, `why` in the message.
  void ExpectRefused(const IssueRecord& rec, WallTime at, const std::string& why) {
    Status st = reg_->RecordIssued(rec, at);
    EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
    EXPECT_NE(st.message().find(why), std::string::npos) << st.message();
  }
  // The token `hash` must be stored and not used yet.
  void ExpectTokenUnused(const std::string& hash) {
    auto tok = reg_->FindToken(hash);
    ASSERT_TRUE(tok && *tok);
    EXPECT_FALSE((*tok)->used_at);
  }
  std::string MakeToken(const std::string& name, const std::string& serial, WallTime expires = kNow + hours(1)) {
    std::string hash = HexId("token:" + name);
    Status st = reg_->CreateToken(hash, serial, kNow, expires);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return hash;
  }

  TempDir dir_;
  std::string path_;
  std::unique_ptr<Registry> reg_;
};

TEST(CertStatusTest, NamesRoundTrip) {
  for (CertStatus s : {CertStatus::kPendingActivation, CertStatus::kActive, CertStatus::kInactive,
                       CertStatus::kRevoked}) {
    auto parsed = ParseCertStatus(CertStatusName(s));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(CertStatusName(CertStatus::kActive), "ACTIVE");
  auto bad = ParseCertStatus("active");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), Code::kDataLoss);
}

TEST_F(RegistryTest, RecordIssuedCreatesThingAndCert) {
  CertRecord c = MakeCert("gw-1", "0A01");
  c.source = "est-enroll-token";
  ASSERT_TRUE(reg_->RecordIssued(Plain(c), kNow).ok());

  auto found = Find(c.id);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->id, c.id);
  EXPECT_EQ(found->thing_name, "gw-1");
  EXPECT_EQ(found->serial, "0A01");
  EXPECT_EQ(found->subject, "CN=gw-1");
  EXPECT_EQ(found->not_before, c.not_before);
  EXPECT_EQ(found->not_after, c.not_after);
  EXPECT_EQ(found->issued_at, kNow);
  EXPECT_EQ(found->status, CertStatus::kActive);
  EXPECT_EQ(found->source, "est-enroll-token");
  EXPECT_FALSE(found->superseded_by);
  EXPECT_FALSE(found->superseded_at);
  EXPECT_EQ(found->pem, c.pem);

  auto things = reg_->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].name, "gw-1");
  EXPECT_EQ((*things)[0].created_at, kNow);
  EXPECT_EQ((*things)[0].current_cert_id, c.id);
  EXPECT_EQ((*things)[0].current_not_after, c.not_after);

  auto missing = reg_->FindCert(HexId("nope"));
  ASSERT_TRUE(missing);
  EXPECT_FALSE(*missing);
}

TEST_F(RegistryTest, QuarantinedThingGetsNoCertificate) {
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-1", "0A01")), kNow).ok());
  ASSERT_TRUE(reg_->SetQuarantine("gw-1", std::string("finding"), "test", kNow).ok());
  Status st = reg_->RecordIssued(Plain(MakeCert("gw-1", "0A02", kNow + seconds(1))), kNow + seconds(1));
  EXPECT_EQ(st.code(), Code::kPermissionDenied) << st.ToString();
  EXPECT_NE(st.message().find("quarantined"), std::string::npos);
  EXPECT_FALSE(Find(HexId("cert:0A02")));
  // The database holds the rule for any writer.
  {
    RawDb raw(path_);
    ASSERT_TRUE(raw.ok());
    EXPECT_NE(raw.Exec("INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, "
                       "status, source, pem) VALUES ('" + HexId("raw") + "', 'gw-1', '0A03', 'CN=gw-1', 1, 2, 1, "
                       "'ACTIVE', 'raw', 'pem')"),
              SQLITE_OK);
    EXPECT_NE(raw.last_error().find("quarantined"), std::string::npos) << raw.last_error();
  }
  ASSERT_TRUE(reg_->SetQuarantine("gw-1", std::nullopt, "test", kNow).ok());
  EXPECT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-1", "0A02", kNow + seconds(1))), kNow + seconds(1)).ok());
}

TEST_F(RegistryTest, DataSurvivesReopen) {
  CertRecord c = MakeCert("gw-1", "0A01");
  ASSERT_TRUE(reg_->RecordIssued(Plain(c), kNow).ok());
  reg_.reset();
  auto reopened = OpenSqliteRegistry(path_, {});
  ASSERT_TRUE(reopened) << reopened.error().ToString();
  auto found = (*reopened)->FindCert(c.id);
  ASSERT_TRUE(found);
  ASSERT_TRUE(*found);
  EXPECT_EQ((*found)->serial, "0A01");

  // Read-only (certfleetctl) with no writer open: the WAL side files are gone.
  reopened->reset();
  SqliteRegistryOptions ro;
  ro.read_only = true;
  auto read_only = OpenSqliteRegistry(path_, ro);
  ASSERT_TRUE(read_only) << read_only.error().ToString();
  auto listed = (*read_only)->ListCerts("", 10);
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), 1u);
  // ... and refuses to write.
  Status st = (*read_only)->RecordSecurityEvent({0, kNow, "k", "s", "d"});
  EXPECT_FALSE(st.ok());
}

TEST_F(RegistryTest, TokenIsConsumedWithTheCertificate) {
  std::string token = MakeToken("t1", "gw-1");
  auto before = reg_->FindToken(token);
  ASSERT_TRUE(before);
  ASSERT_TRUE(*before);
  EXPECT_EQ((*before)->serial, "gw-1");
  EXPECT_EQ((*before)->created_at, kNow);
  EXPECT_EQ((*before)->expires_at, kNow + hours(1));
  EXPECT_FALSE((*before)->used_at);

  IssueRecord first = Plain(MakeCert("gw-1", "0A01"));
  first.token_hash = token;
  ASSERT_TRUE(reg_->RecordIssued(first, kNow + seconds(10)).ok());
  auto after = reg_->FindToken(token);
  ASSERT_TRUE(after);
  ASSERT_TRUE(*after);
  EXPECT_EQ((*after)->used_at, kNow + seconds(10));

  // The second use stores nothing: no certificate, and the first stays current.
  IssueRecord second = Plain(MakeCert("gw-1", "0A02"));
  second.token_hash = token;
  size_t count = CountCerts();
  ExpectRefused(second, kNow + seconds(20), "already used");
  EXPECT_EQ(CountCerts(), count);
  EXPECT_FALSE(Find(second.cert.id));
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{first.cert.id});
  auto still = reg_->FindToken(token);
  ASSERT_TRUE(still && *still);
  EXPECT_EQ((*still)->used_at, kNow + seconds(10));
}

TEST_F(RegistryTest, UnknownTokenStoresNothing) {
  IssueRecord rec = Plain(MakeCert("gw-1", "0A01"));
  rec.token_hash = HexId("never created");
  Status st = reg_->RecordIssued(rec, kNow);
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_EQ(CountCerts(), 0u);
  auto things = reg_->ListThings(10);
  ASSERT_TRUE(things);
  EXPECT_TRUE(things->empty());
  auto tok = reg_->FindToken(*rec.token_hash);
  ASSERT_TRUE(tok);
  EXPECT_FALSE(*tok);
}

TEST_F(RegistryTest, ExpiredTokenIsRefused) {
  std::string token = MakeToken("t1", "gw-1", kNow + hours(1));
  IssueRecord rec = Plain(MakeCert("gw-1", "0A01"));
  rec.token_hash = token;
  // Expiry is exclusive: at expires_at the token is already dead.
  for (WallTime at : {kNow + hours(1), kNow + hours(2)}) ExpectRefused(rec, at, "expired");
  EXPECT_EQ(CountCerts(), 0u);
  ASSERT_NO_FATAL_FAILURE(ExpectTokenUnused(token));
  // One second before expiry it still works.
  EXPECT_TRUE(reg_->RecordIssued(rec, kNow + hours(1) - seconds(1)).ok());
}

TEST_F(RegistryTest, TokenBoundToAnotherSerialIsRefused) {
  std::string token = MakeToken("t1", "gw-2");
  IssueRecord rec = Plain(MakeCert("gw-1", "0A01"));
  rec.token_hash = token;
  ExpectRefused(rec, kNow, "another serial");
  EXPECT_EQ(CountCerts(), 0u);
  ExpectTokenUnused(token);
}

TEST_F(RegistryTest, CreateTokenTwiceIsAlreadyExists) {
  std::string token = MakeToken("t1", "gw-1");
  Status st = reg_->CreateToken(token, "gw-2", kNow, kNow + hours(1));
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  auto tok = reg_->FindToken(token);
  ASSERT_TRUE(tok && *tok);
  EXPECT_EQ((*tok)->serial, "gw-1");
}

TEST_F(RegistryTest, RequireNoCurrentRefusesASecondClaim) {
  IssueRecord first = Plain(MakeCert("gw-1", "0A01"));
  first.require_no_current = true;
  ASSERT_TRUE(reg_->RecordIssued(first, kNow).ok());

  IssueRecord second = Plain(MakeCert("gw-1", "0A02"));
  second.require_no_current = true;
  Status st = reg_->RecordIssued(second, kNow + seconds(1));
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_EQ(CountCerts(), 1u);
  auto cur = Find(first.cert.id);
  ASSERT_TRUE(cur);
  EXPECT_FALSE(cur->superseded_by);
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{first.cert.id});

  // Another thing is not affected.
  IssueRecord other = Plain(MakeCert("gw-2", "0B01"));
  other.require_no_current = true;
  EXPECT_TRUE(reg_->RecordIssued(other, kNow + seconds(2)).ok());
}

// A self-signed certificate for `key` (only its public key matters here).
std::string CertPemFor(EVP_PKEY* key, long serial) {
  shared::X509Ptr x(X509_new());
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_set_pubkey(x.get(), key);
  X509_sign(x.get(), key, EVP_sha256());
  return shared::CertToPem(x.get());
}

TEST_F(RegistryTest, ClaimRetriedWithTheSameKeyReplacesTheCurrentCertificate) {
  // The device lost the answer to its first claim enrollment and asks again with the
  // same key: the new certificate supersedes the lost one. Another key is refused.
  auto key = shared::GenerateKeyPair(shared::KeyType::kEcP256);
  auto other_key = shared::GenerateKeyPair(shared::KeyType::kEcP256);
  ASSERT_TRUE(key && other_key);
  IssueRecord first = Plain(MakeCert("gw-1", "0A01"));
  first.cert.pem = CertPemFor(key->get(), 1);
  first.require_no_current = true;
  ASSERT_TRUE(reg_->RecordIssued(first, kNow).ok());

  IssueRecord thief = Plain(MakeCert("gw-1", "0A02"));
  thief.cert.pem = CertPemFor(other_key->get(), 2);
  thief.require_no_current = true;
  EXPECT_EQ(reg_->RecordIssued(thief, kNow + seconds(1)).code(), Code::kFailedPrecondition);

  IssueRecord retry = Plain(MakeCert("gw-1", "0A03"));
  retry.cert.pem = CertPemFor(key->get(), 3);
  retry.require_no_current = true;
  ASSERT_TRUE(reg_->RecordIssued(retry, kNow + seconds(2)).ok());
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{retry.cert.id});
  auto lost = Find(first.cert.id);
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->superseded_by, retry.cert.id);
}

TEST_F(RegistryTest, ReenrollmentSupersedesTheCurrentCertificate) {
  IssueRecord a = Plain(MakeCert("gw-1", "0A01"));
  ASSERT_TRUE(reg_->RecordIssued(a, kNow).ok());
  IssueRecord b = Plain(MakeCert("gw-1", "0A02", kNow + hours(1)));
  b.replaces_cert_id = a.cert.id;
  ASSERT_TRUE(reg_->RecordIssued(b, kNow + hours(1)).ok());

  auto old_cert = Find(a.cert.id);
  ASSERT_TRUE(old_cert);
  EXPECT_EQ(old_cert->superseded_by, b.cert.id);
  EXPECT_EQ(old_cert->superseded_at, kNow + hours(1));
  EXPECT_EQ(old_cert->status, CertStatus::kActive);
  auto new_cert = Find(b.cert.id);
  ASSERT_TRUE(new_cert);
  EXPECT_FALSE(new_cert->superseded_by);
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{b.cert.id});

  auto things = reg_->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].current_cert_id, b.cert.id);
  EXPECT_EQ((*things)[0].created_at, kNow);

  // A plain second issue (no replaces) also moves the current pointer.
  IssueRecord c = Plain(MakeCert("gw-1", "0A03", kNow + hours(2)));
  ASSERT_TRUE(reg_->RecordIssued(c, kNow + hours(2)).ok());
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{c.cert.id});
  auto b_after = Find(b.cert.id);
  ASSERT_TRUE(b_after);
  EXPECT_EQ(b_after->superseded_by, c.cert.id);
}

TEST_F(RegistryTest, PartialUniqueIndexAllowsOneCurrentCertificate) {
  IssueRecord a = Plain(MakeCert("gw-1", "0A01"));
  ASSERT_TRUE(reg_->RecordIssued(a, kNow).ok());

  RawDb raw(path_);
  ASSERT_TRUE(raw.ok());
  // A second active, not superseded certificate for the same thing.
  int rc = raw.Exec(
      "INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, status, source, pem) "
      "VALUES ('" + HexId("raw") + "', 'gw-1', 'FF01', 'CN=gw-1', 1, 2, 1, 'ACTIVE', 'raw', 'x')");
  EXPECT_EQ(rc, SQLITE_CONSTRAINT_UNIQUE) << raw.last_error();
  // Inactive or revoked ones are not current and may coexist.
  rc = raw.Exec(
      "INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, status, source, pem) "
      "VALUES ('" + HexId("raw") + "', 'gw-1', 'FF01', 'CN=gw-1', 1, 2, 1, 'REVOKED', 'raw', 'x')");
  EXPECT_EQ(rc, SQLITE_OK) << raw.last_error();
  EXPECT_EQ(raw.QueryInt("SELECT count(*) FROM certificates WHERE thing_name = 'gw-1' AND status = 'ACTIVE' "
                         "AND superseded_by IS NULL"),
            1);
}

TEST_F(RegistryTest, RetriedReenrollmentPointsTheOldCertificateAtTheNewest) {
  IssueRecord a = Plain(MakeCert("gw-1", "0A01"));
  ASSERT_TRUE(reg_->RecordIssued(a, kNow).ok());
  IssueRecord b = Plain(MakeCert("gw-1", "0A02"));
  b.replaces_cert_id = a.cert.id;
  ASSERT_TRUE(reg_->RecordIssued(b, kNow + hours(1)).ok());
  // The device never saw B and retries with A.
  IssueRecord c = Plain(MakeCert("gw-1", "0A03"));
  c.replaces_cert_id = a.cert.id;
  ASSERT_TRUE(reg_->RecordIssued(c, kNow + hours(2)).ok());

  auto a_now = Find(a.cert.id);
  ASSERT_TRUE(a_now);
  EXPECT_EQ(a_now->superseded_by, c.cert.id);
  // The grace period keeps counting from the first replacement.
  EXPECT_EQ(a_now->superseded_at, kNow + hours(1));
  auto b_now = Find(b.cert.id);
  ASSERT_TRUE(b_now);
  EXPECT_EQ(b_now->superseded_by, c.cert.id);
  EXPECT_EQ(b_now->superseded_at, kNow + hours(2));
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{c.cert.id});
  EXPECT_EQ(CountCerts(), 3u);
}

TEST_F(RegistryTest, DuplicateSerialRollsBack) {
  std::string token = MakeToken("t1", "gw-1", kNow + hours(24));
  IssueRecord a = Plain(MakeCert("gw-1", "0A01"));
  ASSERT_TRUE(reg_->RecordIssued(a, kNow).ok());

  // Same serial, different id, with a token and replacing A: all of it must roll back.
  IssueRecord dup = Plain(MakeCert("gw-1", "0A01"));
  dup.cert.id = HexId("another id");
  dup.token_hash = token;
  dup.replaces_cert_id = a.cert.id;
  Status st = reg_->RecordIssued(dup, kNow + hours(1));
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  EXPECT_EQ(CountCerts(), 1u);
  auto a_now = Find(a.cert.id);
  ASSERT_TRUE(a_now);
  EXPECT_FALSE(a_now->superseded_by);
  EXPECT_FALSE(a_now->superseded_at);
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{a.cert.id});
  ASSERT_NO_FATAL_FAILURE(ExpectTokenUnused(token));

  // Same id, different serial: also kAlreadyExists, and a new thing is not left behind.
  IssueRecord dup_id = Plain(MakeCert("gw-9", "0A09"));
  dup_id.cert.id = a.cert.id;
  st = reg_->RecordIssued(dup_id, kNow + hours(1));
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  auto things = reg_->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].name, "gw-1");

  // The registry is still usable after the rollbacks.
  IssueRecord good = Plain(MakeCert("gw-1", "0A02"));
  good.token_hash = token;
  EXPECT_TRUE(reg_->RecordIssued(good, kNow + hours(2)).ok());
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{good.cert.id});
}

TEST_F(RegistryTest, ConcurrentUsesOfOneTokenSucceedOnce) {
  std::string token = MakeToken("t1", "gw-1");
  constexpr int kThreads = 6;
  std::vector<std::unique_ptr<Registry>> conns;
  for (int i = 0; i < kThreads; ++i) {
    auto r = OpenSqliteRegistry(path_, {});
    ASSERT_TRUE(r) << r.error().ToString();
    conns.push_back(std::move(*r));
  }
  std::atomic<int> ok{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      IssueRecord rec = Plain(MakeCert("gw-1", "0C0" + std::to_string(i)));
      rec.token_hash = token;
      Status st = conns[static_cast<size_t>(i)]->RecordIssued(rec, kNow);
      if (st.ok()) {
        ++ok;
      } else if (st.code() == Code::kFailedPrecondition) {
        ++refused;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(refused.load(), kThreads - 1);
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(RegistryTest, ListCertsFiltersAndLimits) {
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-1", "0A01")), kNow).ok());
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-2", "0B01")), kNow + seconds(1)).ok());
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-1", "0A02")), kNow + seconds(2)).ok());
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-1", "0A03")), kNow + seconds(2)).ok());

  auto all = reg_->ListCerts("", 100);
  ASSERT_TRUE(all);
  std::vector<std::string> serials;
  for (const auto& c : *all) serials.push_back(c.serial);
  EXPECT_EQ(serials, (std::vector<std::string>{"0A01", "0B01", "0A02", "0A03"}));

  auto gw1 = reg_->ListCerts("gw-1", 100);
  ASSERT_TRUE(gw1);
  serials.clear();
  for (const auto& c : *gw1) serials.push_back(c.serial);
  EXPECT_EQ(serials, (std::vector<std::string>{"0A01", "0A02", "0A03"}));

  auto limited = reg_->ListCerts("gw-1", 2);
  ASSERT_TRUE(limited);
  ASSERT_EQ(limited->size(), 2u);
  EXPECT_EQ((*limited)[0].serial, "0A01");
  EXPECT_EQ((*limited)[1].serial, "0A02");

  auto none = reg_->ListCerts("gw-unknown", 100);
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
  auto zero = reg_->ListCerts("", 0);
  ASSERT_TRUE(zero);
  EXPECT_TRUE(zero->empty());
}

TEST_F(RegistryTest, ListThingsShowsTheCurrentCertificate) {
  CertRecord b1 = MakeCert("gw-b", "0B01");
  CertRecord a1 = MakeCert("gw-a", "0A01");
  CertRecord a2 = MakeCert("gw-a", "0A02");
  a2.not_after = kNow + hours(24 * 180);
  CertRecord c1 = MakeCert("gw-c", "0C01");
  c1.status = CertStatus::kRevoked;
  ASSERT_TRUE(reg_->RecordIssued(Plain(b1), kNow).ok());
  ASSERT_TRUE(reg_->RecordIssued(Plain(a1), kNow).ok());
  IssueRecord re = Plain(a2);
  re.replaces_cert_id = a1.id;
  ASSERT_TRUE(reg_->RecordIssued(re, kNow + hours(1)).ok());
  ASSERT_TRUE(reg_->RecordIssued(Plain(c1), kNow).ok());

  auto things = reg_->ListThings(100);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 3u);
  EXPECT_EQ((*things)[0].name, "gw-a");
  EXPECT_EQ((*things)[0].current_cert_id, a2.id);
  EXPECT_EQ((*things)[0].current_not_after, a2.not_after);
  EXPECT_EQ((*things)[1].name, "gw-b");
  EXPECT_EQ((*things)[1].current_cert_id, b1.id);
  EXPECT_EQ((*things)[2].name, "gw-c");
  EXPECT_FALSE((*things)[2].current_cert_id);  // only a revoked certificate
  EXPECT_FALSE((*things)[2].current_not_after);

  auto limited = reg_->ListThings(1);
  ASSERT_TRUE(limited);
  ASSERT_EQ(limited->size(), 1u);
  EXPECT_EQ((*limited)[0].name, "gw-a");
}

TEST_F(RegistryTest, NonActiveCertificateDoesNotSupersede) {
  IssueRecord a = Plain(MakeCert("gw-1", "0A01"));
  ASSERT_TRUE(reg_->RecordIssued(a, kNow).ok());
  CertRecord pending = MakeCert("gw-1", "0A02");
  pending.status = CertStatus::kPendingActivation;
  ASSERT_TRUE(reg_->RecordIssued(Plain(pending), kNow + seconds(1)).ok());
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{a.cert.id});
  auto p = Find(pending.id);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, CertStatus::kPendingActivation);
}

TEST_F(RegistryTest, SecurityEventsRoundTrip) {
  ASSERT_TRUE(reg_->RecordSecurityEvent({0, kNow, "token_reused", "serial:gw-1", "first"}).ok());
  ASSERT_TRUE(reg_->RecordSecurityEvent({0, kNow + seconds(5), "unknown_client_cert", HexId("x"), "second"}).ok());
  ASSERT_TRUE(reg_->RecordSecurityEvent({0, kNow + seconds(9), "bad_request", "198.51.100.7:4000",
                                         "with \"quotes\" and\nnewline"})
                  .ok());

  auto events = reg_->ListSecurityEvents(10);
  ASSERT_TRUE(events);
  ASSERT_EQ(events->size(), 3u);
  // Newest first.
  EXPECT_EQ((*events)[0].kind, "bad_request");
  EXPECT_EQ((*events)[0].subject, "198.51.100.7:4000");
  EXPECT_EQ((*events)[0].detail, "with \"quotes\" and\nnewline");
  EXPECT_EQ((*events)[0].at, kNow + seconds(9));
  EXPECT_EQ((*events)[1].kind, "unknown_client_cert");
  EXPECT_EQ((*events)[1].subject, HexId("x"));
  EXPECT_EQ((*events)[2].kind, "token_reused");
  EXPECT_EQ((*events)[2].subject, "serial:gw-1");
  EXPECT_EQ((*events)[2].detail, "first");
  EXPECT_EQ((*events)[2].at, kNow);
  EXPECT_GT((*events)[0].id, (*events)[1].id);
  EXPECT_GT((*events)[1].id, (*events)[2].id);

  auto limited = reg_->ListSecurityEvents(1);
  ASSERT_TRUE(limited);
  ASSERT_EQ(limited->size(), 1u);
  EXPECT_EQ((*limited)[0].kind, "bad_request");
}

TEST_F(RegistryTest, NewerSchemaVersionIsRefused) {
  reg_.reset();
  {
    RawDb raw(path_);
    ASSERT_TRUE(raw.ok());
    ASSERT_EQ(raw.Exec("PRAGMA user_version = 99"), SQLITE_OK) << raw.last_error();
  }
  auto rw = OpenSqliteRegistry(path_, {});
  ASSERT_FALSE(rw);
  EXPECT_EQ(rw.error().code(), Code::kFailedPrecondition) << rw.error().ToString();
  EXPECT_NE(rw.error().message().find(path_), std::string::npos) << rw.error().message();

  SqliteRegistryOptions ro;
  ro.read_only = true;
  auto read_only = OpenSqliteRegistry(path_, ro);
  ASSERT_FALSE(read_only);
  EXPECT_EQ(read_only.error().code(), Code::kFailedPrecondition) << read_only.error().ToString();
  EXPECT_NE(read_only.error().message().find("schema version 99"), std::string::npos)
      << read_only.error().message();
}

TEST(RegistryOpenTest, ReadOnlyOpenOfAMissingFileFailsWithoutCreatingIt) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string path = dir.path() + "/missing.sqlite3";
  SqliteRegistryOptions ro;
  ro.read_only = true;
  auto reg = OpenSqliteRegistry(path, ro);
  ASSERT_FALSE(reg);
  EXPECT_NE(reg.error().message().find(path), std::string::npos) << reg.error().ToString();
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(RegistryOpenTest, ReadOnlyOpenOfAnEmptyDatabaseIsFailedPrecondition) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string path = dir.path() + "/fresh.sqlite3";
  {
    RawDb raw(path);  // creates an empty database (schema version 0)
    ASSERT_TRUE(raw.ok());
    ASSERT_EQ(raw.Exec("PRAGMA user_version = 0"), SQLITE_OK);
  }
  SqliteRegistryOptions ro;
  ro.read_only = true;
  auto reg = OpenSqliteRegistry(path, ro);
  ASSERT_FALSE(reg);
  EXPECT_EQ(reg.error().code(), Code::kFailedPrecondition) << reg.error().ToString();
  EXPECT_NE(reg.error().message().find("schema version 0"), std::string::npos) << reg.error().message();
  // A read-only open must not have migrated it.
  RawDb raw(path);
  EXPECT_EQ(raw.QueryInt("PRAGMA user_version"), 0);
  EXPECT_EQ(raw.QueryInt("SELECT count(*) FROM sqlite_schema WHERE name = 'certificates'"), 0);
}

TEST(RegistryOpenTest, NotADatabaseIsAnError) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string path = dir.path() + "/garbage.sqlite3";
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::string junk(4096, 'x');
    std::fwrite(junk.data(), 1, junk.size(), f);
    std::fclose(f);
  }
  auto reg = OpenSqliteRegistry(path, {});
  ASSERT_FALSE(reg);
  EXPECT_EQ(reg.error().code(), Code::kDataLoss) << reg.error().ToString();
}

TEST(RegistryOpenTest, SchemaVersionAfterMigrationIsTheLatest) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string path = dir.path() + "/r.sqlite3";
  ASSERT_TRUE(OpenSqliteRegistry(path, {}));
  int64_t version = 0;
  {
    RawDb raw(path);
    version = raw.QueryInt("PRAGMA user_version");
  }
  // At least the rotation schema (4); the exact number moves as migrations are appended.
  EXPECT_GE(version, 4);
  // Opening again does not re-run the migration.
  auto again = OpenSqliteRegistry(path, {});
  ASSERT_TRUE(again) << again.error().ToString();
  RawDb raw(path);
  EXPECT_EQ(raw.QueryInt("PRAGMA user_version"), version);
}

// The invariants hold for anything that writes to the file, not only for our code.
TEST_F(RegistryTest, SchemaConstraintsRejectBadRowsFromRawSql) {
  RawDb raw(path_);
  ASSERT_TRUE(raw.ok());
  ASSERT_EQ(raw.Exec("PRAGMA foreign_keys = ON"), SQLITE_OK);
  ASSERT_EQ(raw.Exec("INSERT INTO things(name, created_at) VALUES ('gw-1', 1)"), SQLITE_OK) << raw.last_error();

  const std::string good_id = HexId("good");
  auto insert_cert = [&](const std::string& id, const std::string& thing, const std::string& serial,
                         const std::string& not_before, const std::string& not_after, const std::string& status,
                         const std::string& superseded_by, const std::string& superseded_at) {
    return raw.Exec(
        "INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, status, source, "
        "superseded_by, superseded_at, pem) VALUES (" +
        id + ", " + thing + ", " + serial + ", 'CN=x', " + not_before + ", " + not_after + ", 1, " + status +
        ", 'raw', " + superseded_by + ", " + superseded_at + ", 'pem')");
  };
  const std::string q_good = "'" + good_id + "'";

  struct Case {
    const char* what;
    int rc;
  };
  std::vector<Case> cases = {
      {"id too short", insert_cert("'abc'", "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "NULL", "NULL")},
      {"id upper-case hex",
       insert_cert("'" + std::string(64, 'A') + "'", "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "NULL", "NULL")},
      {"id not hex", insert_cert("'" + std::string(64, 'g') + "'", "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "NULL",
                                 "NULL")},
      {"id 65 hex", insert_cert("'" + good_id + "0'", "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "NULL", "NULL")},
      {"empty serial", insert_cert(q_good, "'gw-1'", "''", "1", "2", "'ACTIVE'", "NULL", "NULL")},
      {"serial too long", insert_cert(q_good, "'gw-1'", "'" + std::string(41, '1') + "'", "1", "2", "'ACTIVE'",
                                      "NULL", "NULL")},
      {"not_after before not_before", insert_cert(q_good, "'gw-1'", "'01'", "5", "5", "'ACTIVE'", "NULL", "NULL")},
      {"unknown status", insert_cert(q_good, "'gw-1'", "'01'", "1", "2", "'active'", "NULL", "NULL")},
      {"superseded_by without superseded_at",
       insert_cert(q_good, "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "'" + HexId("other") + "'", "NULL")},
      {"superseded_at without superseded_by", insert_cert(q_good, "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "NULL", "7")},
      {"text in an INTEGER column (STRICT)",
       insert_cert(q_good, "'gw-1'", "'01'", "'yesterday'", "2", "'ACTIVE'", "NULL", "NULL")},
      {"unknown thing (foreign key)", insert_cert(q_good, "'gw-404'", "'01'", "1", "2", "'ACTIVE'", "NULL", "NULL")},
      {"empty thing name", raw.Exec("INSERT INTO things(name, created_at) VALUES ('', 1)")},
      {"thing name too long",
       raw.Exec("INSERT INTO things(name, created_at) VALUES ('" + std::string(129, 'n') + "', 1)")},
      {"token hash not 64 characters",
       raw.Exec("INSERT INTO enrollment_tokens(token_hash, serial, created_at, expires_at) VALUES ('abc', 's', 1, 2)")},
      {"token expires before created",
       raw.Exec("INSERT INTO enrollment_tokens(token_hash, serial, created_at, expires_at) VALUES ('" + good_id +
                "', 's', 2, 2)")},
      {"token used_at without used_by_cert",
       raw.Exec("INSERT INTO enrollment_tokens(token_hash, serial, created_at, expires_at, used_at) VALUES ('" +
                good_id + "', 's', 1, 2, 1)")},
      {"token empty serial",
       raw.Exec("INSERT INTO enrollment_tokens(token_hash, serial, created_at, expires_at) VALUES ('" + good_id +
                "', '', 1, 2)")},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.rc & 0xff, SQLITE_CONSTRAINT) << c.what << " was accepted (rc " << c.rc << ")";
  }
  EXPECT_EQ(raw.QueryInt("SELECT count(*) FROM certificates"), 0);
  EXPECT_EQ(raw.QueryInt("SELECT count(*) FROM enrollment_tokens"), 0);
  EXPECT_EQ(raw.QueryInt("SELECT count(*) FROM things"), 1);

  // The same shape with valid values is accepted: the cases above failed for their reason.
  EXPECT_EQ(insert_cert(q_good, "'gw-1'", "'01'", "1", "2", "'ACTIVE'", "NULL", "NULL"), SQLITE_OK)
      << raw.last_error();
  EXPECT_EQ(raw.Exec("INSERT INTO enrollment_tokens(token_hash, serial, created_at, expires_at) VALUES ('" + good_id +
                     "', 's', 1, 2)"),
            SQLITE_OK)
      << raw.last_error();
  // A duplicate serial through raw SQL.
  EXPECT_EQ(insert_cert("'" + HexId("dup") + "'", "'gw-1'", "'01'", "1", "2", "'REVOKED'", "NULL", "NULL"),
            SQLITE_CONSTRAINT_UNIQUE)
      << raw.last_error();

  // Rows inserted through raw SQL are readable through the registry.
  auto found = Find(good_id);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->serial, "01");
}

TEST_F(RegistryTest, CorruptStatusIsDataLoss) {
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-1", "0A01")), kNow).ok());
  RawDb raw(path_);
  ASSERT_TRUE(raw.ok());
  // Bypass the CHECK constraint to simulate a corrupt row.
  ASSERT_EQ(raw.Exec("PRAGMA ignore_check_constraints = ON"), SQLITE_OK);
  ASSERT_EQ(raw.Exec("UPDATE certificates SET status = 'BOGUS'"), SQLITE_OK) << raw.last_error();
  auto found = reg_->FindCert(HexId("cert:0A01"));
  ASSERT_FALSE(found);
  EXPECT_EQ(found.error().code(), Code::kDataLoss) << found.error().ToString();
  auto listed = reg_->ListCerts("", 10);
  ASSERT_FALSE(listed);
  EXPECT_EQ(listed.error().code(), Code::kDataLoss);
}

}  // namespace
}  // namespace certfleet::companion

// ---- Fleet provisioning: pending certificates and ownership tokens ----

namespace certfleet::companion {
namespace {

PendingCert MakePending(const std::string& serial, WallTime issued = kNow) {
  PendingCert p;
  p.id = HexId("pending:" + serial);
  p.serial = serial;
  p.subject = "CN=device";
  p.not_before = issued - std::chrono::minutes(5);
  p.not_after = issued + hours(24 * 90);
  p.issued_at = issued;
  p.pem = "PEM " + serial;
  p.claim_subject = "claim-batch-7";
  p.client_id = "dev-" + serial;
  p.expires_at = issued + hours(1);
  return p;
}

ThingRegistration Registration(const std::string& thing, bool reprovision = false) {
  ThingRegistration r;
  r.thing_name = thing;
  r.attributes_json = R"({"model":"gw-100"})";
  r.groups_json = R"(["gateways"])";
  r.policy_name = "gateway-policy";
  r.allow_reprovisioning = reprovision;
  return r;
}

TEST_F(RegistryTest, PendingCertificateIsActivatedOnceByItsToken) {
  PendingCert p = MakePending("AA01");
  std::string token = HexId("ownership:1");
  ASSERT_TRUE(reg_->RecordPending(p, token).ok());
  EXPECT_EQ(CountCerts(), 0u) << "a pending certificate belongs to no thing yet";
  auto found = reg_->FindPendingByToken(token, kNow);
  ASSERT_TRUE(found) << found.error().ToString();
  EXPECT_EQ(found->client_id, "dev-AA01");

  auto cert = reg_->ActivatePending(token, Registration("gw-1"), kNow + seconds(10));
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_EQ(cert->thing_name, "gw-1");
  EXPECT_EQ(cert->status, CertStatus::kActive);
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{p.id});

  auto again = reg_->ActivatePending(token, Registration("gw-1"), kNow + seconds(20));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), Code::kFailedPrecondition);
  EXPECT_NE(again.error().message().find("already used"), std::string::npos);
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(RegistryTest, ExpiredOrUnknownOwnershipTokenIsRefused) {
  std::string token = HexId("ownership:2");
  ASSERT_TRUE(reg_->RecordPending(MakePending("AA02"), token).ok());
  auto late = reg_->ActivatePending(token, Registration("gw-2"), kNow + hours(1));
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().message().find("expired"), std::string::npos);
  auto unknown = reg_->ActivatePending(HexId("nothing"), Registration("gw-2"), kNow);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message().find("unknown"), std::string::npos);
  EXPECT_EQ(CountCerts(), 0u);
  auto deleted = reg_->DeleteExpiredPending(kNow + hours(2));
  ASSERT_TRUE(deleted);
  EXPECT_EQ(*deleted, 1);
  EXPECT_FALSE(reg_->FindPendingByToken(token, kNow));
}

TEST_F(RegistryTest, ProvisionedThingIsRefusedUnlessReprovisioningIsAllowed) {
  std::string t1 = HexId("ownership:3"), t2 = HexId("ownership:4");
  ASSERT_TRUE(reg_->RecordPending(MakePending("AA03"), t1).ok());
  ASSERT_TRUE(reg_->RecordPending(MakePending("AA04"), t2).ok());
  ASSERT_TRUE(reg_->ActivatePending(t1, Registration("gw-3"), kNow));
  auto refused = reg_->ActivatePending(t2, Registration("gw-3"), kNow);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Code::kAlreadyExists);
  // Nothing changed: the token still works for a template that allows reprovisioning.
  auto reprovisioned = reg_->ActivatePending(t2, Registration("gw-3", true), kNow + seconds(1));
  ASSERT_TRUE(reprovisioned) << reprovisioned.error().ToString();
  EXPECT_EQ(CurrentIds("gw-3"), std::vector<std::string>{HexId("pending:AA04")});
  auto old = Find(HexId("pending:AA03"));
  ASSERT_TRUE(old);
  EXPECT_EQ(old->superseded_by, HexId("pending:AA04"));
}

TEST_F(RegistryTest, SerialsStayUniqueAcrossPendingAndIssuedCertificates) {
  ASSERT_TRUE(reg_->RecordIssued(Plain(MakeCert("gw-5", "AA05")), kNow).ok());
  PendingCert dup = MakePending("AA05");
  Status st = reg_->RecordPending(dup, HexId("ownership:5"));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  ASSERT_TRUE(reg_->RecordPending(MakePending("AA06"), HexId("ownership:6")).ok());
  Status st2 = reg_->RecordIssued(Plain(MakeCert("gw-6", "AA06")), kNow);
  EXPECT_EQ(st2.code(), Code::kAlreadyExists) << st2.ToString();
}

TEST_F(RegistryTest, ThingAttributesMustBeJson) {
  std::string token = HexId("ownership:7");
  ASSERT_TRUE(reg_->RecordPending(MakePending("AA07"), token).ok());
  ThingRegistration bad = Registration("gw-7");
  bad.attributes_json = "{not json";
  auto r = reg_->ActivatePending(token, bad, kNow);
  ASSERT_FALSE(r);
  EXPECT_TRUE(reg_->FindPendingByToken(token, kNow)) << "a failed activation stores nothing";
}

TEST(ThingNameTest, Rules) {
  EXPECT_TRUE(IsValidThingName("gw-0001"));
  EXPECT_TRUE(IsValidThingName("00:1a:2b:3c:4d:5e"));
  EXPECT_FALSE(IsValidThingName(""));
  EXPECT_FALSE(IsValidThingName(std::string(65, 'a')));
  EXPECT_FALSE(IsValidThingName("gw 1"));
  EXPECT_FALSE(IsValidThingName("gw/1"));
  EXPECT_FALSE(IsValidThingName("certfleet-companion"));
}

// ---- Rotation ----

std::string RotId(int n) {
  std::string h = HexId("rotation:" + std::to_string(n));
  return h.substr(0, 32);
}

RotationRecord MakeRotation(const std::string& id, const std::string& thing, WallTime at = kNow) {
  RotationRecord r;
  r.id = id;
  r.thing_name = thing;
  r.reason = "operator";
  r.created_at = at;
  r.deadline = at + hours(24 * 7);
  r.created_by = "operator:test";
  return r;
}

class RotationRegistryTest : public RegistryTest {
 protected:
  // gw-1 with certificate A (issued at kNow), re-enrolled to B at kNow + 1h.
  void SetUp() override {
    RegistryTest::SetUp();
    a_ = Plain(MakeCert("gw-1", "0B01")).cert;
    ASSERT_TRUE(reg_->RecordIssued(Plain(a_), kNow).ok());
    IssueRecord b = Plain(MakeCert("gw-1", "0B02", kNow + hours(1)));
    b.replaces_cert_id = a_.id;
    b_ = b.cert;
    ASSERT_TRUE(reg_->RecordIssued(b, kNow + hours(1)).ok());
  }
  RotationProof Proof(const std::string& rotation_id, const std::string& cert_id, WallTime at) {
    return RotationProof{"gw-1", rotation_id, cert_id, at, hours(24)};
  }
  CertStatus StatusOf(const std::string& id) {
    auto c = Find(id);
    return c ? c->status : CertStatus::kPendingActivation;
  }
  CertRecord a_;
  CertRecord b_;
};

TEST(RotationStateTest, NamesRoundTrip) {
  for (RotationState s : {RotationState::kPending, RotationState::kCompleted, RotationState::kCancelled}) {
    EXPECT_EQ(ParseRotationState(RotationStateName(s)).value(), s);
  }
  EXPECT_FALSE(ParseRotationState("DONE"));
}

TEST_F(RotationRegistryTest, CreateFindListAndPublish) {
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).ok());
  auto pending = reg_->FindPendingRotation("gw-1");
  ASSERT_TRUE(pending && *pending);
  EXPECT_EQ((*pending)->id, RotId(1));
  EXPECT_EQ((*pending)->state, RotationState::kPending);
  EXPECT_FALSE((*pending)->published_at);
  EXPECT_EQ((*pending)->deadline, kNow + hours(24 * 7));
  EXPECT_EQ((*pending)->created_by, "operator:test");

  ASSERT_TRUE(reg_->MarkRotationPublished(RotId(1), kNow + seconds(3)).ok());
  auto found = reg_->FindRotation(RotId(1));
  ASSERT_TRUE(found && *found);
  EXPECT_EQ((*found)->published_at, kNow + seconds(3));
  EXPECT_EQ(reg_->MarkRotationPublished(RotId(9), kNow).code(), Code::kNotFound);

  auto none = reg_->FindPendingRotation("gw-2");
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);

  ASSERT_TRUE(reg_->CancelRotation(RotId(1)).ok());
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(2), "gw-1", kNow + hours(1))).ok());
  auto all = reg_->ListRotations({}, 10);
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id, RotId(2)) << "newest first";
  auto cancelled = reg_->ListRotations({RotationState::kCancelled, "", std::nullopt}, 10);
  ASSERT_TRUE(cancelled);
  ASSERT_EQ(cancelled->size(), 1u);
  EXPECT_EQ((*cancelled)[0].id, RotId(1));
  auto other = reg_->ListRotations({std::nullopt, "gw-2", std::nullopt}, 10);
  ASSERT_TRUE(other);
  EXPECT_TRUE(other->empty());
  auto limited = reg_->ListRotations({}, 1);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->size(), 1u);
}

TEST_F(RotationRegistryTest, OnePendingRequestPerThing) {
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).ok());
  EXPECT_EQ(reg_->CreateRotation(MakeRotation(RotId(2), "gw-1")).code(), Code::kAlreadyExists);
  EXPECT_EQ(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).code(), Code::kAlreadyExists);
  EXPECT_EQ(reg_->CreateRotation(MakeRotation(RotId(3), "gw-unknown")).code(), Code::kNotFound);
  RotationRecord bad = MakeRotation("ABC", "gw-1");
  EXPECT_EQ(reg_->CreateRotation(bad).code(), Code::kInvalidArgument);
  bad = MakeRotation(RotId(4), "gw-1");
  bad.deadline = kNow - seconds(1);
  EXPECT_EQ(reg_->CreateRotation(bad).code(), Code::kInvalidArgument);
  bad = MakeRotation(RotId(4), "gw-1");
  bad.reason = "";
  EXPECT_EQ(reg_->CreateRotation(bad).code(), Code::kInvalidArgument);

  // The database itself refuses a second pending request, whoever writes.
  RawDb raw(path_);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw.Exec("INSERT INTO rotation_requests(id, thing_name, reason, created_at, deadline, state, created_by) "
                     "VALUES ('" + RotId(5) + "', 'gw-1', 'x', 1, 2, 'PENDING', 'raw')"),
            SQLITE_CONSTRAINT_UNIQUE);
  EXPECT_EQ(raw.Exec("INSERT INTO rotation_requests(id, thing_name, reason, created_at, deadline, state, created_by) "
                     "VALUES ('" + RotId(5) + "', 'gw-1', 'x', 2, 1, 'CANCELLED', 'raw')"),
            SQLITE_CONSTRAINT_CHECK) << "deadline before creation";
  EXPECT_EQ(raw.Exec("INSERT INTO rotation_requests(id, thing_name, reason, created_at, deadline, state, created_by) "
                     "VALUES ('" + RotId(5) + "', 'gw-1', 'x', 1, 2, 'COMPLETED', 'raw')"),
            SQLITE_CONSTRAINT_CHECK) << "completed without a certificate";
  EXPECT_EQ(raw.Exec("INSERT INTO rotation_requests(id, thing_name, reason, created_at, deadline, state, created_by) "
                     "VALUES ('XYZ', 'gw-1', 'x', 1, 2, 'CANCELLED', 'raw')"),
            SQLITE_CONSTRAINT_CHECK) << "malformed id";
}

TEST_F(RotationRegistryTest, CompleteProvesTheCertificateAndOpensTheGraceWindow) {
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).ok());
  auto done = reg_->CompleteRotation(Proof(RotId(1), b_.id, kNow + hours(2)));
  ASSERT_TRUE(done) << done.error().ToString();
  EXPECT_EQ(done->completed_rotation_id, RotId(1));
  EXPECT_EQ(done->retiring_cert_ids, std::vector<std::string>{a_.id});
  auto b = Find(b_.id);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->proven_at, kNow + hours(2));
  EXPECT_FALSE(b->retire_at);
  auto a = Find(a_.id);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->retire_at, kNow + hours(2) + hours(24));
  EXPECT_EQ(a->status, CertStatus::kActive) << "still usable during the grace window";
  auto r = reg_->FindRotation(RotId(1));
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, RotationState::kCompleted);
  EXPECT_EQ((*r)->new_cert_id, b_.id);
  EXPECT_EQ((*r)->completed_at, kNow + hours(2));

  // A replay of the completed rotation is refused and changes nothing.
  auto replay = reg_->CompleteRotation(Proof(RotId(1), b_.id, kNow + hours(3)));
  EXPECT_EQ(replay.error().code(), Code::kFailedPrecondition);
  EXPECT_EQ(Find(a_.id)->retire_at, kNow + hours(26));
  EXPECT_EQ(reg_->CancelRotation(RotId(1)).code(), Code::kFailedPrecondition);
}

TEST_F(RotationRegistryTest, AgentInitiatedAckCompletesAPendingRequestAndIsNotReplayable) {
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).ok());
  auto done = reg_->CompleteRotation(Proof("", b_.id, kNow + hours(2)));
  ASSERT_TRUE(done) << done.error().ToString();
  EXPECT_EQ(done->completed_rotation_id, RotId(1));
  EXPECT_EQ(reg_->CompleteRotation(Proof("", b_.id, kNow + hours(3))).error().code(), Code::kAlreadyExists);
}

TEST_F(RotationRegistryTest, CompleteRefusesCertificatesThatAreNotTheThingsCurrentOne) {
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).ok());
  // The superseded predecessor, an unknown certificate, another thing's certificate.
  EXPECT_EQ(reg_->CompleteRotation(Proof(RotId(1), a_.id, kNow)).error().code(), Code::kFailedPrecondition);
  EXPECT_EQ(reg_->CompleteRotation(Proof(RotId(1), HexId("nope"), kNow)).error().code(), Code::kFailedPrecondition);
  CertRecord other = MakeCert("gw-2", "0C01");
  ASSERT_TRUE(reg_->RecordIssued(Plain(other), kNow).ok());
  EXPECT_EQ(reg_->CompleteRotation(Proof(RotId(1), other.id, kNow)).error().code(), Code::kFailedPrecondition);
  // A rotation id that is not the thing's pending one.
  EXPECT_EQ(reg_->CompleteRotation(Proof(RotId(2), b_.id, kNow)).error().code(), Code::kFailedPrecondition);
  // An INACTIVE current certificate.
  ASSERT_TRUE(reg_->SetCertStatus(b_.id, CertStatus::kInactive, kNow).ok());
  EXPECT_EQ(reg_->CompleteRotation(Proof(RotId(1), b_.id, kNow)).error().code(), Code::kFailedPrecondition);
  // Nothing changed.
  auto r = reg_->FindPendingRotation("gw-1");
  ASSERT_TRUE(r && *r);
  EXPECT_FALSE(Find(a_.id)->retire_at);
  EXPECT_FALSE(Find(b_.id)->proven_at);
}

TEST_F(RotationRegistryTest, SweepDeactivatesAfterGraceThenRevokes) {
  ASSERT_TRUE(reg_->CompleteRotation(Proof("", b_.id, kNow + hours(2))).has_value());
  const WallTime end_of_grace = kNow + hours(26);
  auto early = reg_->SweepCertificates(end_of_grace - seconds(1), hours(1));
  ASSERT_TRUE(early);
  EXPECT_TRUE(early->empty());
  EXPECT_EQ(StatusOf(a_.id), CertStatus::kActive);

  auto first = reg_->SweepCertificates(end_of_grace, hours(1));
  ASSERT_TRUE(first);
  ASSERT_EQ(first->size(), 1u);
  EXPECT_EQ((*first)[0].cert_id, a_.id);
  EXPECT_EQ((*first)[0].thing_name, "gw-1");
  EXPECT_EQ((*first)[0].to, CertStatus::kInactive);
  EXPECT_EQ(StatusOf(a_.id), CertStatus::kInactive);
  EXPECT_EQ(StatusOf(b_.id), CertStatus::kActive);
  EXPECT_EQ(reg_->CountRevokedCerts().value(), 0);

  EXPECT_TRUE(reg_->SweepCertificates(end_of_grace + hours(1) - seconds(1), hours(1))->empty());
  auto second = reg_->SweepCertificates(end_of_grace + hours(1), hours(1));
  ASSERT_TRUE(second);
  ASSERT_EQ(second->size(), 1u);
  EXPECT_EQ((*second)[0].from, CertStatus::kInactive);
  EXPECT_EQ((*second)[0].to, CertStatus::kRevoked);
  EXPECT_EQ(StatusOf(a_.id), CertStatus::kRevoked);
  EXPECT_EQ(Find(a_.id)->status_changed_at, end_of_grace + hours(1));
  EXPECT_EQ(reg_->CountRevokedCerts().value(), 1);
  EXPECT_TRUE(reg_->SweepCertificates(end_of_grace + hours(100), hours(1))->empty()) << "nothing left to do";
}

TEST_F(RotationRegistryTest, SweepWithoutRevokeDelayDoesBothStepsAtOnce) {
  ASSERT_TRUE(reg_->CompleteRotation(Proof("", b_.id, kNow + hours(2))).has_value());
  auto swept = reg_->SweepCertificates(kNow + hours(26), seconds(0));
  ASSERT_TRUE(swept);
  ASSERT_EQ(swept->size(), 2u);
  EXPECT_EQ((*swept)[0].to, CertStatus::kInactive);
  EXPECT_EQ((*swept)[1].to, CertStatus::kRevoked);
  EXPECT_EQ(StatusOf(a_.id), CertStatus::kRevoked);
}

TEST_F(RotationRegistryTest, SweepLeavesPredecessorsOfAnUnprovenCertificateAlone) {
  // B is never proven (the device rolled back to A): A stays ACTIVE however long it takes.
  auto swept = reg_->SweepCertificates(kNow + hours(24 * 365), seconds(0));
  ASSERT_TRUE(swept);
  EXPECT_TRUE(swept->empty());
  EXPECT_EQ(StatusOf(a_.id), CertStatus::kActive);
  // An operator's INACTIVE (no grace window) is not revoked by the sweep either.
  ASSERT_TRUE(reg_->SetCertStatus(a_.id, CertStatus::kInactive, kNow).ok());
  EXPECT_TRUE(reg_->SweepCertificates(kNow + hours(24 * 365), seconds(0))->empty());
}

TEST_F(RotationRegistryTest, ProofRetiresEveryOlderActiveCertificate) {
  // A -> B -> C, where B was never proven: proving C starts the grace window of A and B.
  IssueRecord c = Plain(MakeCert("gw-1", "0B03", kNow + hours(2)));
  c.replaces_cert_id = b_.id;
  ASSERT_TRUE(reg_->RecordIssued(c, kNow + hours(2)).ok());
  auto done = reg_->CompleteRotation(Proof("", c.cert.id, kNow + hours(3)));
  ASSERT_TRUE(done) << done.error().ToString();
  EXPECT_EQ(done->retiring_cert_ids.size(), 2u);
  auto swept = reg_->SweepCertificates(kNow + hours(27), seconds(0));
  ASSERT_TRUE(swept);
  EXPECT_EQ(swept->size(), 4u);
  EXPECT_EQ(CurrentIds("gw-1"), std::vector<std::string>{c.cert.id});
}

// The invariant, enforced by the database for any writer: once a thing's current
// certificate is proven, no other certificate of it is ACTIVE without a grace window.
TEST_F(RotationRegistryTest, DatabaseRefusesASecondActiveCertificateOutsideTheGraceWindow) {
  RawDb raw(path_);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw.Exec("UPDATE certificates SET proven_at = 1 WHERE id = '" + b_.id + "'"), SQLITE_CONSTRAINT_TRIGGER)
      << "proving B while A is ACTIVE without a grace window";
  EXPECT_EQ(raw.Exec("UPDATE certificates SET proven_at = 1 WHERE id = '" + a_.id + "'"), SQLITE_CONSTRAINT_TRIGGER)
      << "a superseded certificate cannot be proven";
  EXPECT_EQ(raw.Exec("UPDATE certificates SET retire_at = 1 WHERE id = '" + b_.id + "'"), SQLITE_CONSTRAINT_CHECK)
      << "the current certificate has no grace window";

  ASSERT_TRUE(reg_->SetCertStatus(a_.id, CertStatus::kInactive, kNow).ok());
  ASSERT_TRUE(reg_->CompleteRotation(Proof("", b_.id, kNow + hours(2))).has_value());
  EXPECT_EQ(raw.Exec("UPDATE certificates SET status = 'ACTIVE' WHERE id = '" + a_.id + "'"), SQLITE_CONSTRAINT_TRIGGER)
      << "reactivating A next to a proven B";
  EXPECT_EQ(reg_->SetCertStatus(a_.id, CertStatus::kActive, kNow).code(), Code::kAlreadyExists);
  EXPECT_EQ(raw.Exec("INSERT INTO certificates(id, thing_name, serial, subject, not_before, not_after, issued_at, "
                     "status, source, pem) VALUES ('" + HexId("x") + "', 'gw-1', '0BFF', 'CN=gw-1', 1, 2, 1, "
                     "'ACTIVE', 'raw', 'x')"),
            SQLITE_CONSTRAINT_UNIQUE)
      << "a second current certificate";
}

TEST_F(RotationRegistryTest, FinishedPublishedRequestsAreListedUntilCleared) {
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(1), "gw-1")).ok());
  EXPECT_TRUE(reg_->ListRotationsToClear(10)->empty()) << "pending";
  EXPECT_EQ(reg_->MarkRotationCleared(RotId(1), kNow).code(), Code::kNotFound);
  ASSERT_TRUE(reg_->MarkRotationPublished(RotId(1), kNow).ok());
  ASSERT_TRUE(reg_->CancelRotation(RotId(1)).ok());
  // Never published: nothing to clear.
  ASSERT_TRUE(reg_->CreateRotation(MakeRotation(RotId(2), "gw-1")).ok());
  ASSERT_TRUE(reg_->CancelRotation(RotId(2)).ok());
  auto to_clear = reg_->ListRotationsToClear(10);
  ASSERT_TRUE(to_clear);
  ASSERT_EQ(to_clear->size(), 1u);
  EXPECT_EQ((*to_clear)[0].id, RotId(1));
  ASSERT_TRUE(reg_->MarkRotationCleared(RotId(1), kNow + seconds(1)).ok());
  EXPECT_EQ(reg_->FindRotation(RotId(1)).value()->cleared_at, kNow + seconds(1));
  EXPECT_TRUE(reg_->ListRotationsToClear(10)->empty());
  EXPECT_EQ(reg_->MarkRotationCleared(RotId(2), kNow).code(), Code::kNotFound);
}

TEST_F(RotationRegistryTest, ThingsExpiringBefore) {
  CertRecord other = MakeCert("gw-2", "0C01");
  other.not_after = kNow + hours(24 * 200);
  ASSERT_TRUE(reg_->RecordIssued(Plain(other), kNow).ok());
  // gw-1's current certificate B expires at kNow + 1h + 90d.
  auto soon = reg_->ListThingsExpiringBefore(kNow + hours(24 * 100), 100);
  ASSERT_TRUE(soon);
  ASSERT_EQ(soon->size(), 1u);
  EXPECT_EQ((*soon)[0].name, "gw-1");
  EXPECT_EQ((*soon)[0].current_cert_id, b_.id);
  EXPECT_EQ(reg_->ListThingsExpiringBefore(kNow + hours(24 * 300), 100)->size(), 2u);
  EXPECT_TRUE(reg_->ListThingsExpiringBefore(kNow, 100)->empty());
}

}  // namespace
}  // namespace certfleet::companion
