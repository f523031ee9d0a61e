#include "companion/est_service.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "companion/ca.h"
#include "companion/cvm_request.h"
#include "companion/hook_set.h"
#include "companion/config.h"
#include "companion/init.h"
#include "companion/registry.h"
#include "companion/testing/test_companion.h"
#include "hal/memory_keystore.h"
#include "shared/core/base64.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::companion {
namespace {

namespace sh = shared;
using sh::KeyType;
using std::chrono::hours;
using std::chrono::seconds;

constexpr char kEst[] = "/.well-known/est/";
constexpr char kRemote[] = "192.0.2.10:40000";

std::optional<std::string> Header(const EstResponse& r, std::string_view name) {
  for (const auto& [k, v] : r.headers) {
    if (k.size() == name.size() && std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        })) {
      return v;
    }
  }
  return std::nullopt;
}

// RFC 7030 as clients decode it: base64 in lines of 64 characters, each ending in LF.
void ExpectEstBase64(const std::string& body) {
  ASSERT_FALSE(body.empty());
  EXPECT_EQ(body.back(), '\n');
  EXPECT_EQ(body.find('\r'), std::string::npos);
  std::vector<std::string> lines;
  for (size_t start = 0; start < body.size();) {
    size_t nl = body.find('\n', start);
    if (nl == std::string::npos) nl = body.size();
    lines.push_back(body.substr(start, nl - start));
    start = nl + 1;
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i + 1 < lines.size()) {
      EXPECT_EQ(lines[i].size(), 64u) << "line " << i;
    } else {
      EXPECT_GE(lines[i].size(), 1u);
      EXPECT_LE(lines[i].size(), 64u);
    }
    EXPECT_EQ(lines[i].find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
              std::string::npos)
        << lines[i];
  }
}

std::vector<sh::X509Ptr> CertsFromBody(const std::string& body) {
  auto der = sh::Base64Decode(body);
  EXPECT_TRUE(der) << der.error().ToString();
  if (!der) return {};
  auto certs = sh::ParseCertsOnly(*der);
  EXPECT_TRUE(certs) << certs.error().ToString();
  if (!certs) return {};
  return std::move(*certs);
}

sh::EvpPkeyPtr NewKey(KeyType type = KeyType::kEcP256) {
  auto key = sh::GenerateKeyPair(type);
  EXPECT_TRUE(key) << key.error().ToString();
  return key ? std::move(*key) : nullptr;
}

std::string CsrDer(EVP_PKEY* key, const std::string& cn, const std::vector<std::string>& dns = {}) {
  sh::CsrRequest req;
  req.common_name = cn;
  req.dns_names = dns;
  auto csr = sh::BuildCsr(key, req);
  EXPECT_TRUE(csr) << csr.error().ToString();
  return csr ? sh::CsrToDer(csr->get()) : std::string();
}

std::string CsrBody(EVP_PKEY* key, const std::string& cn, const std::vector<std::string>& dns = {}) {
  return sh::Base64Encode(CsrDer(key, cn, dns));
}

// A CSR for exactly `cert`'s subject (and no SAN), signed by `key`: a re-enrollment request.
std::string ReenrollBody(EVP_PKEY* key, X509* cert) {
  auto csr = sh::BuildCsrWithName(key, X509_get_subject_name(cert), nullptr);
  EXPECT_TRUE(csr) << csr.error().ToString();
  return csr ? sh::Base64Encode(sh::CsrToDer(csr->get())) : std::string();
}

std::string Basic(const std::string& user, const std::string& password) {
  return "Basic " + sh::Base64EncodeLine(user + ":" + password);
}

EstRequest Get(const std::string& op) {
  EstRequest r;
  r.method = "GET";
  r.path = kEst + op;
  r.remote = kRemote;
  return r;
}

EstRequest Post(const std::string& op, std::string body, std::string authorization = "") {
  EstRequest r;
  r.method = "POST";
  r.path = kEst + op;
  r.content_type = kPkcs10;
  r.body = std::move(body);
  r.authorization = std::move(authorization);
  r.remote = kRemote;
  return r;
}

struct Identity {
  sh::EvpPkeyPtr key;
  sh::X509Ptr cert;
};

Identity IssueLeaf(Issuer& issuer, const std::string& cn, sh::WallTime now) {
  Identity id;
  id.key = NewKey();
  CertTemplate tmpl;
  auto name = NameFromCommonName(cn);
  EXPECT_TRUE(name);
  if (!name || !id.key) return id;
  tmpl.subject = std::move(*name);
  tmpl.public_key = id.key.get();
  tmpl.validity = hours(24 * 30);
  tmpl.backdate = std::chrono::minutes(5);
  auto cert = issuer.Issue(tmpl, now);
  EXPECT_TRUE(cert) << cert.error().ToString();
  if (cert) id.cert = std::move(*cert);
  return id;
}

class EstServiceTest : public TestCompanion {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(InitState());
  }

  void TearDown() override {
    // Tokens are secrets: they never reach a log line or a security event.
    if (!state_) return;
    auto events = state_->registry->ListSecurityEvents(100000);
    ASSERT_TRUE(events);
    for (const auto& token : tokens_) {
      for (const auto& rec : log_.records()) EXPECT_EQ(rec.line.find(token), std::string::npos) << rec.line;
      for (const auto& rec : init_log_.records()) EXPECT_EQ(rec.line.find(token), std::string::npos) << rec.line;
      for (const auto& ev : *events) {
        EXPECT_EQ(ev.subject.find(token), std::string::npos) << ev.subject;
        EXPECT_EQ(ev.detail.find(token), std::string::npos) << ev.detail;
      }
    }
  }

  // The service is built on first use, so a test may change state_ before.
  EstService& Service() {
    if (!service_) service_ = std::make_unique<EstService>(*state_, clock_, log_);
    return *service_;
  }
  EstResponse Handle(const EstRequest& r) { return Service().Handle(r); }

  std::string MakeToken(const std::string& serial, std::chrono::seconds ttl = hours(1)) {
    auto token = NewToken();
    EXPECT_TRUE(token) << token.error().ToString();
    if (!token) return {};
    Status st = state_->registry->CreateToken(TokenHash(*token), serial, clock_.Now(), clock_.Now() + ttl);
    EXPECT_TRUE(st.ok()) << st.ToString();
    tokens_.push_back(*token);
    // The Authorization header carries it too; that must not be logged either.
    tokens_.push_back(sh::Base64EncodeLine(serial + ":" + *token));
    return *token;
  }
  bool TokenUsed(const std::string& token) {
    auto t = state_->registry->FindToken(TokenHash(token));
    EXPECT_TRUE(t && *t);
    return t && *t && (*t)->used_at.has_value();
  }

  size_t CountCerts() {
    auto all = state_->registry->ListCerts("", 100000);
    EXPECT_TRUE(all) << all.error().ToString();
    return all ? all->size() : 0;
  }
  std::optional<CertRecord> Record(X509* cert) {
    auto c = state_->registry->FindCert(sh::CertFingerprint(cert));
    EXPECT_TRUE(c) << c.error().ToString();
    return c ? *c : std::nullopt;
  }
  std::vector<std::string> EventKinds() {
    std::vector<std::string> kinds;
    auto events = state_->registry->ListSecurityEvents(100000);
    EXPECT_TRUE(events);
    if (events) {
      for (const auto& e : *events) kinds.push_back(e.kind);
    }
    return kinds;
  }
  bool HasEvent(const std::string& kind) {
    auto kinds = EventKinds();
    return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
  }

  // The single certificate of a successful enrollment response (null on failure).
  sh::X509Ptr Issued(const EstResponse& r) {
    EXPECT_EQ(r.status, 200) << r.body;
    if (r.status != 200) return nullptr;
    EXPECT_EQ(r.content_type, kPkcs7CertsOnly);
    ExpectEstBase64(r.body);
    auto certs = CertsFromBody(r.body);
    EXPECT_EQ(certs.size(), 1u);
    if (certs.size() != 1) return nullptr;
    return std::move(certs.front());
  }

  // Enrolls `serial` with a fresh token; returns the certificate.
  sh::X509Ptr EnrollWithToken(const std::string& serial, EVP_PKEY* key) {
    std::string token = MakeToken(serial);
    return Issued(Handle(Post("simpleenroll", CsrBody(key, serial), Basic(serial, token))));
  }

  EstRequest Reenroll(std::string body, X509* peer) {
    EstRequest r = Post("simplereenroll", std::move(body));
    r.peer_cert = peer;
    return r;
  }

  // Installs `ca` as the bootstrap (claim) trust, as a PEM file would.
  void TrustForClaims(X509* ca) {
    ASSERT_NO_FATAL_FAILURE(WriteClaimTrust(sh::CertToPem(ca)));
    auto pem = fs_.ReadFile(ClaimTrustPath(), 1 << 20);
    ASSERT_TRUE(pem);
    auto loaded = sh::CertFromPem(*pem);
    ASSERT_TRUE(loaded) << loaded.error().ToString();
    auto ts = sh::TrustStore::FromCerts({loaded->get()});
    ASSERT_TRUE(ts) << ts.error().ToString();
    state_->bootstrap_trust = std::move(*ts);
  }

  std::unique_ptr<EstService> service_;
  std::vector<std::string> tokens_;
};

// ---- Routing, cacerts, csrattrs ----

TEST_F(EstServiceTest, CaCertsIsBase64CertsOnlyWithTheChain) {
  EstResponse r = Handle(Get("cacerts"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/pkcs7-mime");
  ExpectEstBase64(r.body);
  auto certs = CertsFromBody(r.body);
  ASSERT_EQ(certs.size(), 2u);
  EXPECT_EQ(X509_cmp(certs[0].get(), state_->issuer->cert()), 0) << "issuing CA first";
  EXPECT_EQ(X509_cmp(certs[1].get(), state_->root.get()), 0) << "then the root";
  // The issuing CA chains to the root it came with.
  auto ts = sh::TrustStore::FromCerts({certs[1].get()});
  ASSERT_TRUE(ts);
  EXPECT_TRUE(ts->Verify(certs[0].get(), nullptr, clock_.Now()).ok());
  // No client authentication was needed, and nothing was recorded as suspicious.
  EXPECT_TRUE(EventKinds().empty());
}

TEST_F(EstServiceTest, CsrAttrsIsNoContent) {
  EstResponse r = Handle(Get("csrattrs"));
  EXPECT_EQ(r.status, 204);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(EstServiceTest, WrongMethodIs405WithAllow) {
  struct Case {
    std::string method;
    std::string op;
    std::string allow;
  };
  for (const Case& c : std::vector<Case>{{"GET", "simpleenroll", "POST"},
                                         {"GET", "simplereenroll", "POST"},
                                         {"PUT", "simpleenroll", "POST"},
                                         {"POST", "cacerts", "GET"},
                                         {"POST", "csrattrs", "GET"}}) {
    SCOPED_TRACE(c.method + " " + c.op);
    EstRequest req = Post(c.op, "");
    req.method = c.method;
    EstResponse r = Handle(req);
    EXPECT_EQ(r.status, 405);
    EXPECT_EQ(Header(r, "Allow"), c.allow);
  }
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, UnknownOperationsAndPathsAre404) {
  for (const std::string path : {"/.well-known/est/nosuchop", "/.well-known/est/", "/.well-known/est",
                                 "/.well-known/estcacerts", "/cacerts", "/", "", "/.well-known/est/cacerts/extra",
                                 "/.well-known/est//cacerts"}) {
    SCOPED_TRACE(path);
    EstRequest req = Get("");
    req.path = path;
    EXPECT_EQ(Handle(req).status, 404);
  }
  EXPECT_EQ(Handle(Post("serverkeygen", "")).status, 501);
  EXPECT_EQ(Handle(Post("fullcmc", "")).status, 501);
}

TEST_F(EstServiceTest, UnknownLabelIs404) {
  EstRequest req = Get("");
  req.path = "/.well-known/est/prod/cacerts";
  EXPECT_EQ(Handle(req).status, 404);
}

TEST_F(EstServiceTest, ConfiguredLabelsWork) {
  state_->config.est.labels = {"prod", "lab"};
  for (const std::string label : {"prod", "lab"}) {
    EstRequest req = Get("");
    req.path = "/.well-known/est/" + label + "/cacerts";
    EstResponse r = Handle(req);
    EXPECT_EQ(r.status, 200) << label;
    EXPECT_EQ(CertsFromBody(r.body).size(), 2u);
  }
  EstRequest other = Get("");
  other.path = "/.well-known/est/staging/cacerts";
  EXPECT_EQ(Handle(other).status, 404);
  EstRequest nested = Get("");
  nested.path = "/.well-known/est/prod/lab/cacerts";
  EXPECT_EQ(Handle(nested).status, 404);
  EstRequest unknown_op = Get("");
  unknown_op.path = "/.well-known/est/prod/nosuchop";
  EXPECT_EQ(Handle(unknown_op).status, 404);
  // The unlabelled path keeps working.
  EXPECT_EQ(Handle(Get("cacerts")).status, 200);

  // Enrollment through a label.
  auto key = NewKey();
  std::string token = MakeToken("gw-label");
  EstRequest enroll = Post("", CsrBody(key.get(), "gw-label"), Basic("gw-label", token));
  enroll.path = "/.well-known/est/prod/simpleenroll";
  auto cert = Issued(Handle(enroll));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).common_name, "gw-label");
}

// ---- simpleenroll with a token ----

TEST_F(EstServiceTest, TokenEnrollmentIssuesAndRecords) {
  auto key = NewKey();
  std::string token = MakeToken("gw-0001");
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-0001"), Basic("gw-0001", token)));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/pkcs7-mime; smime-type=certs-only");
  auto cert = Issued(r);
  ASSERT_TRUE(cert);

  sh::CertInfo info = sh::DescribeCert(cert.get());
  EXPECT_EQ(info.common_name, "gw-0001");
  EXPECT_FALSE(info.is_ca);
  EXPECT_TRUE(info.dns_names.empty());
  EXPECT_EQ(info.not_after, clock_.Now() + state_->config.profile.validity);
  EXPECT_EQ(info.not_before, clock_.Now() - state_->config.profile.backdate);
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), key.get()));
  EXPECT_NE(X509_get_extended_key_usage(cert.get()) & XKU_SSL_CLIENT, 0u);
  Status verified = VerifyToRoot(cert.get(), clock_.Now());
  EXPECT_TRUE(verified.ok()) << verified.ToString();

  auto rec = Record(cert.get());
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->thing_name, "gw-0001");
  EXPECT_EQ(rec->serial, info.serial);
  EXPECT_EQ(rec->status, CertStatus::kActive);
  EXPECT_EQ(rec->source, "est-enroll-token");
  EXPECT_EQ(rec->issued_at, clock_.Now());
  EXPECT_EQ(rec->pem, sh::CertToPem(cert.get()));
  EXPECT_TRUE(TokenUsed(token));
  auto things = state_->registry->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].name, "gw-0001");
  EXPECT_EQ((*things)[0].current_cert_id, sh::CertFingerprint(cert.get()));
  EXPECT_TRUE(log_.Contains("issued thing=gw-0001"));
  EXPECT_TRUE(EventKinds().empty());
}

TEST_F(EstServiceTest, ANewTokenReprovisionsAThing) {
  auto key = NewKey();
  auto first = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(first);
  auto key2 = NewKey();
  auto second = EnrollWithToken("gw-1", key2.get());
  ASSERT_TRUE(second);
  auto first_rec = Record(first.get());
  ASSERT_TRUE(first_rec);
  EXPECT_EQ(first_rec->superseded_by, sh::CertFingerprint(second.get()));
  auto things = state_->registry->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].current_cert_id, sh::CertFingerprint(second.get()));
}

// A quarantine holds whatever the path: a fresh token for the thing gets no certificate
// either, and the token stays unused.
TEST_F(EstServiceTest, QuarantinedThingGetsNothingFromANewToken) {
  auto key = NewKey();
  ASSERT_TRUE(EnrollWithToken("gw-1", key.get()));
  ASSERT_TRUE(state_->registry->SetQuarantine("gw-1", std::string("audit finding"), "test", clock_.Now()).ok());
  std::string token = MakeToken("gw-1");
  auto key2 = NewKey();
  auto refused = Handle(Post("simpleenroll", CsrBody(key2.get(), "gw-1"), Basic("gw-1", token)));
  EXPECT_EQ(refused.status, 403);
  EXPECT_NE(refused.body.find("quarantined"), std::string::npos) << refused.body;
  EXPECT_TRUE(HasEvent("quarantined_thing"));
  EXPECT_EQ(CountCerts(), 1u);
  ASSERT_TRUE(state_->registry->SetQuarantine("gw-1", std::nullopt, "test", clock_.Now()).ok());
  EXPECT_TRUE(Issued(Handle(Post("simpleenroll", CsrBody(key2.get(), "gw-1"), Basic("gw-1", token)))))
      << "the token was not used up by the refusal";
}

TEST_F(EstServiceTest, ReusedTokenIs401AndRecorded) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  ASSERT_EQ(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token))).status, 200);
  size_t count = CountCerts();

  auto key2 = NewKey();
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key2.get(), "gw-1"), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_TRUE(Header(r, "WWW-Authenticate"));
  EXPECT_EQ(CountCerts(), count);
  auto events = state_->registry->ListSecurityEvents(10);
  ASSERT_TRUE(events);
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, "token_reused");
  EXPECT_EQ((*events)[0].subject, "serial:gw-1");
  EXPECT_NE((*events)[0].detail.find(kRemote), std::string::npos) << (*events)[0].detail;
  EXPECT_EQ((*events)[0].at, clock_.Now());
}

TEST_F(EstServiceTest, ExpiredTokenIs401) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1", hours(1));
  clock_.Advance(hours(1));
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_TRUE(HasEvent("token_expired"));
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_FALSE(TokenUsed(token));
}

TEST_F(EstServiceTest, TokenOfAnotherSerialIs401) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-2"), Basic("gw-2", token)));
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_TRUE(HasEvent("token_foreign"));
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_FALSE(TokenUsed(token));
}

TEST_F(EstServiceTest, UnknownTokenIs401) {
  auto key = NewKey();
  MakeToken("gw-1");
  auto not_stored = NewToken();
  ASSERT_TRUE(not_stored);
  tokens_.push_back(*not_stored);
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", *not_stored)));
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_TRUE(HasEvent("token_unknown"));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, CommonNameOtherThanSerialIs403) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-2"), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("subject_mismatch"));
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_FALSE(TokenUsed(token));
}

// Gateways are often named by MAC address. RFC 7617 user-ids cannot hold ':', but
// tokens never contain one, so the server splits user and token at the last colon.
TEST_F(EstServiceTest, SerialWithColonsEnrolls) {
  auto key = NewKey();
  const std::string serial = "00:1a:2b:3c:4d:5e";
  auto cert = EnrollWithToken(serial, key.get());
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).common_name, serial);
}

TEST_F(EstServiceTest, EmptyCommonNameBecomesTheSerial) {
  auto key = NewKey();
  std::string token = MakeToken("gw-blank");
  auto cert = Issued(Handle(Post("simpleenroll", CsrBody(key.get(), ""), Basic("gw-blank", token))));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).common_name, "gw-blank");
  auto rec = Record(cert.get());
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->thing_name, "gw-blank");
}

TEST_F(EstServiceTest, MissingCredentialsIs401WithBasicChallenge) {
  auto key = NewKey();
  EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1")));
  EXPECT_EQ(r.status, 401) << r.body;
  auto challenge = Header(r, "WWW-Authenticate");
  ASSERT_TRUE(challenge);
  EXPECT_EQ(challenge->rfind("Basic ", 0), 0u) << *challenge;
  EXPECT_NE(challenge->find("realm="), std::string::npos) << *challenge;
  EXPECT_TRUE(HasEvent("missing_credentials"));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, MalformedAuthorizationIs401) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  for (const std::string& auth :
       {std::string("Bearer ") + token, std::string("Basic"), std::string("Basic !!!not-base64!!!"),
        "Basic " + sh::Base64EncodeLine("gw-1" + token), std::string("Digest username=\"gw-1\"")}) {
    SCOPED_TRACE(auth);
    EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), auth));
    EXPECT_EQ(r.status, 401) << r.body;
    EXPECT_TRUE(Header(r, "WWW-Authenticate"));
  }
  EXPECT_TRUE(HasEvent("malformed_credentials"));
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_FALSE(TokenUsed(token));
  // The scheme is case-insensitive.
  EstResponse ok = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"),
                               "basic " + sh::Base64EncodeLine("gw-1:" + token)));
  EXPECT_EQ(ok.status, 200) << ok.body;
}

TEST_F(EstServiceTest, ContentTypeIsChecked) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  for (const std::string ct : {"", "application/x-pem-file", "text/plain", "application/pkcs7-mime",
                               "application/pkcs10x", "multipart/form-data"}) {
    SCOPED_TRACE(ct);
    EstRequest req = Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token));
    req.content_type = ct;
    EXPECT_EQ(Handle(req).status, 415);
  }
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_FALSE(TokenUsed(token));

  // Parameters, case and surrounding space do not matter.
  int n = 0;
  for (const std::string ct : {"application/pkcs10; charset=x", "Application/PKCS10", " application/pkcs10 ",
                               "application/pkcs10"}) {
    SCOPED_TRACE(ct);
    std::string serial = "gw-ct-" + std::to_string(n++);
    std::string t = MakeToken(serial);
    EstRequest req = Post("simpleenroll", CsrBody(key.get(), serial), Basic(serial, t));
    req.content_type = ct;
    EXPECT_EQ(Handle(req).status, 200);
  }
}

TEST_F(EstServiceTest, MalformedBase64Is400) {
  std::string token = MakeToken("gw-1");
  EstResponse r = Handle(Post("simpleenroll", "@@@ this is not base64 @@@", Basic("gw-1", token)));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_TRUE(HasEvent("bad_request"));
  EXPECT_FALSE(TokenUsed(token));
}

TEST_F(EstServiceTest, LenientBase64IsAccepted) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  // One long line with CRLF, spaces and a trailing NUL (RFC 8951).
  std::string body = " " + sh::Base64EncodeLine(CsrDer(key.get(), "gw-1")) + "\r\n";
  body.push_back('\0');
  EXPECT_EQ(Handle(Post("simpleenroll", body, Basic("gw-1", token))).status, 200);
}

TEST_F(EstServiceTest, NonDerCsrIs400) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  std::string der = CsrDer(key.get(), "gw-1");
  auto some_cert = EnrollWithToken("gw-other", key.get());
  ASSERT_TRUE(some_cert);
  auto pem_csr = sh::CsrFromDer(der);
  ASSERT_TRUE(pem_csr);
  for (const std::string& payload : {std::string("hello, world"), std::string(), der + "trailing",
                                     der.substr(0, der.size() / 2), sh::CertToDer(some_cert.get()),
                                     sh::CsrToPem(pem_csr->get())}) {
    EstResponse r = Handle(Post("simpleenroll", sh::Base64Encode(payload), Basic("gw-1", token)));
    EXPECT_EQ(r.status, 400) << r.body;
  }
  EXPECT_FALSE(TokenUsed(token));
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, CorruptSignatureIs400AndKeepsTheToken) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  std::string der = CsrDer(key.get(), "gw-1");
  ASSERT_FALSE(der.empty());
  std::string bad = der;
  bad.back() = static_cast<char>(bad.back() ^ 0x01);  // last byte of the ECDSA signature
  EstResponse r = Handle(Post("simpleenroll", sh::Base64Encode(bad), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("signature"), std::string::npos) << r.body;
  EXPECT_FALSE(TokenUsed(token));
  EXPECT_EQ(CountCerts(), 0u);

  // The token still works with a good CSR.
  auto cert = Issued(Handle(Post("simpleenroll", sh::Base64Encode(der), Basic("gw-1", token))));
  ASSERT_TRUE(cert);
  EXPECT_TRUE(TokenUsed(token));
}

TEST_F(EstServiceTest, WeakOrDisallowedKeysAre400) {
  std::string token = MakeToken("gw-1");
  sh::EvpPkeyPtr rsa1024(EVP_RSA_gen(1024));
  ASSERT_TRUE(rsa1024);
  EstResponse r = Handle(Post("simpleenroll", CsrBody(rsa1024.get(), "gw-1"), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("1024"), std::string::npos) << r.body;
  EXPECT_TRUE(HasEvent("key_policy"));

  sh::EvpPkeyPtr p521(EVP_EC_gen("P-521"));
  ASSERT_TRUE(p521);
  EXPECT_EQ(Handle(Post("simpleenroll", CsrBody(p521.get(), "gw-1"), Basic("gw-1", token))).status, 400);
  sh::EvpPkeyPtr ed25519(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_TRUE(ed25519);
  EXPECT_EQ(Handle(Post("simpleenroll", CsrBody(ed25519.get(), "gw-1"), Basic("gw-1", token))).status, 400);
  EXPECT_FALSE(TokenUsed(token));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, ProfileKeyTypesRestrictEnrollment) {
  state_->config.profile.key_types = {"ec-p384"};
  std::string token = MakeToken("gw-1");
  auto p256 = NewKey(KeyType::kEcP256);
  EXPECT_EQ(Handle(Post("simpleenroll", CsrBody(p256.get(), "gw-1"), Basic("gw-1", token))).status, 400);
  auto p384 = NewKey(KeyType::kEcP384);
  auto cert = Issued(Handle(Post("simpleenroll", CsrBody(p384.get(), "gw-1"), Basic("gw-1", token))));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeKey(X509_get0_pubkey(cert.get())).curve, "secp384r1");
}

TEST_F(EstServiceTest, CsrSansAreRefusedUnlessAllowed) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  EstResponse r =
      Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1", {"gw-1.example"}), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_TRUE(HasEvent("san_not_allowed"));
  EXPECT_FALSE(TokenUsed(token));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, CsrSansAreCopiedWhenAllowed) {
  state_->config.profile.allow_csr_sans = true;
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  auto cert =
      Issued(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1", {"gw-1.example"}), Basic("gw-1", token))));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).dns_names, std::vector<std::string>{"gw-1.example"});
}

TEST_F(EstServiceTest, ConcurrentUsesOfOneTokenIssueOnce) {
  std::string token = MakeToken("gw-race");
  constexpr int kThreads = 6;
  std::vector<std::string> bodies;
  for (int i = 0; i < kThreads; ++i) {
    auto key = NewKey();
    bodies.push_back(CsrBody(key.get(), "gw-race"));
  }
  EstService& service = Service();
  std::atomic<int> ok{0};
  std::atomic<int> unauthorized{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      EstResponse r = service.Handle(Post("simpleenroll", bodies[static_cast<size_t>(i)], Basic("gw-race", token)));
      if (r.status == 200) ++ok;
      if (r.status == 401) ++unauthorized;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(unauthorized.load(), kThreads - 1);
  EXPECT_EQ(CountCerts(), 1u);
}

// ---- simpleenroll with a claim (bootstrap) certificate ----

TEST_F(EstServiceTest, ClaimEnrollmentOncePerThing) {
  auto claim_ca = MakeTestCa("claim CA", clock_.Now());
  ASSERT_TRUE(claim_ca);
  TrustForClaims(claim_ca->cert());
  Identity claim = IssueLeaf(*claim_ca->issuer, "claim-batch-7", clock_.Now());
  ASSERT_TRUE(claim.cert);

  auto key = NewKey();
  EstRequest req = Post("simpleenroll", CsrBody(key.get(), "gw-claimed"));
  req.peer_cert = claim.cert.get();
  auto cert = Issued(Handle(req));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).common_name, "gw-claimed");
  EXPECT_TRUE(VerifyToRoot(cert.get(), clock_.Now()).ok());
  auto rec = Record(cert.get());
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->source, "est-enroll-claim");
  EXPECT_EQ(rec->thing_name, "gw-claimed");

  // The same thing cannot be claimed again (it must re-enroll).
  auto key2 = NewKey();
  EstRequest again = Post("simpleenroll", CsrBody(key2.get(), "gw-claimed"));
  again.peer_cert = claim.cert.get();
  EstResponse r = Handle(again);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("thing_exists"));
  EXPECT_EQ(CountCerts(), 1u);
  auto current = Record(cert.get());
  ASSERT_TRUE(current);
  EXPECT_FALSE(current->superseded_by);

  // Another thing with the same claim certificate is fine.
  EstRequest other = Post("simpleenroll", CsrBody(key2.get(), "gw-claimed-2"));
  other.peer_cert = claim.cert.get();
  EXPECT_EQ(Handle(other).status, 200);
}

TEST_F(EstServiceTest, ClaimEnrollmentThroughAnIntermediateUsesThePeerChain) {
  auto claim_root = MakeTestCa("claim root", clock_.Now());
  ASSERT_TRUE(claim_root);
  TrustForClaims(claim_root->cert());
  // A claim intermediate (as a factory would hold it), then the device's claim certificate.
  auto root_key = claim_root->keys.Load("ca");
  ASSERT_TRUE(root_key) << root_key.error().ToString();
  hal::MemoryKeyStore keys;
  auto sub_key = keys.Generate("sub", KeyType::kEcP256);
  ASSERT_TRUE(sub_key) << sub_key.error().ToString();
  auto sub_cert = MakeIntermediateCa((*sub_key)->pkey(), "claim factory 3", claim_root->cert(), (*root_key)->pkey(),
                                     hours(24 * 365), clock_.Now());
  ASSERT_TRUE(sub_cert) << sub_cert.error().ToString();
  sh::X509Ptr sub_copy(X509_dup(sub_cert->get()));
  Issuer sub(std::move(*sub_cert), std::move(*sub_key), {});
  Identity claim = IssueLeaf(sub, "claim-factory-3", clock_.Now());
  ASSERT_TRUE(claim.cert);

  auto key = NewKey();
  // Without the intermediate the chain cannot be built.
  EstRequest alone = Post("simpleenroll", CsrBody(key.get(), "gw-f3"));
  alone.peer_cert = claim.cert.get();
  EXPECT_EQ(Handle(alone).status, 403);

  sh::X509StackPtr chain(sk_X509_new_null());
  sk_X509_push(chain.get(), sub_copy.release());
  EstRequest with_chain = Post("simpleenroll", CsrBody(key.get(), "gw-f3"));
  with_chain.peer_cert = claim.cert.get();
  with_chain.peer_chain = chain.get();
  auto cert = Issued(Handle(with_chain));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).common_name, "gw-f3");
}

TEST_F(EstServiceTest, InitIsIdempotent) {
  const std::string root_pem = sh::CertToPem(state_->root.get());
  auto tls_before = fs_.ReadFile(state_->config.est.tls_cert_file, 1 << 20);
  ASSERT_TRUE(tls_before);
  InitOptions o;
  o.state_dir = state_->config.state_dir;
  auto again = InitCompanion(o, fs_, clock_, init_log_);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(*again, o.state_dir + "/companion.toml");
  auto root_after = fs_.ReadFile(state_->config.ca.root_cert_file, 1 << 20);
  ASSERT_TRUE(root_after);
  EXPECT_EQ(*root_after, root_pem);
  auto tls_after = fs_.ReadFile(state_->config.est.tls_cert_file, 1 << 20);
  ASSERT_TRUE(tls_after);
  EXPECT_EQ(*tls_after, *tls_before);
  // The EST server certificate chains to our root and is for serverAuth.
  auto tls = sh::CertFromPem(*tls_after);
  ASSERT_TRUE(tls);
  EXPECT_TRUE(VerifyToRoot(tls->get(), clock_.Now()).ok());
  EXPECT_NE(X509_get_extended_key_usage(tls->get()) & XKU_SSL_SERVER, 0u);
}

TEST_F(EstServiceTest, ClaimEnrollmentNeedsAValidThingName) {
  auto claim_ca = MakeTestCa("claim CA", clock_.Now());
  ASSERT_TRUE(claim_ca);
  TrustForClaims(claim_ca->cert());
  Identity claim = IssueLeaf(*claim_ca->issuer, "claim", clock_.Now());
  auto key = NewKey();
  for (const std::string cn : {"", "gw 1", "gw/1", "gw@1", "gw,1"}) {
    SCOPED_TRACE(cn);
    EstRequest req = Post("simpleenroll", CsrBody(key.get(), cn));
    req.peer_cert = claim.cert.get();
    EXPECT_EQ(Handle(req).status, 400);
  }
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, ClientCertFromUnknownCaIs403) {
  auto claim_ca = MakeTestCa("claim CA", clock_.Now());
  auto rogue_ca = MakeTestCa("rogue CA", clock_.Now());
  ASSERT_TRUE(claim_ca && rogue_ca);
  TrustForClaims(claim_ca->cert());
  Identity rogue = IssueLeaf(*rogue_ca->issuer, "claim-batch-7", clock_.Now());
  auto key = NewKey();
  EstRequest req = Post("simpleenroll", CsrBody(key.get(), "gw-rogue"));
  req.peer_cert = rogue.cert.get();
  EstResponse r = Handle(req);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("untrusted_client_certificate"));

  // A production certificate is not a claim certificate either.
  auto device = EnrollWithToken("gw-device", key.get());
  ASSERT_TRUE(device);
  EstRequest with_device = Post("simpleenroll", CsrBody(key.get(), "gw-rogue"));
  with_device.peer_cert = device.get();
  EXPECT_EQ(Handle(with_device).status, 403);

  // An expired claim certificate is refused too.
  Identity claim = IssueLeaf(*claim_ca->issuer, "claim", clock_.Now());
  clock_.Advance(hours(24 * 31));
  EstRequest expired = Post("simpleenroll", CsrBody(key.get(), "gw-late"));
  expired.peer_cert = claim.cert.get();
  EXPECT_EQ(Handle(expired).status, 403);
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, ClientCertWithoutBootstrapTrustIs403) {
  auto claim_ca = MakeTestCa("claim CA", clock_.Now());
  ASSERT_TRUE(claim_ca);
  Identity claim = IssueLeaf(*claim_ca->issuer, "claim", clock_.Now());
  auto key = NewKey();
  EstRequest req = Post("simpleenroll", CsrBody(key.get(), "gw-1"));
  req.peer_cert = claim.cert.get();
  EstResponse r = Handle(req);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, UntrustedClientCertFallsBackToTheToken) {
  auto rogue_ca = MakeTestCa("rogue CA", clock_.Now());
  ASSERT_TRUE(rogue_ca);
  Identity rogue = IssueLeaf(*rogue_ca->issuer, "whatever", clock_.Now());
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  EstRequest req = Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token));
  req.peer_cert = rogue.cert.get();
  auto cert = Issued(Handle(req));
  ASSERT_TRUE(cert);
  auto rec = Record(cert.get());
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->source, "est-enroll-token");
}

TEST_F(EstServiceTest, BootstrapTrustFileIsLoadedFromConfig) {
  auto claim_ca = MakeTestCa("claim CA", clock_.Now());
  ASSERT_TRUE(claim_ca);
  std::string path = dir_.path() + "/claim-cas.pem";
  ASSERT_TRUE(fs_.WriteFileAtomic(path, sh::CertToPem(claim_ca->cert()), 0644).ok());
  CompanionConfig cfg = state_->config;
  cfg.est.bootstrap_trust_file = path;
  auto loaded = LoadCompanionState(cfg, fs_, LoadOptions{});
  ASSERT_TRUE(loaded) << loaded.error().ToString();
  ASSERT_TRUE(loaded->bootstrap_trust);
  state_ = std::make_unique<CompanionState>(std::move(*loaded));

  Identity claim = IssueLeaf(*claim_ca->issuer, "claim", clock_.Now());
  auto key = NewKey();
  EstRequest req = Post("simpleenroll", CsrBody(key.get(), "gw-1"));
  req.peer_cert = claim.cert.get();
  EXPECT_EQ(Handle(req).status, 200);

  // A file that holds no certificate is an error that names it.
  std::string junk = dir_.path() + "/junk.pem";
  ASSERT_TRUE(fs_.WriteFileAtomic(junk, "not a certificate\n", 0644).ok());
  cfg.est.bootstrap_trust_file = junk;
  auto bad = LoadCompanionState(cfg, fs_, LoadOptions{});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find(junk), std::string::npos) << bad.error().ToString();
}

// ---- simplereenroll ----

TEST_F(EstServiceTest, ReenrollWithANewKeyIsARekey) {
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  clock_.Advance(hours(24 * 60));

  auto new_key = NewKey();
  auto cert = Issued(Handle(Reenroll(ReenrollBody(new_key.get(), old_cert.get()), old_cert.get())));
  ASSERT_TRUE(cert);
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_subject_name(old_cert.get())), 0);
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), new_key.get()));
  EXPECT_TRUE(VerifyToRoot(cert.get(), clock_.Now()).ok());
  EXPECT_EQ(sh::DescribeCert(cert.get()).not_after, clock_.Now() + state_->config.profile.validity);

  auto rec = Record(cert.get());
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->source, "est-rekey");
  EXPECT_EQ(rec->thing_name, "gw-1");
  EXPECT_FALSE(rec->superseded_by);
  auto old_rec = Record(old_cert.get());
  ASSERT_TRUE(old_rec);
  EXPECT_EQ(old_rec->superseded_by, sh::CertFingerprint(cert.get()));
  EXPECT_EQ(old_rec->superseded_at, clock_.Now());
  auto things = state_->registry->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].current_cert_id, sh::CertFingerprint(cert.get()));
  EXPECT_TRUE(log_.Contains("source=est-rekey"));
}

TEST_F(EstServiceTest, ReenrollWithTheSameKeyIsARenewal) {
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  auto cert = Issued(Handle(Reenroll(ReenrollBody(key.get(), old_cert.get()), old_cert.get())));
  ASSERT_TRUE(cert);
  auto rec = Record(cert.get());
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->source, "est-renew");
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), key.get()));
}

TEST_F(EstServiceTest, ReenrollCanRequireANewKey) {
  state_->config.est.reenroll_require_new_key = true;
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  size_t count = CountCerts();
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), old_cert.get()), old_cert.get()));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_TRUE(HasEvent("key_reuse"));
  EXPECT_EQ(CountCerts(), count);
  auto new_key = NewKey();
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(new_key.get(), old_cert.get()), old_cert.get())).status, 200);
}

TEST_F(EstServiceTest, ReenrollWithAnotherSubjectIs403) {
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  EstResponse r = Handle(Reenroll(CsrBody(key.get(), "gw-2"), old_cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("subject_mismatch"));
  // An extra attribute in the subject is a change too.
  sh::X509NamePtr name(X509_NAME_dup(X509_get_subject_name(old_cert.get())));
  ASSERT_EQ(X509_NAME_add_entry_by_txt(name.get(), "O", MBSTRING_UTF8,
                                       reinterpret_cast<const unsigned char*>("evil"), -1, -1, 0),
            1);
  auto csr = sh::BuildCsrWithName(key.get(), name.get(), nullptr);
  ASSERT_TRUE(csr);
  EXPECT_EQ(Handle(Reenroll(sh::Base64Encode(sh::CsrToDer(csr->get())), old_cert.get())).status, 403);
  EXPECT_EQ(CountCerts(), 1u);
  auto rec = Record(old_cert.get());
  ASSERT_TRUE(rec);
  EXPECT_FALSE(rec->superseded_by);
}

TEST_F(EstServiceTest, ReenrollWithAnotherSanIs403) {
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  // Same subject (CN=gw-1) but a SAN the current certificate does not have.
  EstResponse r = Handle(Reenroll(CsrBody(key.get(), "gw-1", {"gw-1.example"}), old_cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, ReenrollKeepsSansOfTheCurrentCertificate) {
  state_->config.profile.allow_csr_sans = true;
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  auto old_cert =
      Issued(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1", {"gw-1.example"}), Basic("gw-1", token))));
  ASSERT_TRUE(old_cert);
  // Dropping the SAN is a change.
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), old_cert.get()), old_cert.get())).status, 403);
  // Another SAN is a change.
  EXPECT_EQ(Handle(Reenroll(CsrBody(key.get(), "gw-1", {"gw-2.example"}), old_cert.get())).status, 403);
  // The same SAN is accepted and kept.
  auto cert = Issued(Handle(Reenroll(CsrBody(key.get(), "gw-1", {"gw-1.example"}), old_cert.get())));
  ASSERT_TRUE(cert);
  EXPECT_EQ(sh::DescribeCert(cert.get()).dns_names, std::vector<std::string>{"gw-1.example"});
}

TEST_F(EstServiceTest, ReenrollWithAnUnrecordedCertificateIs403) {
  auto key = NewKey();
  CertTemplate tmpl;
  auto name = NameFromCommonName("gw-ghost");
  ASSERT_TRUE(name);
  tmpl.subject = std::move(*name);
  tmpl.public_key = key.get();
  tmpl.validity = hours(24 * 90);
  auto ghost = state_->issuer->Issue(tmpl, clock_.Now());
  ASSERT_TRUE(ghost) << ghost.error().ToString();
  ASSERT_TRUE(VerifyToRoot(ghost->get(), clock_.Now()).ok());

  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), ghost->get()), ghost->get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("unknown_client_certificate"));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, ReenrollWithAForeignCertificateIs403) {
  auto rogue_ca = MakeTestCa("rogue CA", clock_.Now());
  ASSERT_TRUE(rogue_ca);
  Identity rogue = IssueLeaf(*rogue_ca->issuer, "gw-1", clock_.Now());
  EstResponse r = Handle(Reenroll(ReenrollBody(rogue.key.get(), rogue.cert.get()), rogue.cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("untrusted_client_certificate"));
}

TEST_F(EstServiceTest, ReenrollWithAnExpiredCertificateIs403) {
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  sh::WallTime not_after = sh::DescribeCert(old_cert.get()).not_after;
  clock_.SetWall(not_after + seconds(1));
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), old_cert.get()), old_cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, ExpiredCertificateIsRefusedWithoutTheGrace) {
  ASSERT_EQ(state_->config.est.expired_reenroll_grace, seconds(0));
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  clock_.SetWall(sh::DescribeCert(old_cert.get()).not_after + hours(1));
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), old_cert.get()), old_cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(r.body.find("expired_certificate"), std::string::npos) << r.body;
  EXPECT_TRUE(HasEvent("expired_certificate"));
  EXPECT_FALSE(HasEvent("expired_reenroll"));
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, ExpiredCertificateReenrollsWithinTheGrace) {
  state_->config.est.expired_reenroll_grace = hours(24 * 30);
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  const sh::WallTime not_after = sh::DescribeCert(old_cert.get()).not_after;
  clock_.SetWall(not_after + hours(24 * 30));  // exactly at the end of the grace
  auto new_key = NewKey();
  auto cert = Issued(Handle(Reenroll(ReenrollBody(new_key.get(), old_cert.get()), old_cert.get())));
  ASSERT_TRUE(cert);
  EXPECT_TRUE(VerifyToRoot(cert.get(), clock_.Now()).ok());
  EXPECT_EQ(sh::DescribeCert(cert.get()).not_after, clock_.Now() + state_->config.profile.validity);
  auto old_rec = Record(old_cert.get());
  ASSERT_TRUE(old_rec);
  EXPECT_EQ(old_rec->superseded_by, sh::CertFingerprint(cert.get()));
  EXPECT_TRUE(HasEvent("expired_reenroll"));
  EXPECT_TRUE(log_.Contains("expired certificate re-enrolled within grace"));
  // The superseded grace does not extend the expired one: the old certificate cannot ask again.
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(new_key.get(), old_cert.get()), old_cert.get())).status, 403);
}

TEST_F(EstServiceTest, QuarantinedThingCannotReenrollEvenWithinTheExpiredGrace) {
  state_->config.est.expired_reenroll_grace = hours(24 * 30);
  auto key = NewKey();
  auto cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(cert);
  ASSERT_TRUE(state_->registry->SetQuarantine("gw-1", std::string("audit finding"), "test", clock_.Now()).ok());
  auto new_key = NewKey();
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(new_key.get(), cert.get()), cert.get())).status, 403);
  EXPECT_TRUE(HasEvent("quarantined_thing"));
  clock_.SetWall(sh::DescribeCert(cert.get()).not_after + hours(24));  // expired, within the grace
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(new_key.get(), cert.get()), cert.get())).status, 403);
  EXPECT_EQ(CountCerts(), 1u);
  // Lifted: the expired certificate re-enrolls within its grace again.
  ASSERT_TRUE(state_->registry->SetQuarantine("gw-1", std::nullopt, "test", clock_.Now()).ok());
  EXPECT_TRUE(Issued(Handle(Reenroll(ReenrollBody(new_key.get(), cert.get()), cert.get()))));
}

TEST_F(EstServiceTest, ExpiredCertificateBeyondTheGraceIs403) {
  state_->config.est.expired_reenroll_grace = hours(24 * 30);
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  clock_.SetWall(sh::DescribeCert(old_cert.get()).not_after + hours(24 * 30) + seconds(1));
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), old_cert.get()), old_cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(r.body.find("expired_certificate"), std::string::npos) << r.body;
  EXPECT_TRUE(HasEvent("expired_certificate"));
  EXPECT_FALSE(HasEvent("expired_reenroll"));
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, ExpiredGraceDoesNotForgiveRevokedOrInactiveCertificates) {
  state_->config.est.expired_reenroll_grace = hours(24 * 30);
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  auto b = EnrollWithToken("gw-2", key.get());
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(state_->registry->SetCertStatus(sh::CertFingerprint(a.get()), CertStatus::kRevoked, clock_.Now()).ok());
  ASSERT_TRUE(state_->registry->SetCertStatus(sh::CertFingerprint(b.get()), CertStatus::kInactive, clock_.Now()).ok());
  clock_.SetWall(sh::DescribeCert(a.get()).not_after + hours(1));
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())).status, 403);
  EXPECT_TRUE(HasEvent("revoked_certificate"));
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), b.get()), b.get())).status, 403);
  EXPECT_TRUE(HasEvent("inactive_certificate"));
  EXPECT_FALSE(HasEvent("expired_reenroll"));
  EXPECT_EQ(CountCerts(), 2u);
}

TEST_F(EstServiceTest, ExpiredGraceDoesNotForgiveSupersededCertificates) {
  state_->config.est.expired_reenroll_grace = hours(24 * 30);
  state_->config.est.superseded_grace = hours(24 * 365);
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(a);
  auto b = Issued(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())));
  ASSERT_TRUE(b);
  // A is no longer its thing's current certificate; once expired it may not re-enroll
  // even though it is inside both grace periods.
  clock_.SetWall(sh::DescribeCert(a.get()).not_after + hours(1));
  size_t count = CountCerts();
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_FALSE(HasEvent("expired_reenroll"));
  EXPECT_EQ(CountCerts(), count);
}

TEST_F(EstServiceTest, ExpiredGraceDoesNotForgiveNotYetValidCertificates) {
  state_->config.est.expired_reenroll_grace = hours(24 * 365);
  auto key = NewKey();
  auto cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(cert);
  clock_.SetWall(sh::DescribeCert(cert.get()).not_before - hours(1));
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), cert.get()), cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("untrusted_client_certificate"));
  EXPECT_FALSE(HasEvent("expired_reenroll"));
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(EstServiceTest, SupersededCertificateWorksOnlyWithinGrace) {
  ASSERT_EQ(state_->config.est.superseded_grace, hours(24 * 7));
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(a);
  auto b = Issued(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())));
  ASSERT_TRUE(b);
  const sh::WallTime superseded_at = clock_.Now();

  // The device lost B and retries with A inside the grace period.
  clock_.Advance(hours(24 * 7) - seconds(1));
  auto c = Issued(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())));
  ASSERT_TRUE(c);
  auto a_rec = Record(a.get());
  ASSERT_TRUE(a_rec);
  EXPECT_EQ(a_rec->superseded_by, sh::CertFingerprint(c.get()));
  EXPECT_EQ(a_rec->superseded_at, superseded_at);
  auto b_rec = Record(b.get());
  ASSERT_TRUE(b_rec);
  EXPECT_EQ(b_rec->superseded_by, sh::CertFingerprint(c.get()));
  auto things = state_->registry->ListThings(10);
  ASSERT_TRUE(things);
  ASSERT_EQ(things->size(), 1u);
  EXPECT_EQ((*things)[0].current_cert_id, sh::CertFingerprint(c.get()));

  // Once the grace period is over, A is refused; the current certificate still works.
  clock_.Advance(seconds(1));
  size_t count = CountCerts();
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("superseded_certificate"));
  EXPECT_EQ(CountCerts(), count);
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), c.get()), c.get())).status, 200);
}

TEST_F(EstServiceTest, ZeroGraceRefusesSupersededCertificatesAtOnce) {
  state_->config.est.superseded_grace = seconds(0);
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(a);
  ASSERT_EQ(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())).status, 200);
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())).status, 403);
}

TEST_F(EstServiceTest, ReenrollWithARevokedOrInactiveCertificateIs403) {
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  auto b = EnrollWithToken("gw-2", key.get());
  ASSERT_TRUE(a && b);
  {
    // The registry has no revocation call yet: change the rows directly.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(state_->config.registry_path.c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    std::string sql = "UPDATE certificates SET status = 'REVOKED' WHERE id = '" + sh::CertFingerprint(a.get()) +
                      "'; UPDATE certificates SET status = 'INACTIVE' WHERE id = '" +
                      sh::CertFingerprint(b.get()) + "';";
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())).status, 403);
  EXPECT_TRUE(HasEvent("revoked_certificate"));
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(key.get(), b.get()), b.get())).status, 403);
  EXPECT_TRUE(HasEvent("inactive_certificate"));
  EXPECT_EQ(CountCerts(), 2u);
}

TEST_F(EstServiceTest, SupersededCertificateCannotReviveARevokedReplacement) {
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(a);
  auto b = Issued(Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get())));
  ASSERT_TRUE(b);
  // The operator revokes the replacement; the old certificate, still inside its
  // grace period, must not be able to mint a new one.
  ASSERT_TRUE(state_->registry->SetCertStatus(sh::CertFingerprint(b.get()), CertStatus::kRevoked, clock_.Now()).ok());
  size_t count = CountCerts();
  EstResponse r = Handle(Reenroll(ReenrollBody(key.get(), a.get()), a.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_TRUE(HasEvent("superseded_certificate"));
  EXPECT_EQ(CountCerts(), count);
  // Revocation is final.
  EXPECT_EQ(state_->registry->SetCertStatus(sh::CertFingerprint(b.get()), CertStatus::kActive, clock_.Now()).code(),
            sh::Code::kFailedPrecondition);
  EXPECT_EQ(state_->registry->SetCertStatus(std::string(64, 'f'), CertStatus::kRevoked, clock_.Now()).code(), sh::Code::kNotFound);
}

TEST_F(EstServiceTest, ReenrollWithoutAClientCertificateIs401) {
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  // A token is not a credential for re-enrollment.
  EstResponse r = Handle(Post("simplereenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token)));
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_TRUE(HasEvent("missing_credentials"));
  EXPECT_FALSE(TokenUsed(token));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(EstServiceTest, ReenrollChecksTheCsrToo) {
  auto key = NewKey();
  auto a = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(a);
  EstRequest wrong_type = Reenroll(ReenrollBody(key.get(), a.get()), a.get());
  wrong_type.content_type = "text/plain";
  EXPECT_EQ(Handle(wrong_type).status, 415);
  EXPECT_EQ(Handle(Reenroll("%%%", a.get())).status, 400);
  auto csr = sh::BuildCsrWithName(key.get(), X509_get_subject_name(a.get()), nullptr);
  ASSERT_TRUE(csr);
  std::string der = sh::CsrToDer(csr->get());
  der.back() = static_cast<char>(der.back() ^ 0x01);
  EXPECT_EQ(Handle(Reenroll(sh::Base64Encode(der), a.get())).status, 400);
  sh::EvpPkeyPtr rsa1024(EVP_RSA_gen(1024));
  ASSERT_TRUE(rsa1024);
  EXPECT_EQ(Handle(Reenroll(ReenrollBody(rsa1024.get(), a.get()), a.get())).status, 400);
  EXPECT_EQ(CountCerts(), 1u);
  auto rec = Record(a.get());
  ASSERT_TRUE(rec);
  EXPECT_FALSE(rec->superseded_by);
}

// ---- enrollment hooks ----

// EstServiceTest with hooks: small /bin/sh scripts written into the test's temp dir (mode
// 0755, owned by the test's user, as ParseHookSpec demands) and a real HookRunner.
class EstHookTest : public EstServiceTest {
 protected:
  // A hook script with `body`; its input is saved to <name>.in.json first when `save_input`.
  std::string Script(const std::string& name, const std::string& body, bool save_input = true) {
    std::string dir = dir_.path() + "/hooks";
    ::mkdir(dir.c_str(), 0755);
    std::string path = dir + "/" + name;
    std::string text = "#!/bin/sh\n";
    text += save_input ? "cat >'" + path + ".in.json'\n" : "cat >/dev/null\n";
    text += body + "\n";
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0) << path;
    if (fd >= 0) {
      EXPECT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
      EXPECT_EQ(::fchmod(fd, 0755), 0);
      ::close(fd);
    }
    return path;
  }
  HookSpec Spec(const std::string& path, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    HookConfig c;
    c.command = {path};
    c.timeout = timeout;
    auto spec = ParseHookSpec(c);
    EXPECT_TRUE(spec) << spec.error().ToString();
    return spec ? *spec : HookSpec{};
  }
  // The input the hook at `path` saw last.
  nlohmann::json Input(const std::string& path) {
    auto text = fs_.ReadFile(path + ".in.json", 1 << 20);
    EXPECT_TRUE(text) << text.error().ToString();
    return text ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
  }
  // Rebuilds the service with `hooks`.
  void UseHooks(HookSet hooks) {
    service_.reset();
    service_ = std::make_unique<EstService>(*state_, clock_, log_, EstHooks{&runner_, std::move(hooks)});
  }
  std::string Allow() { return Script("allow", R"(echo '{"allow": true}')"); }

  // One refusal by the pre-enroll hook: 403, the token unused, nothing issued, an event.
  void ExpectDenied(const EstResponse& r, const std::string& token) {
    EXPECT_EQ(r.status, 403) << r.body;
    EXPECT_NE(r.body.find("denied by policy"), std::string::npos) << r.body;
    EXPECT_FALSE(TokenUsed(token)) << "a denied request consumes nothing";
    EXPECT_EQ(CountCerts(), 0u);
    EXPECT_TRUE(HasEvent("hook_denied"));
  }

  EstRequest CvmPost(const std::string& serial, const std::string& token, EVP_PKEY* key) {
    sh::CsrRequest creq;
    creq.common_name = serial;
    auto csr = sh::BuildCsr(key, creq);
    EXPECT_TRUE(csr);
    EstRequest r;
    r.method = "POST";
    r.path = "/cvm/v1/certificates";
    r.content_type = "application/json";
    r.body = nlohmann::json{{"serialNumber", serial},
                            {"registrationToken", token},
                            {"certificateSigningRequest", csr ? sh::CsrToPem(csr->get()) : ""}}
                 .dump();
    r.remote = kRemote;
    return r;
  }

  // The service's post-hook queue uses runner_: it goes first.
  ~EstHookTest() override { service_.reset(); }

  HookRunner runner_{log_, clock_};
};

TEST_F(EstHookTest, PreEnrollAllowIssuesAndSeesTheRequest) {
  HookSet hooks;
  std::string hook = Allow();
  hooks.pre_enroll = Spec(hook);
  UseHooks(hooks);
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  auto cert = Issued(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token))));
  ASSERT_TRUE(cert);
  EXPECT_TRUE(TokenUsed(token));
  nlohmann::json in = Input(hook);
  EXPECT_EQ(in["event"], "pre-enroll");
  EXPECT_EQ(in["method"], "token");
  EXPECT_EQ(in["thingName"], "gw-1");
  EXPECT_EQ(in["csrSubject"], "CN=gw-1");
  EXPECT_EQ(in["csrPublicKeyType"], "ec-p256");
  EXPECT_EQ(in["remoteAddress"], kRemote);
  EXPECT_EQ(in["labels"], nlohmann::json::array());
  EXPECT_FALSE(in.contains("clientCertificateId")) << "a token enrollment has no authenticating certificate";
  EXPECT_EQ(in.dump().find(token), std::string::npos) << "the token never reaches a hook";
  EXPECT_TRUE(EventKinds().empty());
}

TEST_F(EstHookTest, EveryPreEnrollFailureDeniesAndConsumesNothing) {
  struct Case {
    std::string name;
    std::string body;
    std::chrono::milliseconds timeout{5000};
  };
  std::vector<Case> cases = {
      {"deny", R"(echo '{"allow": false, "reason": "serial not in the allow list"}')"},
      {"timeout", "exec sleep 30", std::chrono::milliseconds(300)},
      {"crash", R"(echo '{"allow": true}'; exit 3)"},
      {"invalid-json", "echo 'allow: yes'"},
      {"string-allow", R"(echo '{"allow": "true"}')"},
      {"no-allow", R"(echo '{"reason": "forgot"}')"},
  };
  auto key = NewKey();
  std::string token = MakeToken("gw-1");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    HookSet hooks;
    hooks.pre_enroll = Spec(Script(c.name, c.body), c.timeout);
    UseHooks(hooks);
    auto start = std::chrono::steady_clock::now();
    EstResponse r = Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token)));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
    ExpectDenied(r, token);
  }
  auto events = state_->registry->ListSecurityEvents(100);
  ASSERT_TRUE(events);
  EXPECT_EQ(events->size(), cases.size());
  bool saw_reason = false;
  for (const auto& ev : *events) {
    EXPECT_EQ(ev.kind, "hook_denied");
    EXPECT_EQ(ev.subject, "serial:gw-1");
    saw_reason = saw_reason || ev.detail.find("serial not in the allow list") != std::string::npos;
  }
  EXPECT_TRUE(saw_reason) << "the hook's own reason is kept in the event";

  // The same token still works once the hook allows.
  HookSet allow;
  allow.pre_enroll = Spec(Allow());
  UseHooks(allow);
  EXPECT_TRUE(Issued(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", token)))));
  EXPECT_TRUE(TokenUsed(token));
}

TEST_F(EstHookTest, RefusedRequestsNeverReachThePreEnrollHook) {
  HookSet hooks;
  std::string hook = Allow();
  hooks.pre_enroll = Spec(hook);
  UseHooks(hooks);
  auto key = NewKey();
  EXPECT_EQ(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-1"), Basic("gw-1", "not-a-token"))).status, 401);
  std::string token = MakeToken("gw-1");
  EXPECT_EQ(Handle(Post("simpleenroll", CsrBody(key.get(), "gw-2"), Basic("gw-1", token))).status, 403);
  EXPECT_FALSE(fs_.Exists(hook + ".in.json"));
  EXPECT_FALSE(HasEvent("hook_denied"));
}

TEST_F(EstHookTest, ClaimEnrollmentHookSeesTheClaimCertificate) {
  auto claim_ca = MakeTestCa("claim CA", clock_.Now());
  ASSERT_TRUE(claim_ca);
  TrustForClaims(claim_ca->cert());
  Identity claim = IssueLeaf(*claim_ca->issuer, "claim-batch-7", clock_.Now());
  ASSERT_TRUE(claim.cert);
  state_->config.est.labels = {"fleet-a"};

  HookSet hooks;
  std::string hook = Script("deny", R"(echo '{"allow": false}')");
  hooks.pre_enroll = Spec(hook);
  UseHooks(hooks);
  auto key = NewKey();
  EstRequest req = Post("fleet-a/simpleenroll", CsrBody(key.get(), "gw-claimed"));
  req.peer_cert = claim.cert.get();
  EstResponse r = Handle(req);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_TRUE(HasEvent("hook_denied"));
  nlohmann::json in = Input(hook);
  EXPECT_EQ(in["method"], "claim-certificate");
  EXPECT_EQ(in["thingName"], "gw-claimed");
  EXPECT_EQ(in["clientCertificateId"], sh::CertFingerprint(claim.cert.get()));
  EXPECT_EQ(in["labels"], nlohmann::json::array({"fleet-a"}));
}

TEST_F(EstHookTest, CvmPreEnrollDenyIsForbiddenAndKeepsTheToken) {
  HookSet hooks;
  std::string hook = Script("deny", R"(echo '{"allow": false}')");
  hooks.pre_enroll = Spec(hook);
  UseHooks(hooks);
  auto key = NewKey();
  std::string token = MakeToken("gw-cvm");
  EstResponse r = Handle(CvmPost("gw-cvm", token, key.get()));
  EXPECT_EQ(r.content_type, "application/json");
  auto body = nlohmann::json::parse(r.body, nullptr, false);
  EXPECT_EQ(body["statusCode"], 403) << r.body;
  ExpectDenied(r, token);
  nlohmann::json in = Input(hook);
  EXPECT_EQ(in["method"], "cvm");
  EXPECT_EQ(in["thingName"], "gw-cvm");

  HookSet allow;
  allow.pre_enroll = Spec(Allow());
  UseHooks(allow);
  EstResponse ok = Handle(CvmPost("gw-cvm", token, key.get()));
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(TokenUsed(token));
}

TEST_F(EstHookTest, PreReenrollDenyKeepsTheCurrentCertificate) {
  auto key = NewKey();
  auto old_cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(old_cert);
  HookSet hooks;
  std::string hook = Script("deny", R"(echo '{"allow": false, "reason": "frozen"}')");
  hooks.pre_reenroll = Spec(hook);
  hooks.pre_enroll = Spec(Script("enroll-deny", R"(echo '{"allow": false}')"));  // not consulted
  UseHooks(hooks);
  auto new_key = NewKey();
  EstResponse r = Handle(Reenroll(ReenrollBody(new_key.get(), old_cert.get()), old_cert.get()));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(CountCerts(), 1u);
  auto rec = Record(old_cert.get());
  ASSERT_TRUE(rec);
  EXPECT_FALSE(rec->superseded_by);
  EXPECT_TRUE(HasEvent("hook_denied"));
  nlohmann::json in = Input(hook);
  EXPECT_EQ(in["event"], "pre-reenroll");
  EXPECT_EQ(in["method"], "reenroll");
  EXPECT_EQ(in["thingName"], "gw-1");
  EXPECT_EQ(in["clientCertificateId"], sh::CertFingerprint(old_cert.get()));

  HookSet allow;
  allow.pre_reenroll = Spec(Allow());
  UseHooks(allow);
  EXPECT_TRUE(Issued(Handle(Reenroll(ReenrollBody(new_key.get(), old_cert.get()), old_cert.get()))));
}

TEST_F(EstHookTest, PostHooksSeeTheRecordedCertificate) {
  HookSet hooks;
  std::string post_enroll = Script("post-enroll", "echo '{}'");
  std::string post_reenroll = Script("post-reenroll", "echo '{}'");
  hooks.post_enroll = Spec(post_enroll);
  hooks.post_reenroll = Spec(post_reenroll);
  UseHooks(hooks);
  auto key = NewKey();
  auto cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(cert);
  Service().DrainPostHooks();
  sh::CertInfo info = sh::DescribeCert(cert.get());
  nlohmann::json in = Input(post_enroll);
  EXPECT_EQ(in["event"], "post-enroll");
  EXPECT_EQ(in["method"], "token");
  EXPECT_EQ(in["thingName"], "gw-1");
  EXPECT_EQ(in["certificateId"], info.id);
  EXPECT_EQ(in["serial"], info.serial);
  EXPECT_EQ(in["notAfter"], sh::FormatRfc3339(info.not_after));
  EXPECT_FALSE(in.contains("previousCertificateId"));

  auto renewed = Issued(Handle(Reenroll(ReenrollBody(key.get(), cert.get()), cert.get())));
  ASSERT_TRUE(renewed);
  Service().DrainPostHooks();
  in = Input(post_reenroll);
  EXPECT_EQ(in["event"], "post-reenroll");
  EXPECT_EQ(in["method"], "reenroll");
  EXPECT_EQ(in["certificateId"], sh::CertFingerprint(renewed.get()));
  EXPECT_EQ(in["previousCertificateId"], info.id);
}

TEST_F(EstHookTest, PostHookFailureDoesNotChangeTheAnswer) {
  HookSet hooks;
  hooks.post_enroll = Spec(Script("post-fail", "echo 'garbage'; exit 1"));
  hooks.post_reenroll = Spec(Script("post-slow", "exec sleep 30"), std::chrono::milliseconds(300));
  UseHooks(hooks);
  auto key = NewKey();
  auto cert = EnrollWithToken("gw-1", key.get());
  ASSERT_TRUE(cert);
  EXPECT_TRUE(Record(cert.get()));
  auto renewed = Issued(Handle(Reenroll(ReenrollBody(key.get(), cert.get()), cert.get())));
  EXPECT_TRUE(renewed);
  Service().DrainPostHooks();
  EXPECT_TRUE(log_.Contains("post-hook failed event=post-enroll")) << "failures are logged";
  EXPECT_TRUE(log_.Contains("post-hook failed event=post-reenroll"));
  EXPECT_FALSE(HasEvent("hook_denied"));
}

// ---- the CVM request body ----

TEST(CvmRequestTest, ParsesTheThreeStrings) {
  auto r = ParseCvmRequest(R"({"serialNumber": "gw-1", "registrationToken": "t", "certificateSigningRequest": "pem",
                               "extra": [1, 2]})");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->serial_number, "gw-1");
  EXPECT_EQ(r->registration_token, "t");
  EXPECT_EQ(r->csr_pem, "pem");
}

TEST(CvmRequestTest, MalformedBodiesAreInvalidArgument) {
  const std::string deep(100000, '[');
  for (const std::string& body : std::vector<std::string>{
           "", "null", "[]", "\"s\"", "{", "{}", "{\"serialNumber\": \"a\"}",
           R"({"serialNumber": 1, "registrationToken": "t", "certificateSigningRequest": "p"})",
           R"({"serialNumber": "a", "registrationToken": null, "certificateSigningRequest": "p"})",
           R"({"serialNumber": "a", "registrationToken": "t", "certificateSigningRequest": ["p"]})",
           R"({"serialNumber": "a", "registrationToken": "t", "certificateSigningRequest": "p"} trailing)",
           std::string("{\"serialNumber\": \"a\0\"}", 20), "\xff\xfe{}", deep,
           "{\"serialNumber\": " + deep + "}"}) {
    SCOPED_TRACE(body.substr(0, 60));
    auto r = ParseCvmRequest(body);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), sh::Code::kInvalidArgument);
  }
}

// ---- tokens ----

TEST(EstTokenTest, NewTokensAreUrlSafeAndDistinct) {
  auto a = NewToken();
  auto b = NewToken();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->size(), 43u);
  EXPECT_EQ(a->find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
            std::string::npos)
      << *a;
  EXPECT_NE(*a, *b);
  EXPECT_EQ(TokenHash(*a).size(), 64u);
  EXPECT_EQ(TokenHash(*a), TokenHash(*a));
  EXPECT_NE(TokenHash(*a), TokenHash(*b));
  EXPECT_EQ(TokenHash(*a).find(*a), std::string::npos);
}

}  // namespace
}  // namespace certfleet::companion
