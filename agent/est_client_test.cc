// EstClient against a real HTTPS server on loopback (cpp-httplib) that plays an EST
// server scripted per test. Its TLS certificate and every certificate it issues come
// from a throwaway CA (agent/testing/est_test_server.h); nothing is read from disk.
#include "agent/est_client.h"

#include <httplib.h>

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/testing/est_test_server.h"
#include "hal/memory_keystore.h"
#include "shared/core/base64.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::agent {
namespace {

namespace sh = certfleet::shared;
using sh::Code;
using std::chrono::seconds;

// The certificate a CA issues for a base64 CSR: the CSR's subject and key.
sh::X509Ptr IssueForCsr(const TestCa& ca, const std::string& body) {
  auto csr = Must(sh::CsrFromDer(Must(sh::Base64Decode(body), "CSR base64")), "CSR");
  return ca.Issue(X509_REQ_get_subject_name(csr.get()), X509_REQ_get0_pubkey(csr.get()));
}

std::string HttpDate(time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

// ---- The test server ----

struct Seen {
  std::string method;
  std::string path;
  std::string body;
  std::string content_type;
  std::string authorization;
  std::string peer_cn;  // the TLS client certificate's CN, if one was presented
  int tls_version = 0;
};

class Recorder {
 public:
  void Add(const httplib::Request& req) {
    Seen s{req.method, req.path, req.body, req.get_header_value("Content-Type"),
           req.get_header_value("Authorization"), "", 0};
    if (req.ssl != nullptr) {
      s.tls_version = SSL_version(req.ssl);
      sh::X509Ptr peer(SSL_get1_peer_certificate(req.ssl));
      if (peer) s.peer_cn = sh::NameCommonName(X509_get_subject_name(peer.get()));
    }
    std::lock_guard lock(mu_);
    seen_.push_back(std::move(s));
  }
  std::vector<Seen> All() const {
    std::lock_guard lock(mu_);
    return seen_;
  }
  size_t Count() const {
    std::lock_guard lock(mu_);
    return seen_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<Seen> seen_;
};

class EstClientTest : public ::testing::Test {
 protected:
  // Peers that hang up early must not kill the test process with SIGPIPE.
  void SetUp() override { std::signal(SIGPIPE, SIG_IGN); }

  TestServer& Server(const TestServer::Options& options = {}) {
    server_ = std::make_unique<TestServer>(ca_, options);
    return *server_;
  }
  EstClientOptions Options() {
    EstClientOptions o;
    o.server = server_->Url();
    o.trust_anchor_pem = ca_.Pem();
    o.connect_timeout = seconds(10);
    o.request_timeout = seconds(30);
    o.sleep = [this](seconds d) { sleeps_.push_back(d); };
    return o;
  }
  // A CSR for a fresh key, DER.
  std::string Csr(const std::string& cn = "gw-0001") {
    csr_key_ = NewKey();
    sh::CsrRequest req;
    req.common_name = cn;
    auto csr = Must(sh::BuildCsr(csr_key_.get(), req), "BuildCsr");
    return sh::CsrToDer(csr.get());
  }
  // A handler that records the request and answers as the EST CA would.
  httplib::Server::Handler Enroll() {
    return [this](const httplib::Request& req, httplib::Response& res) {
      rec_.Add(req);
      auto cert = IssueForCsr(ca_, req.body);
      res.set_content(sh::Base64Encode(CertsOnlyDer({cert.get()})), kCertsOnlyType);
    };
  }
  httplib::Server::Handler CaCertsHandler() {
    return [this](const httplib::Request& req, httplib::Response& res) {
      rec_.Add(req);
      res.set_content(sh::Base64Encode(CertsOnlyDer({ca_.cert.get()})), kCertsOnlyType);
    };
  }

  TestCa ca_ = MakeCa("certfleet test EST CA");
  sh::EvpPkeyPtr csr_key_;
  Recorder rec_;
  std::vector<seconds> sleeps_;
  std::unique_ptr<TestServer> server_;  // last: stopped before what its handlers use
};

// ---- cacerts ----

TEST_F(EstClientTest, CaCertsReturnsTheCertificatesInOrder) {
  TestCa second = MakeCa("certfleet second CA");
  Server().http().Get("/.well-known/est/cacerts", [&](const httplib::Request& req, httplib::Response& res) {
    rec_.Add(req);
    res.set_content(sh::Base64Encode(CertsOnlyDer({ca_.cert.get(), second.cert.get()})), kCertsOnlyType);
  });
  server_->Start();

  EstClient client(Options());
  auto certs = client.CaCerts();
  ASSERT_TRUE(certs) << certs.error().ToString();
  ASSERT_EQ(certs->size(), 2u);
  EXPECT_EQ(sh::CertFingerprint((*certs)[0].get()), sh::CertFingerprint(ca_.cert.get()));
  EXPECT_EQ(sh::CertFingerprint((*certs)[1].get()), sh::CertFingerprint(second.cert.get()));
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].path, "/.well-known/est/cacerts");
  EXPECT_EQ(seen[0].peer_cn, "");
}

// RFC 8951 leniency: every encoding that real servers send decodes.
TEST_F(EstClientTest, CaCertsAcceptsResponseBodyVariants) {
  struct Variant {
    std::string name;
    std::string content_type;
    std::string body;
    bool transfer_encoding_header = false;
    bool chunked = false;
  };
  const std::string der = CertsOnlyDer({ca_.cert.get()});
  const std::string lf = sh::Base64Encode(der);
  std::string crlf;
  for (char c : lf) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  ASSERT_GT(lf.size(), 128u);  // really several lines
  const std::vector<Variant> variants = {
      {"64-column lines with LF", kCertsOnlyType, lf},
      {"one line, no final newline", kCertsOnlyType, sh::Base64EncodeLine(der)},
      {"CRLF line endings", kCertsOnlyType, crlf},
      {"trailing NUL", kCertsOnlyType, lf + std::string(1, '\0')},
      {"no smime-type parameter", "application/pkcs7-mime", lf},
      {"odd case and spacing", "Application/PKCS7-MIME ; smime-type=certs-only", lf},
      {"Content-Transfer-Encoding header", kCertsOnlyType, lf, true},
      {"chunked transfer", kCertsOnlyType, lf, false, true},
  };
  Server().http().Get(R"(/\.well-known/est/v(\d+)/cacerts)", [&](const httplib::Request& req,
                                                                 httplib::Response& res) {
    rec_.Add(req);
    const Variant& v = variants.at(std::stoul(req.matches[1].str()));
    if (v.transfer_encoding_header) res.set_header("Content-Transfer-Encoding", "base64");
    if (v.chunked) {
      std::string body = v.body;
      res.set_chunked_content_provider(v.content_type, [body](size_t, httplib::DataSink& sink) {
        for (size_t i = 0; i < body.size(); i += 100) {
          sink.write(body.data() + i, std::min<size_t>(100, body.size() - i));
        }
        sink.done();
        return true;
      });
    } else {
      res.set_content(v.body, v.content_type);
    }
  });
  server_->Start();

  for (size_t i = 0; i < variants.size(); ++i) {
    SCOPED_TRACE(variants[i].name);
    EstClientOptions o = Options();
    o.server += "/v" + std::to_string(i);
    EstClient client(o);
    auto certs = client.CaCerts();
    ASSERT_TRUE(certs) << certs.error().ToString();
    ASSERT_EQ(certs->size(), 1u);
    EXPECT_EQ(sh::CertFingerprint(certs->front().get()), sh::CertFingerprint(ca_.cert.get()));
  }
  EXPECT_EQ(rec_.Count(), variants.size());
}

TEST_F(EstClientTest, CaCertsRejectsWrongContentType) {
  Server().http().Get("/.well-known/est/cacerts", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(sh::Base64Encode(CertsOnlyDer({ca_.cert.get()})), "text/plain");
  });
  server_->Start();
  auto certs = EstClient(Options()).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kInvalidArgument);
  EXPECT_NE(certs.error().message().find("text/plain"), std::string::npos) << certs.error().message();
}

TEST_F(EstClientTest, CaCertsRejectsGarbageBodies) {
  const std::vector<std::string> bodies = {
      "this is not base64 at all!",
      sh::Base64Encode("valid base64 but not a PKCS#7 message"),
      sh::Base64Encode(sh::CertToDer(ca_.cert.get())),  // a bare certificate
      "",
  };
  Server().http().Get(R"(/\.well-known/est/g(\d+)/cacerts)", [&](const httplib::Request& req, httplib::Response& res) {
    res.set_content(bodies.at(std::stoul(req.matches[1].str())), kCertsOnlyType);
  });
  server_->Start();
  for (size_t i = 0; i < bodies.size(); ++i) {
    SCOPED_TRACE(i);
    EstClientOptions o = Options();
    o.server += "/g" + std::to_string(i);
    auto certs = EstClient(o).CaCerts();
    ASSERT_FALSE(certs);
    EXPECT_EQ(certs.error().code(), Code::kInvalidArgument) << certs.error().ToString();
  }
}

TEST_F(EstClientTest, HttpErrorsMapToStatusCodesWithTheServersMessage) {
  const std::vector<std::pair<int, Code>> cases = {
      {400, Code::kInvalidArgument}, {401, Code::kUnauthenticated}, {403, Code::kPermissionDenied},
      {404, Code::kNotFound},        {503, Code::kUnavailable},     {500, Code::kInternal},
  };
  Server().http().Get(R"(/\.well-known/est/s(\d+)/cacerts)", [&](const httplib::Request& req, httplib::Response& res) {
    int status = std::stoi(req.matches[1].str());
    if (status == 401) res.set_header("WWW-Authenticate", "Basic realm=\"certfleet\"");
    res.status = status;
    res.set_content("the server says no (" + std::to_string(status) + ")\nreason: policy\n", "text/plain");
  });
  server_->Start();
  for (const auto& [status, code] : cases) {
    SCOPED_TRACE(status);
    EstClientOptions o = Options();
    o.server += "/s" + std::to_string(status);
    auto certs = EstClient(o).CaCerts();
    ASSERT_FALSE(certs);
    EXPECT_EQ(certs.error().code(), code) << certs.error().ToString();
    EXPECT_NE(certs.error().message().find("HTTP " + std::to_string(status)), std::string::npos);
    EXPECT_NE(certs.error().message().find("the server says no (" + std::to_string(status) + ") reason: policy"),
              std::string::npos)
        << certs.error().message();
  }
}

TEST_F(EstClientTest, EnrollErrorCarriesTheServersMessage) {
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    rec_.Add(req);
    res.status = 403;
    res.set_content("device gw-0001 is not on the allow list", "text/plain");
  });
  server_->Start();
  auto cert = EstClient(Options()).SimpleEnroll(Csr());
  ASSERT_FALSE(cert);
  EXPECT_EQ(cert.error().code(), Code::kPermissionDenied);
  EXPECT_NE(cert.error().message().find("device gw-0001 is not on the allow list"), std::string::npos);
  EXPECT_EQ(sleeps_.size(), 0u);
}

TEST_F(EstClientTest, ResponseLargerThanOneMebibyteIsRefused) {
  Server().http().Get("/.well-known/est/cacerts", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string((1 << 20) + (1 << 19), 'A'), kCertsOnlyType);
  });
  server_->Start();
  auto certs = EstClient(Options()).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kResourceExhausted) << certs.error().ToString();
}

// ---- simpleenroll / simplereenroll ----

TEST_F(EstClientTest, SimpleEnrollPostsBase64CsrAndReturnsTheIssuedCertificate) {
  Server().http().Post("/.well-known/est/simpleenroll", Enroll());
  server_->Start();
  std::string csr = Csr("gw-0001");
  auto cert = EstClient(Options()).SimpleEnroll(csr);
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert->get()), csr_key_.get()));
  EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(cert->get())), "gw-0001");
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].content_type, "application/pkcs10");
  auto der = sh::Base64Decode(seen[0].body);
  ASSERT_TRUE(der);
  EXPECT_EQ(*der, csr);
}

TEST_F(EstClientTest, SimpleReenrollUsesItsOwnPath) {
  Server().http().Post("/.well-known/est/simplereenroll", Enroll());
  server_->Start();
  auto cert = EstClient(Options()).SimpleReenroll(Csr());
  ASSERT_TRUE(cert) << cert.error().ToString();
  ASSERT_EQ(rec_.Count(), 1u);
  EXPECT_EQ(rec_.All()[0].path, "/.well-known/est/simplereenroll");
}

TEST_F(EstClientTest, EnrollPicksTheLeafWhenTheServerAddsTheChain) {
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    auto cert = IssueForCsr(ca_, req.body);
    res.set_content(sh::Base64Encode(CertsOnlyDer({ca_.cert.get(), cert.get()})), kCertsOnlyType);
  });
  server_->Start();
  auto cert = EstClient(Options()).SimpleEnroll(Csr("gw-0002"));
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(cert->get())), "gw-0002");
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert->get()), csr_key_.get()));
}

TEST_F(EstClientTest, EnrollRejectsAResponseThatIsNotCertsOnly) {
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    res.set_content(req.body, "application/pkcs10");  // echoes the CSR
  });
  server_->Start();
  auto cert = EstClient(Options()).SimpleEnroll(Csr());
  ASSERT_FALSE(cert);
  EXPECT_EQ(cert.error().code(), Code::kInvalidArgument);
}

// ---- 202 Accepted + Retry-After ----

TEST_F(EstClientTest, AcceptedThenIssuedWaitsRetryAfterSecondsAndResendsTheSameRequest) {
  std::atomic<int> calls{0};
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    rec_.Add(req);
    if (calls++ == 0) {
      res.status = 202;
      res.set_header("Retry-After", "5");
      return;
    }
    auto cert = IssueForCsr(ca_, req.body);
    res.set_content(sh::Base64Encode(CertsOnlyDer({cert.get()})), kCertsOnlyType);
  });
  server_->Start();
  std::string csr = Csr();
  auto cert = EstClient(Options()).SimpleEnroll(csr);
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_EQ(sleeps_, std::vector<seconds>{seconds(5)});
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].body, seen[1].body);
  EXPECT_EQ(seen[0].content_type, seen[1].content_type);
  EXPECT_EQ(sh::Base64Decode(seen[1].body).value_or(""), csr);
}

TEST_F(EstClientTest, RetryAfterAsHttpDateIsRelativeToTheServersDate) {
  const time_t server_now = std::time(nullptr) - 7200;  // a server clock two hours behind
  std::atomic<int> calls{0};
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    rec_.Add(req);
    res.set_header("Date", HttpDate(server_now));
    if (calls++ == 0) {
      res.status = 202;
      res.set_header("Retry-After", HttpDate(server_now + 120));
      return;
    }
    auto cert = IssueForCsr(ca_, req.body);
    res.set_content(sh::Base64Encode(CertsOnlyDer({cert.get()})), kCertsOnlyType);
  });
  server_->Start();
  EstClient client(Options());
  auto cert = client.SimpleEnroll(Csr());
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_EQ(sleeps_, std::vector<seconds>{seconds(120)});
  ASSERT_TRUE(client.last_server_date().has_value());
  EXPECT_EQ(sh::ToUnixSeconds(*client.last_server_date()), static_cast<int64_t>(server_now));
}

TEST_F(EstClientTest, PendingLongerThanMaxPendingWaitIsDeadlineExceeded) {
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    rec_.Add(req);
    res.status = 202;
    res.set_header("Retry-After", "600");
  });
  server_->Start();
  EstClientOptions o = Options();
  o.max_pending_wait = seconds(1000);
  auto cert = EstClient(o).SimpleEnroll(Csr());
  ASSERT_FALSE(cert);
  EXPECT_EQ(cert.error().code(), Code::kDeadlineExceeded) << cert.error().ToString();
  EXPECT_EQ(sleeps_, std::vector<seconds>{seconds(600)});
  EXPECT_EQ(rec_.Count(), 2u);
}

TEST_F(EstClientTest, MissingOrOddRetryAfterFallsBackAndIsClamped) {
  // Per 202 response: no header (60 s), unparseable (60 s), 0 (at least 1 s), huge (at most 1 h).
  const std::vector<std::string> retry_after = {"", "soon", "0", "99999"};
  std::atomic<size_t> calls{0};
  Server().http().Post("/.well-known/est/simpleenroll", [&](const httplib::Request& req, httplib::Response& res) {
    rec_.Add(req);
    size_t n = calls++;
    if (n < retry_after.size()) {
      res.status = 202;
      if (!retry_after[n].empty()) res.set_header("Retry-After", retry_after[n]);
      return;
    }
    auto cert = IssueForCsr(ca_, req.body);
    res.set_content(sh::Base64Encode(CertsOnlyDer({cert.get()})), kCertsOnlyType);
  });
  server_->Start();
  EstClientOptions o = Options();
  o.max_pending_wait = std::chrono::hours(2);
  auto cert = EstClient(o).SimpleEnroll(Csr());
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_EQ(sleeps_, (std::vector<seconds>{seconds(60), seconds(60), seconds(1), seconds(3600)}));
  EXPECT_EQ(rec_.Count(), 5u);
}

TEST(ParseRetryAfterTest, DeltaSeconds) {
  const sh::WallTime now = sh::FromUnixSeconds(1700000000);
  EXPECT_EQ(ParseRetryAfter("120", now), seconds(120));
  EXPECT_EQ(ParseRetryAfter(" 7 ", now), seconds(7));
  EXPECT_EQ(ParseRetryAfter("0", now), seconds(0));
}

TEST(ParseRetryAfterTest, HttpDate) {
  const sh::WallTime now = sh::FromUnixSeconds(1700000000);  // Tue, 14 Nov 2023 22:13:20 GMT
  EXPECT_EQ(ParseRetryAfter("Tue, 14 Nov 2023 22:15:20 GMT", now), seconds(120));
  EXPECT_EQ(ParseRetryAfter("Wed, 15 Nov 2023 22:13:20 GMT", now), seconds(86400));
  EXPECT_EQ(ParseRetryAfter("Tue, 14 Nov 2023 22:00:00 GMT", now), seconds(0));  // in the past
}

TEST(ParseRetryAfterTest, GarbageIsNullopt) {
  const sh::WallTime now = sh::FromUnixSeconds(1700000000);
  for (const char* v : {"", "   ", "soon", "-5", "1.5", "5s", "Tuesday", "14 Nov 2023"}) {
    EXPECT_FALSE(ParseRetryAfter(v, now).has_value()) << v;
  }
}

TEST(ParseRetryAfterTest, HugeValuesSaturate) {
  const sh::WallTime now = sh::FromUnixSeconds(1700000000);
  auto huge = ParseRetryAfter("99999999999999999999999999", now);
  ASSERT_TRUE(huge.has_value());
  EXPECT_GE(*huge, seconds(999999999));
  EXPECT_EQ(ParseRetryAfter("999999999", now), seconds(999999999));
}

TEST(DecodeCertsOnlyBodyTest, ContentTypeIsCheckedBeforeTheBody) {
  auto r = DecodeCertsOnlyBody("application/json", "{}");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  auto empty = DecodeCertsOnlyBody("", "");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code(), Code::kInvalidArgument);
}

// ---- TLS: server identity, client identity, versions ----

TEST_F(EstClientTest, ServerSignedByAnotherCaIsUnauthenticated) {
  Server().http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  EstClientOptions o = Options();
  o.trust_anchor_pem = MakeCa("some other CA").Pem();
  auto certs = EstClient(o).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kUnauthenticated) << certs.error().ToString();
  EXPECT_EQ(rec_.Count(), 0u);
}

TEST_F(EstClientTest, ServerCertificateForAnotherNameIsRefused) {
  TestServer::Options so;
  so.san = "DNS:other.example";
  Server(so).http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  auto certs = EstClient(Options()).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kUnauthenticated) << certs.error().ToString();
  EXPECT_EQ(rec_.Count(), 0u);
}

TEST_F(EstClientTest, BadTrustAnchorPemIsInvalidArgument) {
  Server().http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  EstClientOptions o = Options();
  o.trust_anchor_pem = "not a certificate";
  auto certs = EstClient(o).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kInvalidArgument) << certs.error().ToString();
  EXPECT_NE(certs.error().message().find("trust anchor"), std::string::npos);
  EXPECT_EQ(rec_.Count(), 0u);
}

TEST_F(EstClientTest, PlainHttpUrlIsRefused) {
  Server().http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  EstClientOptions o = Options();
  o.server = "http://127.0.0.1:" + o.server.substr(o.server.rfind(':') + 1);
  auto certs = EstClient(o).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kInvalidArgument);
  EXPECT_NE(certs.error().message().find("https://"), std::string::npos);
  auto cert = EstClient(o).SimpleEnroll(Csr());
  ASSERT_FALSE(cert);
  EXPECT_EQ(cert.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(rec_.Count(), 0u);
}

TEST_F(EstClientTest, ClientCertificateFromKeyStoreReachesTheServer) {
  TestServer::Options so;
  so.client_ca = ca_.cert.get();
  so.require_client_cert = true;
  Server(so).http().Post("/.well-known/est/simpleenroll", Enroll());
  server_->Start();

  hal::MemoryKeyStore store;
  auto claim = store.Generate("claim", sh::KeyType::kEcP256);
  ASSERT_TRUE(claim) << claim.error().ToString();
  auto claim_cert = ca_.Issue(Name("claim-0042").get(), (*claim)->pkey());
  EstClientOptions o = Options();
  o.client_cert_pem = sh::CertToPem(claim_cert.get());
  o.client_key = (*claim)->pkey();
  auto cert = EstClient(o).SimpleEnroll(Csr());
  ASSERT_TRUE(cert) << cert.error().ToString();
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].peer_cn, "claim-0042");
  EXPECT_EQ(seen[0].authorization, "");
}

TEST_F(EstClientTest, ClientCertificateChainIsSentWithTheLeaf) {
  TestCa intermediate = MakeCa("certfleet claim intermediate", &ca_);
  TestServer::Options so;
  so.client_ca = ca_.cert.get();  // the server knows only the root
  so.require_client_cert = true;
  Server(so).http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();

  hal::MemoryKeyStore store;
  auto claim = store.Generate("claim", sh::KeyType::kEcP256);
  ASSERT_TRUE(claim) << claim.error().ToString();
  auto leaf = intermediate.Issue(Name("claim-0043").get(), (*claim)->pkey());
  EstClientOptions o = Options();
  o.client_cert_pem = sh::CertToPem(leaf.get()) + intermediate.Pem();
  o.client_key = (*claim)->pkey();
  auto certs = EstClient(o).CaCerts();
  ASSERT_TRUE(certs) << certs.error().ToString();
  ASSERT_EQ(rec_.Count(), 1u);
  EXPECT_EQ(rec_.All()[0].peer_cn, "claim-0043");
}

TEST_F(EstClientTest, ServerRequiringClientCertificateRefusesAnonymousClient) {
  TestServer::Options so;
  so.client_ca = ca_.cert.get();
  so.require_client_cert = true;
  Server(so).http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  auto certs = EstClient(Options()).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(rec_.Count(), 0u);
}

TEST_F(EstClientTest, ClientCertificateForAnotherKeyIsInvalidArgument) {
  Server().http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  hal::MemoryKeyStore store;
  auto claim = store.Generate("claim", sh::KeyType::kEcP256);
  ASSERT_TRUE(claim) << claim.error().ToString();
  auto other = NewKey();
  auto claim_cert = ca_.Issue(Name("claim-0044").get(), other.get());
  EstClientOptions o = Options();
  o.client_cert_pem = sh::CertToPem(claim_cert.get());
  o.client_key = (*claim)->pkey();
  auto certs = EstClient(o).CaCerts();
  ASSERT_FALSE(certs);
  EXPECT_EQ(certs.error().code(), Code::kInvalidArgument) << certs.error().ToString();
  EXPECT_EQ(rec_.Count(), 0u);
}

TEST_F(EstClientTest, BasicAuthHeaderReachesTheServer) {
  Server().http().Post("/.well-known/est/simpleenroll", Enroll());
  server_->Start();
  EstClientOptions o = Options();
  o.user = "device-0001";
  o.password = "one-time:token";
  auto cert = EstClient(o).SimpleEnroll(Csr());
  ASSERT_TRUE(cert) << cert.error().ToString();
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 1u);
  const std::string& auth = seen[0].authorization;
  ASSERT_EQ(auth.rfind("Basic ", 0), 0u) << auth;
  EXPECT_EQ(sh::Base64Decode(auth.substr(6)).value_or(""), "device-0001:one-time:token");
}

TEST_F(EstClientTest, LabelGoesBetweenWellKnownAndTheOperation) {
  Server().http().Post("/.well-known/est/mylabel/simpleenroll", Enroll());
  server_->Start();
  for (const char* suffix : {"/mylabel", "/mylabel/"}) {
    SCOPED_TRACE(suffix);
    EstClientOptions o = Options();
    o.server += suffix;
    auto cert = EstClient(o).SimpleEnroll(Csr());
    ASSERT_TRUE(cert) << cert.error().ToString();
  }
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].path, "/.well-known/est/mylabel/simpleenroll");
  EXPECT_EQ(seen[1].path, "/.well-known/est/mylabel/simpleenroll");
}

TEST_F(EstClientTest, Tls12OnlyNegotiatesTls12) {
  Server().http().Get("/.well-known/est/cacerts", CaCertsHandler());
  server_->Start();
  EstClientOptions o = Options();
  o.tls12_only = true;
  auto capped = EstClient(o).CaCerts();
  ASSERT_TRUE(capped) << capped.error().ToString();
  auto normal = EstClient(Options()).CaCerts();
  ASSERT_TRUE(normal) << normal.error().ToString();
  auto seen = rec_.All();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].tls_version, TLS1_2_VERSION);
  EXPECT_EQ(seen[1].tls_version, TLS1_3_VERSION);
}

}  // namespace
}  // namespace certfleet::agent
