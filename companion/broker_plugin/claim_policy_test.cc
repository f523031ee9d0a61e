#include "companion/broker_plugin/claim_policy.h"

#include <openssl/x509.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "shared/x509/cert.h"
#include "shared/x509/key.h"

namespace certfleet::broker_plugin {
namespace {

namespace sh = shared;

// A certificate for a fresh P-256 key named `cn`, signed by `issuer` (self-signed when
// null). Validity does not matter to the policy; it is a fixed window.
struct TestCert {
  sh::EvpPkeyPtr key;
  sh::X509Ptr cert;
  std::string Pem() const { return sh::CertToPem(cert.get()); }
  std::string Fingerprint() const { return sh::CertFingerprint(cert.get()); }
};

TestCert MakeCert(const std::string& cn, const TestCert* issuer) {
  TestCert out;
  auto key = sh::GenerateKeyPair(sh::KeyType::kEcP256);
  EXPECT_TRUE(key);
  out.key = std::move(*key);
  out.cert.reset(X509_new());
  X509* c = out.cert.get();
  sh::X509NamePtr name(X509_NAME_new());
  X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                             -1, 0);
  X509_set_version(c, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
  X509_set_subject_name(c, name.get());
  X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer->cert.get()) : name.get());
  X509_set_pubkey(c, out.key.get());
  ASN1_TIME_set(X509_getm_notBefore(c), 1767225600);       // 2026-01-01
  ASN1_TIME_set(X509_getm_notAfter(c), 1767225600 + 86400);
  EXPECT_GT(X509_sign(c, issuer ? issuer->key.get() : out.key.get(), EVP_sha256()), 0);
  return out;
}


class ClaimPolicyTest : public ::testing::Test {
 protected:
  TestCert ca_a_ = MakeCert("factory A claim CA", nullptr);
  TestCert ca_b_ = MakeCert("factory B claim CA", nullptr);
  // Same name as ca_a_, different key: a forger's CA.
  TestCert forged_ca_ = MakeCert("factory A claim CA", nullptr);
  TestCert claim_a_ = MakeCert("batch-a", &ca_a_);
  TestCert claim_b_ = MakeCert("batch-b", &ca_b_);
  TestCert claim_forged_ = MakeCert("batch-a", &forged_ca_);
  TestCert claim_pinned_ = MakeCert("pinned-device", &ca_b_);

  ClaimPolicy Policy() {
    ClaimPolicy p;
    auto a = MakeClaimRule("factory-a", ca_a_.Pem(), {}, {"gateway"});
    EXPECT_TRUE(a) << a.error().ToString();
    auto pinned = MakeClaimRule("pinned", "", {claim_pinned_.Fingerprint()}, {"*"});
    EXPECT_TRUE(pinned) << pinned.error().ToString();
    p.rules.push_back(std::move(*a));
    p.rules.push_back(std::move(*pinned));
    return p;
  }
};

constexpr const char* kCsrTopic = "certfleet/provisioning/batch-a/dev-1/certificates/create-from-csr/json";
constexpr const char* kCreateTopic = "certfleet/provisioning/batch-a/dev-1/certificates/create/json";
constexpr const char* kGateway = "certfleet/provisioning/batch-a/dev-1/provisioning-templates/gateway/provision/json";
constexpr const char* kSensor = "certfleet/provisioning/batch-a/dev-1/provisioning-templates/sensor/provision/json";

ClaimVerdict Verdict(const ClaimPolicy& p, const TestCert& c, const std::string& topic,
                     ClaimAccess access = ClaimAccess::kWrite) {
  return DecideClaimAccessForCert(p, c.cert.get(), topic, access).verdict;
}

TEST_F(ClaimPolicyTest, CertificateFromAListedCaMayUseItsTemplatesOnly) {
  ClaimPolicy p = Policy();
  EXPECT_EQ(Verdict(p, claim_a_, kCsrTopic), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(p, claim_a_, kCreateTopic), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(p, claim_a_, kGateway), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(p, claim_a_, std::string(kGateway) + "/accepted", ClaimAccess::kRead), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(p, claim_a_, kSensor), ClaimVerdict::kDeny);
  EXPECT_EQ(Verdict(p, claim_a_, std::string(kSensor) + "/accepted", ClaimAccess::kRead), ClaimVerdict::kDeny);
  EXPECT_EQ(Verdict(p, claim_a_, std::string(kSensor) + "/rejected", ClaimAccess::kSubscribe), ClaimVerdict::kDeny);
  EXPECT_EQ(Verdict(p, claim_a_, "$aws/provisioning-templates/sensor/provision/json"), ClaimVerdict::kDeny);
  EXPECT_EQ(Verdict(p, claim_a_, "$aws/provisioning-templates/gateway/provision/json"), ClaimVerdict::kDefer);
}

TEST_F(ClaimPolicyTest, WildcardTemplateLevelNeedsTheAnyTemplateRule) {
  ClaimPolicy p = Policy();
  const std::string filter = "certfleet/provisioning/batch-a/dev-1/provisioning-templates/+/provision/json/accepted";
  EXPECT_EQ(Verdict(p, claim_a_, filter, ClaimAccess::kSubscribe), ClaimVerdict::kDeny);
  EXPECT_EQ(Verdict(p, claim_a_, "certfleet/provisioning/batch-a/dev-1/provisioning-templates/#",
                    ClaimAccess::kSubscribe), ClaimVerdict::kDeny);
  EXPECT_EQ(Verdict(p, claim_pinned_, filter, ClaimAccess::kSubscribe), ClaimVerdict::kDefer);
  // A filter above the template level is left to the per-message read checks.
  EXPECT_EQ(Verdict(p, claim_a_, "certfleet/provisioning/batch-a/dev-1/#", ClaimAccess::kSubscribe),
            ClaimVerdict::kDefer);
}

TEST_F(ClaimPolicyTest, CertificateMatchingNoRuleIsDeniedEverything) {
  ClaimPolicy p = Policy();
  for (const char* topic : {kCsrTopic, kCreateTopic, kGateway, "certfleet/things/x/status", "anything"}) {
    EXPECT_EQ(Verdict(p, claim_b_, topic), ClaimVerdict::kDeny) << topic;
    EXPECT_EQ(Verdict(p, claim_b_, topic, ClaimAccess::kRead), ClaimVerdict::kDeny) << topic;
  }
  EXPECT_EQ(Verdict(p, claim_b_, kCsrTopic, ClaimAccess::kUnsubscribe), ClaimVerdict::kDeny);
}

TEST_F(ClaimPolicyTest, SameIssuerNameWithAnotherKeyDoesNotMatch) {
  ClaimPolicy p = Policy();
  EXPECT_TRUE(MatchingRules(p, claim_forged_.cert.get(), claim_forged_.Fingerprint()).empty());
  EXPECT_EQ(Verdict(p, claim_forged_, kCsrTopic), ClaimVerdict::kDeny);
}

TEST_F(ClaimPolicyTest, FingerprintRuleMatchesThatCertificateOnly) {
  ClaimPolicy p = Policy();
  EXPECT_EQ(MatchingRules(p, claim_pinned_.cert.get(), claim_pinned_.Fingerprint()), std::vector<size_t>{1});
  EXPECT_EQ(Verdict(p, claim_pinned_, kSensor), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(p, claim_pinned_, kCsrTopic), ClaimVerdict::kDefer);
  // Another certificate of the same CA is not pinned.
  EXPECT_EQ(Verdict(p, claim_b_, kSensor), ClaimVerdict::kDeny);
}

TEST_F(ClaimPolicyTest, OtherTopicsAreLeftToTheAclFile) {
  ClaimPolicy p = Policy();
  EXPECT_EQ(Verdict(p, claim_a_, "certfleet/things/gw-1/status"), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(p, claim_a_, kGateway, ClaimAccess::kUnsubscribe), ClaimVerdict::kDefer);
}

TEST_F(ClaimPolicyTest, NoCertificateIsDenied) {
  ClaimPolicy p = Policy();
  EXPECT_EQ(DecideClaimAccessForCert(p, nullptr, kCsrTopic, ClaimAccess::kWrite).verdict, ClaimVerdict::kDeny);
}

TEST_F(ClaimPolicyTest, JsonRoundTrip) {
  ClaimPolicy p = Policy();
  std::string json = ClaimPolicyToJson(p);
  auto back = ParseClaimPolicy(json);
  ASSERT_TRUE(back) << back.error().ToString();
  ASSERT_EQ(back->rules.size(), 2u);
  EXPECT_EQ(back->rules[0].name, "factory-a");
  EXPECT_EQ(back->rules[0].issuer_pems, p.rules[0].issuer_pems);
  EXPECT_EQ(back->rules[1].fingerprints, p.rules[1].fingerprints);
  EXPECT_EQ(ClaimPolicyToJson(*back), json);
  EXPECT_EQ(Verdict(*back, claim_a_, kGateway), ClaimVerdict::kDefer);
  EXPECT_EQ(Verdict(*back, claim_a_, kSensor), ClaimVerdict::kDeny);
}

TEST_F(ClaimPolicyTest, EmptyRuleListDeniesEveryone) {
  auto p = ParseClaimPolicy(R"({"version": 1, "rules": []})");
  ASSERT_TRUE(p) << p.error().ToString();
  EXPECT_EQ(Verdict(*p, claim_a_, kCsrTopic), ClaimVerdict::kDeny);
}

TEST(ClaimPolicyParse, RejectsMalformedInput) {
  const std::string fp(64, 'a');
  const std::vector<std::string> bad = {
      "",
      "not json",
      "[]",
      "{}",
      R"({"rules": []})",
      R"({"version": 2, "rules": []})",
      R"({"version": "1", "rules": []})",
      R"({"version": 1})",
      R"({"version": 1, "rules": {}})",
      R"({"version": 1, "rules": [], "extra": 1})",
      R"({"version": 1, "rules": [1]})",
      R"({"version": 1, "rules": [{"certificate_fingerprints": [")" + fp + R"("], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "", "certificate_fingerprints": [")" + fp + R"("], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a/b", "certificate_fingerprints": [")" + fp + R"("], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": []}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": ["a/b"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": ["+"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": "*"}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": ["ABCDEF"], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + std::string(64, 'A') +
          R"("], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [1], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "issuer_certificates": ["not pem"], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "issuer_certificates": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"], "templates": ["*"]}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": ["*"], "x": 1}]})",
      R"({"version": 1, "rules": [{"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": ["*"]},)"
          R"({"name": "a", "certificate_fingerprints": [")" + fp + R"("], "templates": ["*"]}]})",
  };
  for (const std::string& text : bad) {
    auto p = ParseClaimPolicy(text);
    EXPECT_FALSE(p) << text;
    if (!p) {
      EXPECT_EQ(p.error().code(), shared::Code::kInvalidArgument) << text;
    }
  }
}

TEST(ClaimPolicyParse, IssuerEntryHoldsExactlyOneCertificate) {
  TestCert a = MakeCert("a", nullptr);
  TestCert b = MakeCert("b", nullptr);
  nlohmann::json two = {{"version", 1},
                        {"rules", {{{"name", "r"}, {"issuer_certificates", {a.Pem() + b.Pem()}}, {"templates", {"*"}}}}}};
  EXPECT_FALSE(ParseClaimPolicy(two.dump()));
  nlohmann::json one = {{"version", 1},
                        {"rules", {{{"name", "r"}, {"issuer_certificates", {a.Pem(), b.Pem()}}, {"templates", {"*"}}}}}};
  auto p = ParseClaimPolicy(one.dump());
  ASSERT_TRUE(p) << p.error().ToString();
  EXPECT_EQ(p->rules[0].issuers.size(), 2u);
}

TEST(ClaimPolicyParse, MakeClaimRuleSplitsABundle) {
  TestCert a = MakeCert("a", nullptr);
  TestCert b = MakeCert("b", nullptr);
  auto r = MakeClaimRule("r", a.Pem() + b.Pem(), {}, {"gateway"});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->issuer_pems.size(), 2u);
  EXPECT_FALSE(MakeClaimRule("r", "garbage", {}, {"gateway"}));
}

}  // namespace
}  // namespace certfleet::broker_plugin
