// RunCaCerts / RunEnroll / RunReenroll end to end: a real HTTPS EST server on loopback
// (cpp-httplib) with a fake CA that signs what it receives, a file key store and output
// files in a temporary directory, a FakeClock at the real time (the certificates are
// issued with real validity periods).
#include "agent/est_commands.h"

#include <httplib.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "agent/testing/est_test_server.h"
#include "hal/keystore.h"
#include "shared/core/base64.h"
#include "shared/testing/scoped_umask.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::agent {
namespace {

namespace sh = certfleet::shared;
using sh::Code;

// ---- The EST server ----

struct Seen {
  std::string path;
  std::string peer_cn;        // the TLS client certificate's CN, if any
  std::string authorization;
  std::shared_ptr<X509_REQ> csr;  // for enroll operations
};

// What the fake CA does with the next enrollment request.
enum class Behaviour { kIssue, kIssueForOtherKey, kIssueFromOtherCa, kIssueWithOtherCn, kUnavailable };

// The fake EST CA: an HTTPS TestServer that asks for (but does not require) client
// certificates issued by `ca`, serves `ca` as cacerts and signs what it receives.
class EstServer {
 public:
  EstServer(const TestCa& ca, const TestCa& other_ca)
      : ca_(ca), other_ca_(other_ca), server_(ca, ServerOptions(ca)) {
    server_.http().Get("/.well-known/est/cacerts", [this](const httplib::Request& req, httplib::Response& res) {
      Record(req, nullptr);
      res.set_content(sh::Base64Encode(CertsOnlyDer({ca_.cert.get()})), "application/pkcs7-mime");
    });
    auto enroll = [this](const httplib::Request& req, httplib::Response& res) { Enroll(req, res); };
    server_.http().Post("/.well-known/est/simpleenroll", enroll);
    server_.http().Post("/.well-known/est/simplereenroll", enroll);
    server_.Start();
  }
  EstServer(const EstServer&) = delete;
  EstServer& operator=(const EstServer&) = delete;

  std::string Url() const { return server_.Url(); }
  void set_behaviour(Behaviour b) { behaviour_ = b; }
  const EVP_PKEY* other_key() const { return other_key_.get(); }

  size_t Count() const {
    std::lock_guard lock(mu_);
    return seen_.size();
  }
  size_t Count(const std::string& op) const {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const auto& s : seen_) n += s.path == "/.well-known/est/" + op ? 1 : 0;
    return n;
  }
  // The last enrollment request (CSR present).
  Seen LastEnroll() const {
    std::lock_guard lock(mu_);
    for (auto it = seen_.rbegin(); it != seen_.rend(); ++it) {
      if (it->csr) return *it;
    }
    throw std::runtime_error("no enrollment request was seen");
  }

 private:
  static TestServer::Options ServerOptions(const TestCa& ca) {
    TestServer::Options o;
    o.client_ca = ca.cert.get();  // client certificates optional
    return o;
  }

  void Record(const httplib::Request& req, sh::X509ReqPtr csr) {
    Seen s{req.path, "", req.get_header_value("Authorization"), std::move(csr)};
    sh::X509Ptr peer(SSL_get1_peer_certificate(req.ssl));
    if (peer) s.peer_cn = sh::NameCommonName(X509_get_subject_name(peer.get()));
    std::lock_guard lock(mu_);
    seen_.push_back(std::move(s));
  }

  void Enroll(const httplib::Request& req, httplib::Response& res) {
    auto csr = Must(sh::CsrFromDer(Must(sh::Base64Decode(req.body), "CSR base64")), "CSR");
    X509_REQ* r = csr.get();
    Record(req, std::move(csr));
    Behaviour b = behaviour_;
    if (b == Behaviour::kUnavailable) {
      res.status = 503;
      res.set_content("the CA is offline", "text/plain");
      return;
    }
    auto sans = sh::CsrSans(r);
    auto other_cn = Name("somebody-else");
    const X509_NAME* subject = b == Behaviour::kIssueWithOtherCn ? other_cn.get() : X509_REQ_get_subject_name(r);
    EVP_PKEY* pub = b == Behaviour::kIssueForOtherKey ? other_key_.get() : X509_REQ_get0_pubkey(r);
    const TestCa& issuer = b == Behaviour::kIssueFromOtherCa ? other_ca_ : ca_;
    auto cert = issuer.Issue(subject, pub, "", false, sans.get());
    res.set_content(sh::Base64Encode(CertsOnlyDer({cert.get()})), kCertsOnlyType);
  }

  const TestCa& ca_;
  const TestCa& other_ca_;
  sh::EvpPkeyPtr other_key_ = NewKey();
  std::atomic<Behaviour> behaviour_{Behaviour::kIssue};
  mutable std::mutex mu_;
  std::vector<Seen> seen_;
  TestServer server_;  // last: stopped before what its handlers use
};

// ---- Fixture ----

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

class EstCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);
    ASSERT_FALSE(tmp_.path().empty()) << "mkdtemp failed";
    dir_ = tmp_.path();
    anchor_file_ = dir_ + "/est-ca.pem";
    out_file_ = dir_ + "/identity.pem";
    ASSERT_TRUE(fs_.WriteFileAtomic(anchor_file_, ca_.Pem(), 0644).ok());
    server_ = std::make_unique<EstServer>(ca_, other_ca_);
    // The test's own view of the key store the commands use (same directory).
    keys_ = Must(hal::OpenKeyStore(Options().keystore, fs_), "OpenKeyStore");
  }
  void TearDown() override {
    server_.reset();
    keys_.reset();
  }

  // Enrollment with HTTP Basic into slot identity-a, output to out_file_.
  EstCommandOptions Options() const {
    EstCommandOptions o;
    o.server = server_->Url();
    o.trust_anchor_file = anchor_file_;
    o.user = "gw-0001";
    o.password = "one-time-token";
    o.common_name = "gw-0001";
    o.keystore.backend = "file";
    o.keystore.dir = dir_ + "/keys";
    o.out_file = out_file_;
    o.sleep = [](std::chrono::seconds) { ADD_FAILURE() << "nothing should wait here"; };
    return o;
  }
  // Switches `o` from HTTP Basic to a claim certificate: CN `claim_cn`, issued by the
  // EST CA, its key in slot "claim".
  void UseClaimCertificate(EstCommandOptions& o, const std::string& claim_cn) {
    auto claim = keys_->Generate("claim", sh::KeyType::kEcP256);
    ASSERT_TRUE(claim) << claim.error().ToString();
    auto claim_cert = ca_.Issue(Name(claim_cn).get(), (*claim)->pkey());
    std::string claim_file = dir_ + "/claim.pem";
    ASSERT_TRUE(fs_.WriteFileAtomic(claim_file, sh::CertToPem(claim_cert.get()), 0644).ok());
    o.user.clear();
    o.password.clear();
    o.client_cert_file = claim_file;
    o.client_key_slot = "claim";
  }
  // In-place re-enrollment of out_file_.
  EstCommandOptions ReenrollOptions() const {
    EstCommandOptions o = Options();
    o.user.clear();
    o.password.clear();
    o.cert_file = out_file_;
    return o;
  }
  std::string KeyFile(const std::string& slot) const { return dir_ + "/keys/" + slot + ".key.pem"; }
  std::string Read(const std::string& path) const { return fs_.ReadFile(path, 1 << 20).value_or(""); }
  std::vector<std::string> Slots() { return Must(keys_->List(), "List"); }
  // Public key of what is stored in `slot`, or null.
  sh::EvpPkeyPtr PublicOf(const std::string& slot) {
    auto k = keys_->Load(slot);
    if (!k) return nullptr;
    EVP_PKEY* p = (*k)->pkey();
    EVP_PKEY_up_ref(p);
    return sh::EvpPkeyPtr(p);
  }
  // RunEnroll(Options()) must fail with `code`, `message_part` (when not empty) in the
  // message, and write no output file.
  void ExpectEnrollFails(Code code, const std::string& message_part = "") {
    auto out = RunEnroll(Options(), fs_, clock_, log_);
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error().code(), code) << out.error().ToString();
    if (!message_part.empty()) {
      EXPECT_NE(out.error().message().find(message_part), std::string::npos);
    }
    EXPECT_FALSE(fs_.Exists(out_file_));
  }
  // Enrolls out_file_ with a key in identity-a.
  EnrollOutcome EnrollFirst() {
    auto r = RunEnroll(Options(), fs_, clock_, log_);
    if (!r) throw std::runtime_error("RunEnroll: " + r.error().ToString());
    return std::move(*r);
  }

  TestCa ca_ = MakeCa("certfleet test EST CA");
  TestCa other_ca_ = MakeCa("an unrelated CA");
  sh::PosixFilesystem fs_;
  sh::FakeClock clock_{std::chrono::system_clock::now()};
  sh::CaptureLogger log_;
  sh::ScopedUmask umask_{022};
  sh::TempDir tmp_;
  std::string dir_, anchor_file_, out_file_;
  std::unique_ptr<hal::KeyStore> keys_;
  std::unique_ptr<EstServer> server_;
};

// ---- cacerts ----

TEST_F(EstCommandsTest, CaCertsReturnsPem) {
  auto pem = RunCaCerts(Options(), fs_);
  ASSERT_TRUE(pem) << pem.error().ToString();
  EXPECT_EQ(*pem, ca_.Pem());
}

TEST_F(EstCommandsTest, CaCertsWithoutTrustAnchorIsRefused) {
  EstCommandOptions o = Options();
  o.trust_anchor_file.clear();
  auto pem = RunCaCerts(o, fs_);
  ASSERT_FALSE(pem);
  EXPECT_EQ(pem.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(server_->Count(), 0u);
}

// ---- enroll ----

TEST_F(EstCommandsTest, EnrollWritesCertificateAndKey) {
  auto out = RunEnroll(Options(), fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();

  std::string pem = Read(out_file_);
  EXPECT_EQ(pem, out->pem);
  EXPECT_EQ(ModeOf(out_file_), 0644);
  EXPECT_EQ(ModeOf(KeyFile("identity-a")), 0600);
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-a"});

  auto cert = Must(sh::CertFromPem(pem), "out file");
  sh::CertInfo info = sh::DescribeCert(cert.get());
  EXPECT_EQ(out->key_slot, "identity-a");
  EXPECT_EQ(out->serial, info.serial);
  EXPECT_EQ(out->fingerprint, sh::CertFingerprint(cert.get()));
  EXPECT_EQ(out->not_after, info.not_after);
  EXPECT_EQ(out->deleted_key_slot, "");
  EXPECT_EQ(info.common_name, "gw-0001");
  auto key = PublicOf("identity-a");
  ASSERT_TRUE(key);
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), key.get()));

  EXPECT_EQ(server_->Count("cacerts"), 1u);
  EXPECT_EQ(server_->Count("simpleenroll"), 1u);
  const Seen seen = server_->LastEnroll();
  EXPECT_EQ(sh::Base64Decode(seen.authorization.substr(6)).value_or(""), "gw-0001:one-time-token");
  EXPECT_EQ(seen.peer_cn, "");
  EXPECT_TRUE(log_.Contains("enrolled"));
}

TEST_F(EstCommandsTest, EnrollAgainOverAWorkingIdentityIsAlreadyExistsAndChangesNothing) {
  EnrollFirst();
  std::string cert_before = Read(out_file_);
  std::string key_before = Read(KeyFile("identity-a"));
  size_t requests = server_->Count();

  auto again = RunEnroll(Options(), fs_, clock_, log_);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), Code::kAlreadyExists) << again.error().ToString();
  EXPECT_EQ(Read(out_file_), cert_before);
  EXPECT_EQ(Read(KeyFile("identity-a")), key_before);
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-a"});
  EXPECT_EQ(server_->Count(), requests);
}

// Regression: after one in-place rotation the identity's key lives in identity-b; a
// repeated enroll (a provisioning script run again) used to replace it.
TEST_F(EstCommandsTest, EnrollAgainAfterARotationIsStillAlreadyExists) {
  EnrollFirst();
  auto rotated = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_TRUE(rotated) << rotated.error().ToString();
  ASSERT_EQ(rotated->key_slot, "identity-b");
  std::string cert_before = Read(out_file_);
  size_t requests = server_->Count();

  auto again = RunEnroll(Options(), fs_, clock_, log_);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), Code::kAlreadyExists) << again.error().ToString();
  EXPECT_EQ(Read(out_file_), cert_before);
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-b"});
  EXPECT_EQ(server_->Count(), requests);
}

TEST_F(EstCommandsTest, EnrollReplacesACertificateWhoseKeyIsGone) {
  auto stray = NewKey();
  auto cert = ca_.Issue(Name("gw-0001").get(), stray.get());
  ASSERT_TRUE(fs_.WriteFileAtomic(out_file_, sh::CertToPem(cert.get()), 0644).ok());
  auto out = RunEnroll(Options(), fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(Read(out_file_), out->pem);
}

TEST_F(EstCommandsTest, EnrollReusesALeftoverKeyInTheSlot) {
  auto leftover = keys_->Generate("identity-a", sh::KeyType::kEcP256);
  ASSERT_TRUE(leftover) << leftover.error().ToString();
  std::string key_before = Read(KeyFile("identity-a"));

  auto out = RunEnroll(Options(), fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_TRUE(sh::SamePublicKey(X509_REQ_get0_pubkey(server_->LastEnroll().csr.get()), (*leftover)->pkey()));
  EXPECT_EQ(Read(KeyFile("identity-a")), key_before);
  auto cert = Must(sh::CertFromPem(Read(out_file_)), "out file");
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), (*leftover)->pkey()));
  EXPECT_TRUE(log_.Contains("reusing"));
}

TEST_F(EstCommandsTest, EnrollWithAClaimCertificateUsesTls) {
  EstCommandOptions o = Options();
  ASSERT_NO_FATAL_FAILURE(UseClaimCertificate(o, "claim-0007"));
  auto out = RunEnroll(o, fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(server_->LastEnroll().peer_cn, "claim-0007");
  EXPECT_EQ(server_->LastEnroll().authorization, "");
  EXPECT_EQ(Slots(), (std::vector<std::string>{"claim", "identity-a"}));
}

TEST_F(EstCommandsTest, EnrollRejectsACertificateForAnotherKey) {
  server_->set_behaviour(Behaviour::kIssueForOtherKey);
  ASSERT_NO_FATAL_FAILURE(ExpectEnrollFails(Code::kDataLoss));
  // The uncertified key stays for the next attempt.
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-a"});
}

TEST_F(EstCommandsTest, EnrollRejectsACertificateThatDoesNotChainToTheAnchor) {
  server_->set_behaviour(Behaviour::kIssueFromOtherCa);
  ExpectEnrollFails(Code::kUnauthenticated);
}

TEST_F(EstCommandsTest, EnrollRejectsACertificateWithAnotherCommonName) {
  server_->set_behaviour(Behaviour::kIssueWithOtherCn);
  ExpectEnrollFails(Code::kDataLoss, "gw-0001");
}

TEST_F(EstCommandsTest, EnrollRejectsACertificateNotYetValidByTheClock) {
  clock_.Advance(-std::chrono::hours(3));  // before the certificate's notBefore
  ExpectEnrollFails(Code::kUnauthenticated);
}

TEST_F(EstCommandsTest, EnrollServerFailureWritesNothing) {
  server_->set_behaviour(Behaviour::kUnavailable);
  ExpectEnrollFails(Code::kUnavailable, "the CA is offline");
}

TEST_F(EstCommandsTest, EnrollOptionErrors) {
  struct Case {
    std::string name;
    std::function<void(EstCommandOptions&)> change;
    Code code;
  };
  const std::vector<Case> cases = {
      {"no common name", [](EstCommandOptions& o) { o.common_name.clear(); }, Code::kInvalidArgument},
      {"no output file", [](EstCommandOptions& o) { o.out_file.clear(); }, Code::kInvalidArgument},
      {"no server", [](EstCommandOptions& o) { o.server.clear(); }, Code::kInvalidArgument},
      {"no credentials", [](EstCommandOptions& o) { o.user.clear(); }, Code::kInvalidArgument},
      {"both credentials",
       [this](EstCommandOptions& o) {
         o.client_cert_file = anchor_file_;
         o.client_key_slot = "claim";
       },
       Code::kInvalidArgument},
      {"claim certificate without slot",
       [this](EstCommandOptions& o) {
         o.user.clear();
         o.client_cert_file = anchor_file_;
       },
       Code::kInvalidArgument},
      {"no trust anchor", [](EstCommandOptions& o) { o.trust_anchor_file.clear(); }, Code::kInvalidArgument},
      {"missing trust anchor file", [this](EstCommandOptions& o) { o.trust_anchor_file = dir_ + "/nope.pem"; },
       Code::kNotFound},
      {"trust anchor file without a certificate",
       [this](EstCommandOptions& o) { o.trust_anchor_file = dir_ + "/garbage.pem"; }, Code::kInvalidArgument},
  };
  ASSERT_TRUE(fs_.WriteFileAtomic(dir_ + "/garbage.pem", "hello\n", 0644).ok());
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    EstCommandOptions o = Options();
    c.change(o);
    auto out = RunEnroll(o, fs_, clock_, log_);
    ASSERT_FALSE(out);
    EXPECT_EQ(out.error().code(), c.code) << out.error().ToString();
  }
  EXPECT_EQ(server_->Count(), 0u);
  EXPECT_FALSE(fs_.Exists(out_file_));
  EXPECT_FALSE(fs_.Exists(KeyFile("identity-a")));
}

TEST_F(EstCommandsTest, EnrollRefusesToPutTheNewKeyIntoTheClaimSlot) {
  EstCommandOptions o = Options();
  ASSERT_NO_FATAL_FAILURE(UseClaimCertificate(o, "claim-0008"));
  o.key_slot = "claim";
  auto out = RunEnroll(o, fs_, clock_, log_);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(server_->Count(), 0u);
}

// ---- reenroll ----

TEST_F(EstCommandsTest, ReenrollInPlaceRotatesTheKeyBetweenSlots) {
  EnrollFirst();
  auto old_cert = Must(sh::CertFromPem(Read(out_file_)), "old cert");
  auto old_key = PublicOf("identity-a");
  ASSERT_TRUE(old_key);

  auto out = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(out->key_slot, "identity-b");
  EXPECT_EQ(out->deleted_key_slot, "identity-a");
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-b"});
  EXPECT_EQ(ModeOf(KeyFile("identity-b")), 0600);
  EXPECT_EQ(ModeOf(out_file_), 0644);

  auto new_cert = Must(sh::CertFromPem(Read(out_file_)), "new cert");
  EXPECT_EQ(Read(out_file_), out->pem);
  EXPECT_NE(sh::CertFingerprint(new_cert.get()), sh::CertFingerprint(old_cert.get()));
  auto new_key = PublicOf("identity-b");
  ASSERT_TRUE(new_key);
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(new_cert.get()), new_key.get()));
  EXPECT_FALSE(sh::SamePublicKey(new_key.get(), old_key.get()));

  const Seen seen = server_->LastEnroll();
  EXPECT_EQ(seen.path, "/.well-known/est/simplereenroll");
  EXPECT_EQ(seen.peer_cn, "gw-0001");  // authenticated with the current identity
  EXPECT_EQ(seen.authorization, "");
  EXPECT_EQ(X509_NAME_cmp(X509_REQ_get_subject_name(seen.csr.get()), X509_get_subject_name(old_cert.get())), 0);
  EXPECT_TRUE(sh::SamePublicKey(X509_REQ_get0_pubkey(seen.csr.get()), new_key.get()));

  // Once more: back to slot a.
  auto again = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(again->key_slot, "identity-a");
  EXPECT_EQ(again->deleted_key_slot, "identity-b");
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-a"});
}

TEST_F(EstCommandsTest, ReenrollCopiesSubjectAndSubjectAltNames) {
  auto key = keys_->Generate("identity-a", sh::KeyType::kEcP256);
  ASSERT_TRUE(key) << key.error().ToString();
  auto subject = Name("gw-0009", "Example Fleet");
  auto old_cert = ca_.Issue(subject.get(), (*key)->pkey(), "DNS:gw-0009.fleet.example,IP:10.0.0.9");
  ASSERT_TRUE(fs_.WriteFileAtomic(out_file_, sh::CertToPem(old_cert.get()), 0644).ok());

  auto out = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  const Seen seen = server_->LastEnroll();
  EXPECT_EQ(X509_NAME_cmp(X509_REQ_get_subject_name(seen.csr.get()), subject.get()), 0);
  auto csr_sans = sh::CsrSans(seen.csr.get());
  ASSERT_TRUE(csr_sans);
  EXPECT_EQ(sh::CanonicalSans(csr_sans.get()), sh::CertSans(old_cert.get()));
  auto new_cert = Must(sh::CertFromPem(Read(out_file_)), "new cert");
  EXPECT_EQ(sh::CertSans(new_cert.get()), sh::CertSans(old_cert.get()));
  EXPECT_EQ(sh::NameToString(X509_get_subject_name(new_cert.get())), sh::NameToString(subject.get()));
}

TEST_F(EstCommandsTest, ReenrollKeepKeyRenewsWithTheSameKey) {
  EnrollFirst();
  auto old_cert = Must(sh::CertFromPem(Read(out_file_)), "old cert");
  std::string key_before = Read(KeyFile("identity-a"));
  EstCommandOptions o = ReenrollOptions();
  o.keep_key = true;
  auto out = RunReenroll(o, fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(out->key_slot, "identity-a");
  EXPECT_EQ(out->deleted_key_slot, "");
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-a"});
  EXPECT_EQ(Read(KeyFile("identity-a")), key_before);
  EXPECT_TRUE(
      sh::SamePublicKey(X509_REQ_get0_pubkey(server_->LastEnroll().csr.get()), X509_get0_pubkey(old_cert.get())));
  auto new_cert = Must(sh::CertFromPem(Read(out_file_)), "new cert");
  EXPECT_NE(sh::CertFingerprint(new_cert.get()), sh::CertFingerprint(old_cert.get()));
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(new_cert.get()), X509_get0_pubkey(old_cert.get())));
}

TEST_F(EstCommandsTest, ReenrollToAnotherFileKeepsTheOldIdentity) {
  EnrollFirst();
  std::string cert_before = Read(out_file_);
  EstCommandOptions o = ReenrollOptions();
  o.out_file = dir_ + "/next.pem";
  auto out = RunReenroll(o, fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_EQ(out->key_slot, "identity-b");
  EXPECT_EQ(out->deleted_key_slot, "");
  EXPECT_EQ(Slots(), (std::vector<std::string>{"identity-a", "identity-b"}));
  EXPECT_EQ(Read(out_file_), cert_before);
  EXPECT_EQ(Read(o.out_file), out->pem);
}

TEST_F(EstCommandsTest, ReenrollToAnotherFileWithTheOtherSlotInUseIsAlreadyExists) {
  EnrollFirst();
  auto occupant = keys_->Generate("identity-b", sh::KeyType::kEcP256);
  ASSERT_TRUE(occupant) << occupant.error().ToString();
  std::string cert_before = Read(out_file_);
  std::string b_before = Read(KeyFile("identity-b"));
  EstCommandOptions o = ReenrollOptions();
  o.out_file = dir_ + "/next.pem";
  auto out = RunReenroll(o, fs_, clock_, log_);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kAlreadyExists) << out.error().ToString();
  EXPECT_EQ(server_->Count("simplereenroll"), 0u);
  EXPECT_EQ(Read(out_file_), cert_before);
  EXPECT_EQ(Read(KeyFile("identity-b")), b_before);
  EXPECT_FALSE(fs_.Exists(o.out_file));
}

TEST_F(EstCommandsTest, ReenrollWithoutTheMatchingKeyIsNotFound) {
  auto stray = NewKey();
  auto cert = ca_.Issue(Name("gw-0001").get(), stray.get());
  ASSERT_TRUE(fs_.WriteFileAtomic(out_file_, sh::CertToPem(cert.get()), 0644).ok());
  ASSERT_TRUE(keys_->Generate("identity-a", sh::KeyType::kEcP256));  // some other key
  auto out = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kNotFound) << out.error().ToString();
  EXPECT_EQ(server_->Count(), 0u);
}

TEST_F(EstCommandsTest, ReenrollServerFailureLeavesTheIdentityAloneAndTheNextAttemptReusesTheNewKey) {
  EnrollFirst();
  std::string cert_before = Read(out_file_);
  std::string key_before = Read(KeyFile("identity-a"));

  server_->set_behaviour(Behaviour::kUnavailable);
  auto failed = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code(), Code::kUnavailable) << failed.error().ToString();
  EXPECT_EQ(Read(out_file_), cert_before);
  EXPECT_EQ(Read(KeyFile("identity-a")), key_before);
  auto pending = PublicOf("identity-b");  // generated, never certified
  ASSERT_TRUE(pending);

  server_->set_behaviour(Behaviour::kIssue);
  auto out = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_TRUE(out) << out.error().ToString();
  EXPECT_TRUE(sh::SamePublicKey(X509_REQ_get0_pubkey(server_->LastEnroll().csr.get()), pending.get()));
  EXPECT_EQ(Slots(), std::vector<std::string>{"identity-b"});
}

TEST_F(EstCommandsTest, ReenrollRejectsAChangedSubject) {
  EnrollFirst();
  std::string cert_before = Read(out_file_);
  server_->set_behaviour(Behaviour::kIssueWithOtherCn);
  auto out = RunReenroll(ReenrollOptions(), fs_, clock_, log_);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code(), Code::kDataLoss) << out.error().ToString();
  EXPECT_EQ(Read(out_file_), cert_before);
  EXPECT_TRUE(fs_.Exists(KeyFile("identity-a")));
}

TEST_F(EstCommandsTest, ReenrollOptionErrors) {
  EstCommandOptions o = ReenrollOptions();
  o.cert_file.clear();
  auto no_cert = RunReenroll(o, fs_, clock_, log_);
  ASSERT_FALSE(no_cert);
  EXPECT_EQ(no_cert.error().code(), Code::kInvalidArgument);

  auto missing = RunReenroll(ReenrollOptions(), fs_, clock_, log_);  // out_file_ does not exist yet
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_EQ(server_->Count(), 0u);
}

TEST(OtherSlotTest, AlternatesBetweenAAndB) {
  EXPECT_EQ(OtherSlot("identity-a"), "identity-b");
  EXPECT_EQ(OtherSlot("identity-b"), "identity-a");
  EXPECT_EQ(OtherSlot("identity"), "identity-b");
  EXPECT_EQ(OtherSlot("a"), "a-b");
}

}  // namespace
}  // namespace certfleet::agent
