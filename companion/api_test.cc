#include "companion/api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <algorithm>
#include <fstream>
#include <condition_variable>
#include <mutex>
#include <set>

#include "companion/api_input.h"
#include "companion/api_server.h"
#include "companion/audit.h"
#include "companion/operations.h"
#include "companion/testing/test_companion.h"

namespace certfleet::companion {
namespace {

using nlohmann::json;
using std::chrono::hours;
using std::chrono::seconds;

// ---- Rate limiter ----

TEST(RateLimiterTest, OncePerFiveMinutesWithRetryAfter) {
  shared::FakeClock clock(kTestCompanionStart);
  RateLimiter limiter(clock, 1, seconds(300));
  EXPECT_FALSE(limiter.TryAcquire("start-audit"));
  auto wait = limiter.TryAcquire("start-audit");
  ASSERT_TRUE(wait);
  EXPECT_EQ(*wait, seconds(300));
  clock.Advance(seconds(299));
  wait = limiter.TryAcquire("start-audit");
  ASSERT_TRUE(wait);
  EXPECT_EQ(*wait, seconds(1));
  clock.Advance(std::chrono::milliseconds(500));
  wait = limiter.TryAcquire("start-audit");
  ASSERT_TRUE(wait);
  EXPECT_EQ(*wait, seconds(1)) << "rounded up, never 0";
  clock.Advance(std::chrono::milliseconds(500));
  EXPECT_FALSE(limiter.TryAcquire("start-audit"));
}

TEST(RateLimiterTest, ReleaseGivesBackTheLatestCall) {
  shared::FakeClock clock(kTestCompanionStart);
  RateLimiter limiter(clock, 1, seconds(300));
  EXPECT_FALSE(limiter.TryAcquire("start-audit"));
  limiter.Release("start-audit");
  EXPECT_FALSE(limiter.TryAcquire("start-audit")) << "released: the slot is free again";
  EXPECT_TRUE(limiter.TryAcquire("start-audit"));
  limiter.Release("other");  // nothing to give back: no effect
  EXPECT_TRUE(limiter.TryAcquire("start-audit"));
}

TEST(RateLimiterTest, KeysAreIndependentAndWindowSlides) {
  shared::FakeClock clock(kTestCompanionStart);
  RateLimiter limiter(clock, 2, seconds(60));
  EXPECT_FALSE(limiter.TryAcquire("a"));
  clock.Advance(seconds(30));
  EXPECT_FALSE(limiter.TryAcquire("a"));
  EXPECT_TRUE(limiter.TryAcquire("a"));
  EXPECT_FALSE(limiter.TryAcquire("b"));
  clock.Advance(seconds(30));  // the first call left the window
  EXPECT_FALSE(limiter.TryAcquire("a"));
  EXPECT_TRUE(limiter.TryAcquire("a"));
}

// ---- Operator CA ----

TEST(OperatorCaTest, AFleetCaCannotBeTheOperatorCa) {
  auto fleet = MakeTestCa("fleet root", kTestCompanionStart);
  auto claim = MakeTestCa("factory claim CA", kTestCompanionStart);
  auto ops = MakeTestCa("operators", kTestCompanionStart);
  ASSERT_TRUE(fleet && claim && ops);
  const std::string fleet_pem = shared::CertToPem(fleet->cert());
  const std::string claim_pem = shared::CertToPem(claim->cert());
  const std::string ops_pem = shared::CertToPem(ops->cert());
  EXPECT_TRUE(CheckOperatorCaIsSeparate(ops_pem, {fleet_pem, "", claim_pem}).ok());
  for (const std::string& bad : {fleet_pem, ops_pem + claim_pem}) {
    shared::Status st = CheckOperatorCaIsSeparate(bad, {fleet_pem, claim_pem});
    EXPECT_EQ(st.code(), shared::Code::kInvalidArgument);
    EXPECT_NE(st.message().find("fleet CA"), std::string::npos) << st.message();
  }
  // The same key under a re-issued certificate is the same CA.
  auto fleet_key = fleet->keys.Load("ca");
  ASSERT_TRUE(fleet_key);
  auto reissued = MakeRootCa((*fleet_key)->pkey(), "fleet root (renewed)", std::chrono::hours(24 * 365),
                             kTestCompanionStart);
  ASSERT_TRUE(reissued);
  EXPECT_FALSE(CheckOperatorCaIsSeparate(shared::CertToPem(reissued->get()), {fleet_pem}).ok());
  EXPECT_FALSE(CheckOperatorCaIsSeparate("not PEM", {fleet_pem}).ok());
}

// ---- Router ----

TEST(RouterTest, MatchesParamsAndAnswersMethodMismatch) {
  Router router;
  auto h = [](const ApiRequest&, const PathParams&, const Principal&) { return ApiResponse{}; };
  router.Add(Route{"GET", "/things", ApiRole::kReadOnly, h});
  router.Add(Route{"GET", "/things/{thingName}", ApiRole::kReadOnly, h});
  router.Add(Route{"POST", "/rotations/{rotationId}/cancel", ApiRole::kAdmin, h});

  auto m = router.Find("GET", "/things/gw-1");
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.route->pattern, "/things/{thingName}");
  EXPECT_EQ(m.params.at("thingName"), "gw-1");

  m = router.Find("GET", "/rotations/abc/cancel");
  EXPECT_EQ(m.route, nullptr);
  EXPECT_TRUE(m.path_known);
  EXPECT_EQ(m.allow, std::vector<std::string>{"POST"});

  for (const char* bad : {"/things/", "//things", "/things/a/b", "/nothing", "", "things"}) {
    m = router.Find("GET", bad);
    EXPECT_EQ(m.route, nullptr) << bad;
    EXPECT_FALSE(m.path_known) << bad;
  }
}

// ---- Input parsers ----

TEST(ApiInputTest, Limits) {
  EXPECT_EQ(*ParseApiLimit(std::nullopt), kApiDefaultPageSize);
  EXPECT_EQ(*ParseApiLimit("1"), 1);
  EXPECT_EQ(*ParseApiLimit("500"), 500);
  for (const char* bad : {"0", "501", "-1", "", "1e3", "10x", "99999999999999999999", " 5"}) {
    EXPECT_FALSE(ParseApiLimit(std::string(bad))) << bad;
  }
}

TEST(ApiInputTest, CursorsRoundTripAndAreBoundToTheirList) {
  std::string c = EncodeCursor("things", "gw-17");
  EXPECT_EQ(*DecodeCursor("things", c), "gw-17");
  EXPECT_FALSE(DecodeCursor("certificates", c));
  EXPECT_EQ(*DecodeIntCursor("events", EncodeCursor("events", "42")), 42);
  for (const std::string& bad : {EncodeCursor("events", "0"), EncodeCursor("events", "-3"), EncodeCursor("events", ""),
                                EncodeCursor("events", "12a"), std::string("!!"), std::string(""),
                                std::string(300, 'A'), std::string("ZXZlbnRzOjQy==")}) {
    EXPECT_FALSE(DecodeIntCursor("events", bad)) << bad;
  }
}

TEST(ApiInputTest, PositionKeysFitInt64) {
  auto k = SplitPositionKey("1767225600.gw-1");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->seconds, 1767225600);
  EXPECT_EQ(k->rest, "gw-1");
  EXPECT_EQ(SplitPositionKey("999999999999999999.x")->seconds, 999999999999999999);
  for (const char* bad : {"", ".", "5.", ".x", "5", "x.y", "-5.x", "1e3.x", "9999999999999999999.x",
                          "99999999999999999999999.x"}) {
    auto r = SplitPositionKey(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code(), shared::Code::kInvalidArgument);
  }
}

TEST(ApiInputTest, MalformedBodiesAreRefused) {
  for (const char* bad : {"", "{", "[]", "\"x\"", "{\"thingName\": 5}", "{\"thingName\": \"a\", \"extra\": 1}",
                          "{\"reason\": \"r\"}", "{\"thingName\": \"a\", \"reason\": \"\"}",
                          "{\"thingName\": \"a\", \"deadline\": \"soon\"}", "{\"thingName\": \"a\", \"deadline\": \"0s\"}"}) {
    auto r = ParseCreateRotationBody(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code(), shared::Code::kInvalidArgument);
  }
  auto ok = ParseCreateRotationBody(R"({"thingName": "gw-1", "reason": "audit", "deadline": "2d"})");
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ(ok->thing_name, "gw-1");
  EXPECT_EQ(*ok->deadline, hours(48));

  EXPECT_FALSE(ParseStatusChangeBody("{\"reason\": \"" + std::string(257, 'x') + "\"}"));
  EXPECT_EQ(*ParseStatusChangeBody(""), "");
  EXPECT_FALSE(ParseCreateEnrollmentTokenBody("{\"ttl\": \"1h\"}"));
  EXPECT_FALSE(ParseCreateEnrollmentTokenBody("{\"serial\": [\"x\"]}"));
}

// ---- The service ----

class ApiServiceTest : public TestCompanion {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(InitState());
    state_->config.api.admin_subjects = {"alice"};
    state_->config.api.read_only_subjects = {"bob"};
    auto store = OpenSqliteAuditStore(state_->config.registry_path);
    ASSERT_TRUE(store) << store.error().ToString();
    audit_store_ = std::move(*store);
    AuditEngineOptions audit_options;
    audit_options.config.report_dir = dir_.path() + "/reports";
    audit_ = std::make_unique<AuditEngine>(audit_options, *state_->registry, *audit_store_, fs_, clock_, log_);
    audit_->SetObserver([this](const AuditTask& t) {
      metrics_.AuditRun(t);
      std::lock_guard lock(audit_mu_);
      finished_audits_.push_back(t.id);
      audit_cv_.notify_all();
    });
    audit_->Start();
    ApiServiceOptions o;
    o.metrics = &metrics_;
    o.audit = audit_.get();
    service_ = std::make_unique<ApiService>(*state_, std::move(o), clock_, log_);
    auto admin = CreateApiToken(*state_->registry, "ops-admin", ApiRole::kAdmin, std::nullopt, clock_.Now());
    ASSERT_TRUE(admin);
    admin_ = admin->secret;
    auto reader = CreateApiToken(*state_->registry, "ops-reader", ApiRole::kReadOnly, hours(1), clock_.Now());
    ASSERT_TRUE(reader);
    reader_ = reader->secret;
  }

  // A certificate record for `thing` (the registry does not parse the PEM here).
  std::string AddCert(const std::string& thing, int n, shared::WallTime not_after) {
    IssueRecord rec;
    rec.cert.id = shared::Sha256Hex(thing + std::to_string(n));
    rec.cert.thing_name = thing;
    rec.cert.serial = shared::Sha256Hex(rec.cert.id).substr(0, 32);
    rec.cert.subject = "CN=" + thing;
    rec.cert.not_before = clock_.Now();
    rec.cert.not_after = not_after;
    rec.cert.issued_at = clock_.Now();
    rec.cert.source = "test";
    rec.cert.pem = "-";
    EXPECT_TRUE(state_->registry->RecordIssued(rec, clock_.Now()).ok());
    return rec.cert.id;
  }

  ApiResponse Call(const std::string& method, const std::string& path, const std::string& token,
                   std::multimap<std::string, std::string> query = {}, std::string body = "") {
    ApiRequest r;
    r.method = method;
    r.path = path;
    r.query = std::move(query);
    if (!token.empty()) r.authorization = "Bearer " + token;
    r.body = std::move(body);
    r.remote = "127.0.0.1:5555";
    return service_->Handle(r);
  }

  json Body(const ApiResponse& r) { return json::parse(r.body); }

  // Blocks until the engine's thread has finished audit `id` (no sleeping: the observer
  // signals).
  void AwaitAudit(const std::string& id) {
    std::unique_lock lock(audit_mu_);
    ASSERT_TRUE(audit_cv_.wait_for(lock, std::chrono::seconds(60), [&] {
      return std::find(finished_audits_.begin(), finished_audits_.end(), id) != finished_audits_.end();
    })) << "audit " << id << " did not finish";
  }

  int64_t Events(const std::string& kind) {
    EventFilter f;
    f.kind = kind;
    auto page = state_->registry->ListSecurityEventsPage(f, 500);
    return page ? static_cast<int64_t>(page->items.size()) : -1;
  }

  shared::FakeClock clock_{kTestCompanionStart};
  shared::CaptureLogger log_;
  Metrics metrics_;
  std::unique_ptr<AuditStore> audit_store_;
  std::unique_ptr<AuditEngine> audit_;
  std::mutex audit_mu_;
  std::condition_variable audit_cv_;
  std::vector<std::string> finished_audits_;
  std::unique_ptr<ApiService> service_;
  std::string admin_;
  std::string reader_;
};

TEST_F(ApiServiceTest, UnauthenticatedRequestsGet401WithoutSayingWhy) {
  auto none = Call("GET", "/things", "");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(Body(none)["error"], "unauthorized");
  auto unknown = Call("GET", "/things", "not-a-token");
  EXPECT_EQ(unknown.status, 401);
  ApiRequest r;
  r.method = "GET";
  r.path = "/things";
  r.authorization = "Basic Zm9vOmJhcg==";
  EXPECT_EQ(service_->Handle(r).status, 401);

  ASSERT_TRUE(state_->registry->RevokeApiToken("ops-reader", clock_.Now(),
                                               SecurityEvent{0, clock_.Now(), "api_token_revoked", "token:ops-reader", "test"})
                  .ok());
  auto revoked = Call("GET", "/things", reader_);
  EXPECT_EQ(revoked.status, 401);
  EXPECT_EQ(revoked.body, unknown.body) << "a revoked token must look like an unknown one";
  EXPECT_EQ(Events("api_auth_failed"), 3);
  EXPECT_EQ(Events("api_token_revoked"), 1);
}

TEST_F(ApiServiceTest, ExpiredTokenIsRefused) {
  EXPECT_EQ(Call("GET", "/things", reader_).status, 200);
  clock_.Advance(hours(1));
  EXPECT_EQ(Call("GET", "/things", reader_).status, 401);
}

TEST_F(ApiServiceTest, RolesFromTokensAndCertificates) {
  std::string id = AddCert("gw-1", 1, clock_.Now() + hours(24 * 90));
  auto ro = Call("POST", "/certificates/" + id + "/revoke", reader_);
  EXPECT_EQ(ro.status, 403);
  EXPECT_EQ(Events("api_forbidden"), 1);

  ApiRequest r;
  r.method = "POST";
  r.path = "/certificates/" + id + "/deactivate";
  r.client_cert_cn = "bob";
  EXPECT_EQ(service_->Handle(r).status, 403);
  r.client_cert_cn = "mallory";
  EXPECT_EQ(service_->Handle(r).status, 401);
  r.client_cert_cn = "alice";
  auto ok = service_->Handle(r);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(Body(ok)["status"], "INACTIVE");
  EXPECT_EQ(Events("certificate_deactivated"), 1);
}

TEST_F(ApiServiceTest, RevokeRecordsTheEventWithTheChange) {
  std::string id = AddCert("gw-1", 1, clock_.Now() + hours(24 * 90));
  auto res = Call("POST", "/certificates/" + id + "/revoke", admin_, {}, R"({"reason": "key compromise"})");
  ASSERT_EQ(res.status, 200) << res.body;
  EXPECT_EQ(Body(res)["status"], "REVOKED");
  EventFilter f;
  f.kind = "certificate_revoked";
  auto page = state_->registry->ListSecurityEventsPage(f, 10);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->items.size(), 1u);
  EXPECT_EQ(page->items[0].subject, id);
  EXPECT_NE(page->items[0].detail.find("token:ops-admin: key compromise"), std::string::npos);

  EXPECT_EQ(Call("POST", "/certificates/" + id + "/deactivate", admin_).status, 409) << "REVOKED is final";
  EXPECT_EQ(Call("POST", "/certificates/" + std::string(64, 'a') + "/revoke", admin_).status, 404);
  EXPECT_EQ(Call("POST", "/certificates/XYZ/revoke", admin_).status, 400);
  EXPECT_EQ(Call("POST", "/certificates/" + id + "/revoke", admin_, {}, "{not json").status, 400);
}

TEST_F(ApiServiceTest, ThingsPaginateWithCursors) {
  for (int i = 0; i < 7; ++i) AddCert("gw-" + std::to_string(i), i, clock_.Now() + hours(24));
  std::set<std::string> seen;
  std::multimap<std::string, std::string> q{{"limit", "3"}};
  int pages = 0;
  for (;;) {
    auto res = Call("GET", "/things", reader_, q);
    ASSERT_EQ(res.status, 200) << res.body;
    json b = Body(res);
    for (const auto& t : b["things"]) EXPECT_TRUE(seen.insert(t["thingName"]).second);
    ++pages;
    if (!b.contains("nextToken")) break;
    q = {{"limit", "3"}, {"nextToken", b["nextToken"]}};
  }
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(pages, 3);

  EXPECT_EQ(Call("GET", "/things", reader_, {{"nextToken", "garbage!"}}).status, 400);
  EXPECT_EQ(Call("GET", "/things", reader_, {{"nextToken", EncodeCursor("events", "5")}}).status, 400);
  EXPECT_EQ(Call("GET", "/things", reader_, {{"limit", "501"}}).status, 400);
  EXPECT_EQ(Call("GET", "/things", reader_, {{"limit", "1"}, {"limit", "2"}}).status, 400);
  EXPECT_EQ(Call("GET", "/things", reader_, {{"color", "red"}}).status, 400);
}

TEST_F(ApiServiceTest, CertificateFiltersAndDescribe) {
  std::string soon = AddCert("gw-a", 1, clock_.Now() + hours(24 * 5));
  AddCert("gw-b", 2, clock_.Now() + hours(24 * 60));
  auto res = Call("GET", "/certificates", reader_, {{"expiringBefore", "2026-01-10T00:00:00Z"}});
  ASSERT_EQ(res.status, 200) << res.body;
  ASSERT_EQ(Body(res)["certificates"].size(), 1u);
  EXPECT_EQ(Body(res)["certificates"][0]["certificateId"], soon);
  EXPECT_EQ(Body(Call("GET", "/certificates", reader_, {{"thingName", "gw-b"}}))["certificates"].size(), 1u);
  EXPECT_EQ(Body(Call("GET", "/certificates", reader_, {{"status", "REVOKED"}}))["certificates"].size(), 0u);
  EXPECT_EQ(Call("GET", "/certificates", reader_, {{"status", "revoked"}}).status, 400);
  EXPECT_EQ(Call("GET", "/certificates", reader_, {{"expiringBefore", "tomorrow"}}).status, 400);
  EXPECT_EQ(Call("GET", "/certificates", reader_, {{"thingName", "bad name"}}).status, 400);

  auto one = Call("GET", "/certificates/" + soon, reader_);
  ASSERT_EQ(one.status, 200);
  EXPECT_EQ(Body(one)["certificatePem"], "-");
  auto thing = Call("GET", "/things/gw-a", reader_);
  ASSERT_EQ(thing.status, 200);
  EXPECT_EQ(Body(thing)["certificates"].size(), 1u);
  EXPECT_EQ(Call("GET", "/things/nobody", reader_).status, 404);
  EXPECT_EQ(Call("GET", "/things/certfleet-companion", reader_).status, 400);
}

TEST_F(ApiServiceTest, RotationsCreateAndCancel) {
  AddCert("gw-1", 1, clock_.Now() + hours(24));
  auto created = Call("POST", "/rotations", admin_, {}, R"({"thingName": "gw-1", "deadline": "1d"})");
  ASSERT_EQ(created.status, 201) << created.body;
  std::string id = Body(created)["rotationId"];
  EXPECT_EQ(Body(created)["createdBy"], "api:token:ops-admin");
  EXPECT_EQ(Call("POST", "/rotations", admin_, {}, R"({"thingName": "gw-1"})").status, 409);
  EXPECT_EQ(Call("POST", "/rotations", admin_, {}, R"({"thingName": "nobody"})").status, 404);
  EXPECT_EQ(Call("POST", "/rotations", reader_, {}, R"({"thingName": "gw-1"})").status, 403);
  EXPECT_EQ(Body(Call("GET", "/rotations", reader_, {{"state", "PENDING"}}))["rotations"].size(), 1u);
  EXPECT_EQ(Call("GET", "/rotations/" + id, reader_).status, 200);
  EXPECT_EQ(Call("POST", "/rotations/" + id + "/cancel", admin_).status, 200);
  EXPECT_EQ(Call("POST", "/rotations/" + id + "/cancel", admin_).status, 409);
  EXPECT_EQ(Call("GET", "/rotations/xyz", reader_).status, 400);
}

TEST_F(ApiServiceTest, SuppressionsCreateListDelete) {
  const std::string check = "DEVICE_CERTIFICATE_EXPIRING_CHECK";
  EXPECT_EQ(Call("POST", "/audit-suppressions", reader_, {}, R"({"checkName": ")" + check + R"(", "resourceId": "x", "duration": "1d"})").status, 403);
  EXPECT_EQ(Call("POST", "/audit-suppressions", admin_, {}, R"({"checkName": "NOPE", "resourceId": "x", "duration": "1d"})").status, 400);
  EXPECT_EQ(Call("POST", "/audit-suppressions", admin_, {}, R"({"checkName": ")" + check + R"(", "resourceId": "x"})").status, 400)
      << "no expiry";
  EXPECT_EQ(Call("POST", "/audit-suppressions", admin_, {},
                 R"({"checkName": ")" + check + R"(", "resourceId": "x", "duration": "1d", "expirationDate": "2030-01-01T00:00:00Z"})")
                .status,
            400)
      << "two expiries";
  auto created = Call("POST", "/audit-suppressions", admin_, {},
                      R"({"checkName": ")" + check + R"(", "resourceId": "cert-1", "duration": "30d", "description": "lab unit"})");
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(Body(created)["createdBy"], "api:token:ops-admin");
  auto list = Call("GET", "/audit-suppressions", reader_);
  ASSERT_EQ(list.status, 200);
  ASSERT_EQ(Body(list)["suppressions"].size(), 1u);
  EXPECT_EQ(Body(list)["suppressions"][0]["resourceId"], "cert-1");
  EXPECT_EQ(Call("GET", "/audit-suppressions", reader_, {{"includeExpired", "maybe"}}).status, 400);
  EXPECT_EQ(Call("POST", "/audit-suppressions/delete", admin_, {}, R"({"checkName": ")" + check + R"(", "resourceId": "cert-1"})").status, 200);
  EXPECT_EQ(Call("POST", "/audit-suppressions/delete", admin_, {}, R"({"checkName": ")" + check + R"(", "resourceId": "cert-1"})").status, 404);
  EXPECT_EQ(Body(Call("GET", "/audit-suppressions", reader_))["suppressions"].size(), 0u);
}

TEST_F(ApiServiceTest, RotationsAndTokensPaginateNewestFirst) {
  // Five things with a rotation each, two of them in the same second.
  std::vector<std::string> ids;
  for (int i = 1; i <= 5; ++i) {
    AddCert("gw-" + std::to_string(i), i, clock_.Now() + hours(24));
    auto created = Call("POST", "/rotations", admin_, {}, R"({"thingName": "gw-)" + std::to_string(i) + R"("})");
    ASSERT_EQ(created.status, 201) << created.body;
    ids.push_back(Body(created)["rotationId"]);
    // Serials may repeat: sn-2 gets two tokens in the same second (a page break between
    // them must not lose one).
    auto token = Call("POST", "/enrollment-tokens", admin_, {}, R"({"serial": "sn-)" + std::to_string(i == 3 ? 2 : i) + R"("})");
    ASSERT_EQ(token.status, 201) << token.body;
    if (i != 2) clock_.Advance(seconds(1));
  }
  for (const char* list : {"/rotations", "/enrollment-tokens"}) {
    const char* member = std::string(list) == "/rotations" ? "rotations" : "enrollmentTokens";
    const char* key = std::string(list) == "/rotations" ? "rotationId" : "serial";
    std::vector<std::string> seen;
    std::multimap<std::string, std::string> q{{"limit", "2"}};
    for (int page = 0; page < 5; ++page) {
      auto res = Call("GET", list, reader_, q);
      ASSERT_EQ(res.status, 200) << res.body;
      const json body = Body(res);
      for (const auto& x : body[member]) seen.push_back(x[key]);
      if (!body.contains("nextToken")) break;
      q = {{"limit", "2"}, {"nextToken", body["nextToken"]}};
    }
    ASSERT_EQ(seen.size(), 5u) << list;
    std::multiset<std::string> shown(seen.begin(), seen.end());
    const std::multiset<std::string> want = std::string(list) == "/rotations"
        ? std::multiset<std::string>(ids.begin(), ids.end())
        : std::multiset<std::string>{"sn-1", "sn-2", "sn-2", "sn-4", "sn-5"};
    EXPECT_EQ(shown, want) << list << ": a row shown twice or lost";
    EXPECT_EQ(Call("GET", list, reader_, {{"nextToken", "garbage"}}).status, 400) << list;
  }
  auto all = Body(Call("GET", "/rotations", reader_));
  EXPECT_EQ(all["rotations"][0]["rotationId"], ids.back()) << "newest first";
  // A cursor of one list is refused by the other.
  auto page = Body(Call("GET", "/rotations", reader_, {{"limit", "1"}}));
  EXPECT_EQ(Call("GET", "/enrollment-tokens", reader_, {{"nextToken", page["nextToken"]}}).status, 400);
}

TEST_F(ApiServiceTest, EnrollmentTokenSecretIsShownOnce) {
  auto created = Call("POST", "/enrollment-tokens", admin_, {}, R"({"serial": "gw-9", "ttl": "2h"})");
  ASSERT_EQ(created.status, 201) << created.body;
  std::string secret = Body(created)["token"];
  EXPECT_GE(secret.size(), 43u);
  auto list = Call("GET", "/enrollment-tokens", reader_);
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(list.body.find(secret), std::string::npos);
  EXPECT_EQ(Body(list)["enrollmentTokens"][0]["state"], "UNUSED");
  EXPECT_EQ(Call("POST", "/enrollment-tokens", admin_, {}, R"({"serial": "gw-9", "ttl": "9999d"})").status, 400);
}

TEST_F(ApiServiceTest, EventsFilterAndPaginate) {
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(state_->registry->RecordSecurityEvent(
                    SecurityEvent{0, clock_.Now() + seconds(i), i % 2 ? "token_reused" : "hook_denied", "s", "d"})
                    .ok());
  }
  auto res = Call("GET", "/security-events", reader_, {{"kind", "hook_denied"}, {"limit", "2"}});
  ASSERT_EQ(res.status, 200) << res.body;
  json b = Body(res);
  ASSERT_EQ(b["securityEvents"].size(), 2u);
  ASSERT_TRUE(b.contains("nextToken"));
  auto next = Call("GET", "/security-events", reader_, {{"kind", "hook_denied"}, {"nextToken", b["nextToken"]}});
  EXPECT_EQ(Body(next)["securityEvents"].size(), 1u);
  auto since = Call("GET", "/security-events", reader_, {{"since", shared::FormatRfc3339(clock_.Now() + seconds(3))}});
  EXPECT_EQ(Body(since)["securityEvents"].size(), 2u);
}

TEST_F(ApiServiceTest, NotFoundAndMethodNotAllowedAreJson) {
  auto nf = Call("GET", "/nope", admin_);
  EXPECT_EQ(nf.status, 404);
  EXPECT_EQ(Body(nf)["error"], "not_found");
  auto mna = Call("DELETE", "/things", admin_);
  EXPECT_EQ(mna.status, 405);
  EXPECT_EQ(Body(mna)["error"], "method_not_allowed");
}

TEST_F(ApiServiceTest, StartAuditRunsInTheBackgroundOnceEveryFiveMinutes) {
  AddCert("gw-1", 1, clock_.Now() + hours(24 * 3));   // expiring within 30 days
  AddCert("gw-2", 2, clock_.Now() + hours(24 * 10));  // expiring within 30 days
  AddCert("gw-3", 3, clock_.Now() + hours(24 * 200));
  EXPECT_EQ(Call("POST", "/start-audit", reader_).status, 403);
  // Invalid requests are refused without using up the 5-minute slot.
  EXPECT_EQ(Call("POST", "/start-audit", admin_, {}, "{\"targetCheckNames\": [\"NO_SUCH_CHECK\"]}").status, 400);
  EXPECT_EQ(Call("POST", "/start-audit", admin_, {}, "{\"targetCheckNames\": \"x\"}").status, 400);
  EXPECT_EQ(Call("POST", "/start-audit", admin_, {}, "[").status, 400);
  auto started = Call("POST", "/start-audit", admin_, {},
                      "{\"targetCheckNames\": [\"DEVICE_CERTIFICATE_EXPIRING_CHECK\"]}");
  ASSERT_EQ(started.status, 202) << started.body;
  const std::string id = Body(started)["taskId"];
  EXPECT_EQ(Body(started)["taskStatus"], "IN_PROGRESS");
  auto again = Call("POST", "/start-audit", admin_);
  EXPECT_EQ(again.status, 429);
  EXPECT_EQ(Body(again)["error"], "rate_limited");
  ASSERT_EQ(again.headers.size(), 1u);
  EXPECT_EQ(again.headers[0].first, "Retry-After");
  ASSERT_NO_FATAL_FAILURE(AwaitAudit(id));

  auto status = Call("GET", "/get-audit-status/" + id, reader_);
  ASSERT_EQ(status.status, 200) << status.body;
  json report = Body(status);
  EXPECT_EQ(report["taskStatus"], "COMPLETED");
  EXPECT_EQ(report["taskType"], "ON_DEMAND_AUDIT_TASK");
  const json& d = report["auditDetails"]["DEVICE_CERTIFICATE_EXPIRING_CHECK"];
  EXPECT_EQ(d["totalResourcesCount"], 3);
  EXPECT_EQ(d["nonCompliantResourcesCount"], 2);
  EXPECT_EQ(d["checkRunStatus"], "COMPLETED_NON_COMPLIANT");
  EXPECT_EQ(report["findings"].size(), 2u);
  EXPECT_FALSE(report.contains("nextToken"));

  // Findings page through nextToken.
  auto first = Call("GET", "/get-audit-status/" + id, reader_, {{"limit", "1"}});
  ASSERT_EQ(first.status, 200);
  ASSERT_EQ(Body(first)["findings"].size(), 1u);
  const std::string token = Body(first)["nextToken"];
  auto second = Call("GET", "/get-audit-status/" + id, reader_, {{"limit", "1"}, {"nextToken", token}});
  ASSERT_EQ(second.status, 200);
  ASSERT_EQ(Body(second)["findings"].size(), 1u);
  EXPECT_NE(Body(second)["findings"][0]["findingId"], Body(first)["findings"][0]["findingId"]);
  EXPECT_FALSE(Body(second).contains("nextToken"));

  EXPECT_EQ(Call("GET", "/get-audit-status/" + std::string(32, 'a'), reader_).status, 404);
  EXPECT_EQ(Call("GET", "/get-audit-status/not-an-id", reader_).status, 400);
  EXPECT_EQ(Call("GET", "/get-audit-status/" + id, reader_, {{"nextToken", "garbage"}}).status, 400);

  clock_.Advance(seconds(300));
  auto later = Call("POST", "/start-audit", admin_);
  ASSERT_EQ(later.status, 202) << later.body;
  ASSERT_NO_FATAL_FAILURE(AwaitAudit(Body(later)["taskId"]));

  auto list = Call("GET", "/list-audits", reader_, {{"limit", "1"}});
  ASSERT_EQ(list.status, 200) << list.body;
  ASSERT_EQ(Body(list)["tasks"].size(), 1u);
  EXPECT_EQ(Body(list)["tasks"][0]["taskId"], Body(later)["taskId"]) << "newest first";
  auto rest = Call("GET", "/list-audits", reader_, {{"limit", "1"}, {"nextToken", Body(list)["nextToken"]}});
  ASSERT_EQ(rest.status, 200);
  ASSERT_EQ(Body(rest)["tasks"].size(), 1u);
  EXPECT_EQ(Body(rest)["tasks"][0]["taskId"], id);
  EXPECT_EQ(Call("GET", "/list-audits", reader_, {{"taskStatus", "DONE"}}).status, 400);
  EXPECT_EQ(Call("GET", "/list-audits", reader_, {{"taskType", "x"}}).status, 400);
  EXPECT_EQ(Call("GET", "/list-audits", reader_, {{"startTime", "yesterday"}}).status, 400);
  EXPECT_EQ(Body(Call("GET", "/list-audits", reader_, {{"taskStatus", "FAILED"}}))["tasks"].size(), 0u);

  auto metrics = Call("GET", "/metrics", reader_);
  EXPECT_NE(metrics.body.find("certfleet_audit_runs_total{result=\"completed\"} 2"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("certfleet_audit_noncompliant_resources{check=\"DEVICE_CERTIFICATE_EXPIRING_CHECK\"} 2"),
            std::string::npos);
}

TEST_F(ApiServiceTest, MetricsCountByStatusAndExpiry) {
  AddCert("gw-1", 1, clock_.Now() + hours(24 * 3));
  AddCert("gw-2", 2, clock_.Now() + hours(24 * 200));
  EXPECT_EQ(Call("GET", "/metrics", "").status, 401) << "metrics need a credential by default";
  auto res = Call("GET", "/metrics", reader_);
  ASSERT_EQ(res.status, 200);
  EXPECT_NE(res.body.find("certfleet_certificates{status=\"ACTIVE\"} 2"), std::string::npos) << res.body;
  EXPECT_NE(res.body.find("certfleet_active_certificates_by_expiry{bucket=\"lt7d\"} 1"), std::string::npos);
  EXPECT_NE(res.body.find("certfleet_active_certificates_by_expiry{bucket=\"ge90d\"} 1"), std::string::npos);
  EXPECT_NE(res.body.find("certfleet_rotation_requests{state=\"PENDING\"} 0"), std::string::npos);
  EXPECT_NE(res.body.find("certfleet_api_auth_failures_total 1"), std::string::npos);
}

}  // namespace
}  // namespace certfleet::companion

namespace certfleet::companion {
namespace {

// Every route the service registers is in docs/openapi.json with the same least role,
// and every operation there is a route.
TEST_F(ApiServiceTest, OpenApiDocumentMatchesTheRoutes) {
  std::ifstream in(std::string(CERTFLEET_SOURCE_DIR) + "/docs/openapi.json");
  ASSERT_TRUE(in) << "docs/openapi.json";
  json doc = json::parse(in);
  std::set<std::string> documented;
  for (const auto& [path, ops] : doc["paths"].items()) {
    for (const auto& [method, op] : ops.items()) {
      std::string m = method;
      std::transform(m.begin(), m.end(), m.begin(), ::toupper);
      documented.insert(m + " " + path + " " + op.value("x-certfleet-role", std::string("?")));
    }
  }
  std::set<std::string> served;
  for (const Route& r : service_->router().routes()) {
    served.insert(r.method + " " + r.pattern + " " + std::string(ApiRoleName(r.min_role.value_or(ApiRole::kReadOnly))));
  }
  EXPECT_EQ(served, documented);
}

}  // namespace
}  // namespace certfleet::companion
