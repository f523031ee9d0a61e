#include "companion/provisioning_service.h"

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <sqlite3.h>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "companion/ca.h"
#include "companion/config.h"
#include "companion/est_service.h"
#include "companion/hooks.h"
#include "companion/init.h"
#include "companion/provisioning_template.h"
#include "companion/registry.h"
#include "companion/testing/test_companion.h"
#include "shared/core/base64.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/testing/temp_dir.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"

namespace certfleet::companion {
namespace {

namespace sh = shared;
using nlohmann::json;
using sh::KeyType;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Params = std::map<std::string, std::string>;

constexpr char kTemplate[] = "gateways";
constexpr char kClaim[] = "claim-batch-7";
constexpr char kClient[] = "dev-0001";

// The thing is "gw-" + SerialNumber; Model has a default and shows in attributes and the
// device configuration; the certificate id is a certificate-derived parameter.
const char kTemplateJson[] = R"json({
  "Parameters": {
    "SerialNumber": {"Type": "String"},
    "Model": {"Type": "String", "Default": "gw-100"},
    "AWS::IoT::Certificate::Id": {"Type": "String"}
  },
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]},
        "AttributePayload": {"model": {"Ref": "Model"}}
      }
    },
    "certificate": {
      "Type": "AWS::IoT::Certificate",
      "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}
    }
  },
  "DeviceConfiguration": {"model": {"Ref": "Model"}, "certificateId": {"Ref": "AWS::IoT::Certificate::Id"}}
})json";

ProvisioningTemplate MustParseTemplate(const std::string& name, const json& j) {
  auto t = ParseProvisioningTemplate(name, j.dump());
  EXPECT_TRUE(t) << t.error().ToString();
  return t ? *t : ProvisioningTemplate{};
}

sh::EvpPkeyPtr NewKey(KeyType type = KeyType::kEcP256) {
  auto key = sh::GenerateKeyPair(type);
  EXPECT_TRUE(key) << key.error().ToString();
  return key ? std::move(*key) : nullptr;
}

std::string CsrPem(EVP_PKEY* key, const std::string& cn) {
  sh::CsrRequest req;
  req.common_name = cn;
  auto csr = sh::BuildCsr(key, req);
  EXPECT_TRUE(csr) << csr.error().ToString();
  return csr ? sh::CsrToPem(csr->get()) : std::string();
}

std::string CsrPayload(const std::string& csr_pem) {
  auto p = sh::Encode(sh::CreateCertificateFromCsrRequest{csr_pem});
  EXPECT_TRUE(p) << p.error().ToString();
  return p ? *p : std::string();
}

sh::ProvisioningTopic CertfleetTopic(sh::Operation op, const std::string& client = kClient,
                                     const std::string& claim = kClaim, const std::string& tmpl = kTemplate) {
  sh::ProvisioningTopic t;
  t.dialect = sh::Dialect::kCertfleet;
  t.operation = op;
  t.client_id = client;
  t.claim_subject = claim;
  if (op == sh::Operation::kRegisterThing) t.template_name = tmpl;
  return t;
}

std::string TopicString(const sh::ProvisioningTopic& t) {
  auto s = sh::RequestTopic(t);
  EXPECT_TRUE(s) << s.error().ToString();
  return s ? *s : std::string();
}

sh::MqttMessage Message(const std::string& topic, const std::string& payload) {
  sh::MqttMessage m;
  m.topic = topic;
  m.payload = payload;
  return m;
}

class ProvisioningServiceTest : public TestCompanion {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(InitState());
    template_json_ = json::parse(kTemplateJson);
    options_.templates[kTemplate] = MustParseTemplate(kTemplate, template_json_);
  }

  void TearDown() override {
    // Ownership tokens are secrets: never in a log line or a security event.
    service_.reset();
    if (!state_) return;
    auto events = state_->registry->ListSecurityEvents(100000);
    ASSERT_TRUE(events);
    for (const auto& token : tokens_) {
      ASSERT_FALSE(token.empty());
      EXPECT_FALSE(log_.Contains(token));
      for (const auto& rec : log_.records()) EXPECT_EQ(rec.line.find(token), std::string::npos) << rec.line;
      for (const auto& ev : *events) {
        EXPECT_EQ(ev.subject.find(token), std::string::npos) << ev.subject;
        EXPECT_EQ(ev.detail.find(token), std::string::npos) << ev.detail;
      }
    }
  }

  // The service is built on first use, so a test may change options_ before.
  ProvisioningService& Service() {
    if (!service_) service_ = std::make_unique<ProvisioningService>(*state_, options_, hooks_, clock_, log_);
    return *service_;
  }
  std::optional<ProvisioningReply> Handle(const std::string& topic, const std::string& payload) {
    return Service().Handle(Message(topic, payload));
  }

  // CreateCertificateFromCsr that must be accepted; remembers the token.
  sh::CreateCertificateFromCsrAccepted CreateFromCsr(EVP_PKEY* key, const std::string& cn,
                                                     const std::string& client = kClient,
                                                     const std::string& claim = kClaim) {
    std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr, client, claim));
    auto reply = Handle(topic, CsrPayload(CsrPem(key, cn)));
    EXPECT_TRUE(reply);
    if (!reply) return {};
    EXPECT_EQ(reply->topic, topic + "/accepted") << reply->payload;
    auto accepted = sh::DecodeCreateCertificateFromCsrAccepted(reply->payload);
    EXPECT_TRUE(accepted) << accepted.error().ToString() << ": " << reply->payload;
    if (!accepted) return {};
    tokens_.push_back(accepted->certificate_ownership_token);
    return *accepted;
  }

  std::string RegisterPayload(const std::string& token, const Params& params) {
    auto p = sh::Encode(sh::RegisterThingRequest{token, params});
    EXPECT_TRUE(p) << p.error().ToString();
    return p ? *p : std::string();
  }

  std::optional<ProvisioningReply> Register(const std::string& token, const Params& params,
                                            const std::string& client = kClient, const std::string& claim = kClaim,
                                            const std::string& tmpl = kTemplate) {
    return Handle(TopicString(CertfleetTopic(sh::Operation::kRegisterThing, client, claim, tmpl)),
                  RegisterPayload(token, params));
  }

  sh::RegisterThingAccepted ExpectRegistered(const std::optional<ProvisioningReply>& reply,
                                             const std::string& client = kClient, const std::string& claim = kClaim,
                                             const std::string& tmpl = kTemplate) {
    EXPECT_TRUE(reply);
    if (!reply) return {};
    EXPECT_EQ(reply->topic, TopicString(CertfleetTopic(sh::Operation::kRegisterThing, client, claim, tmpl)) +
                                "/accepted")
        << reply->payload;
    auto accepted = sh::DecodeRegisterThingAccepted(reply->payload);
    EXPECT_TRUE(accepted) << accepted.error().ToString() << ": " << reply->payload;
    return accepted ? *accepted : sh::RegisterThingAccepted{};
  }

  // A rejection of the request on `request_topic`: reply on "/rejected", the code, one new
  // security event of that kind.
  void ExpectRejected(const std::optional<ProvisioningReply>& reply, const std::string& request_topic,
                      const sh::RejectionCode& code, size_t events_before) {
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->topic, request_topic + "/rejected") << reply->payload;
    auto r = sh::DecodeRejection(reply->payload);
    ASSERT_TRUE(r) << r.error().ToString() << ": " << reply->payload;
    EXPECT_EQ(r->error_code, code.error_code) << r->error_message;
    EXPECT_EQ(r->status_code, code.status_code) << r->error_message;
    EXPECT_FALSE(r->error_message.empty());
    auto events = Events();
    ASSERT_EQ(events.size(), events_before + 1);
    bool found = false;
    for (const auto& e : events) found = found || e.kind == code.error_code;
    EXPECT_TRUE(found) << "no security event " << code.error_code;
  }
  void ExpectRegisterRejected(const std::optional<ProvisioningReply>& reply, const sh::RejectionCode& code,
                              size_t events_before, const std::string& client = kClient,
                              const std::string& claim = kClaim, const std::string& tmpl = kTemplate) {
    ExpectRejected(reply, TopicString(CertfleetTopic(sh::Operation::kRegisterThing, client, claim, tmpl)), code,
                   events_before);
  }

  std::vector<SecurityEvent> Events() {
    auto events = state_->registry->ListSecurityEvents(100000);
    EXPECT_TRUE(events) << events.error().ToString();
    return events ? *events : std::vector<SecurityEvent>{};
  }
  size_t CountCerts() {
    auto all = state_->registry->ListCerts("", 100000);
    EXPECT_TRUE(all) << all.error().ToString();
    return all ? all->size() : 0;
  }
  std::vector<ThingRecord> Things() {
    auto things = state_->registry->ListThings(100000);
    EXPECT_TRUE(things) << things.error().ToString();
    return things ? *things : std::vector<ThingRecord>{};
  }
  // Pending certificates, read straight from the SQLite file (the interface has no listing).
  int CountPending() {
    sqlite3* db = nullptr;
    int n = -1;
    if (sqlite3_open_v2(state_->config.registry_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_busy_timeout(db, 5000);
      sqlite3_stmt* q = nullptr;
      if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pending_certificates", -1, &q, nullptr) == SQLITE_OK &&
          sqlite3_step(q) == SQLITE_ROW) {
        n = sqlite3_column_int(q, 0);
      }
      sqlite3_finalize(q);
    }
    sqlite3_close(db);
    EXPECT_GE(n, 0) << "cannot read pending_certificates";
    return n;
  }

  // Provisions "gw-<serial>" with a new key; returns the certificate id.
  std::string Provision(const std::string& serial, const std::string& client = kClient) {
    auto key = NewKey();
    auto created = CreateFromCsr(key.get(), "gw-" + serial, client);
    auto registered =
        ExpectRegistered(Register(created.certificate_ownership_token, {{"SerialNumber", serial}}, client), client);
    EXPECT_EQ(registered.thing_name, "gw-" + serial);
    return created.certificate_id;
  }

  void UseTemplate(const json& j) { options_.templates[kTemplate] = MustParseTemplate(kTemplate, j); }

  // A /bin/sh pre-provision hook with `body`, timeout `timeout`.
  void UsePreProvisionHook(const std::string& body, milliseconds timeout = milliseconds(5000)) {
    std::string path = dir_.path() + "/pre-provision-hook";
    ASSERT_TRUE(fs_.WriteFileAtomic(path, "#!/bin/sh\n" + body + "\n", 0755).ok());
    HookConfig c;
    c.command = {path};
    c.timeout = timeout;
    auto spec = ParseHookSpec(c);
    ASSERT_TRUE(spec) << spec.error().ToString();
    options_.pre_provision_hook = *spec;
  }

  HookRunner hooks_{log_, clock_};
  json template_json_;
  ProvisioningOptions options_;
  std::unique_ptr<ProvisioningService> service_;
  std::vector<std::string> tokens_;
};

// ---- CreateCertificateFromCsr and RegisterThing, accepted ----

TEST_F(ProvisioningServiceTest, CreateCertificateFromCsrIssuesAPendingCertificate) {
  auto key = NewKey();
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  EXPECT_EQ(topic, "certfleet/provisioning/claim-batch-7/dev-0001/certificates/create-from-csr/json");
  auto reply = Handle(topic, CsrPayload(CsrPem(key.get(), "gw-SN0001")));
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->topic, topic + "/accepted");
  auto accepted = sh::DecodeCreateCertificateFromCsrAccepted(reply->payload);
  ASSERT_TRUE(accepted) << accepted.error().ToString() << ": " << reply->payload;
  tokens_.push_back(accepted->certificate_ownership_token);

  auto cert = sh::CertFromPem(accepted->certificate_pem);
  ASSERT_TRUE(cert) << cert.error().ToString();
  EXPECT_EQ(accepted->certificate_id, sh::Sha256Hex(sh::CertToDer(cert->get())));
  EXPECT_EQ(accepted->certificate_id.size(), 64u);
  EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(cert->get())), "gw-SN0001");
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert->get()), key.get()));
  Status verified = VerifyToRoot(cert->get(), clock_.Now());
  EXPECT_TRUE(verified.ok()) << verified.ToString();
  EXPECT_GE(accepted->certificate_ownership_token.size(), 32u);

  // Pending only: no certificate in the registry yet, no thing, no security event.
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_EQ(CountPending(), 1);
  EXPECT_TRUE(Things().empty());
  EXPECT_TRUE(Events().empty());
}

TEST_F(ProvisioningServiceTest, RegisterThingActivatesTheCertificateOnce) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}});
  auto registered = ExpectRegistered(reply);
  EXPECT_EQ(registered.thing_name, "gw-SN0001");
  EXPECT_EQ(registered.device_configuration,
            (sh::StringMap{{"model", "gw-100"}, {"certificateId", created.certificate_id}}));

  auto things = Things();
  ASSERT_EQ(things.size(), 1u);
  EXPECT_EQ(things[0].name, "gw-SN0001");
  ASSERT_TRUE(things[0].current_cert_id);
  EXPECT_EQ(*things[0].current_cert_id, created.certificate_id);
  auto rec = state_->registry->FindCert(created.certificate_id);
  ASSERT_TRUE(rec && *rec);
  EXPECT_EQ((*rec)->thing_name, "gw-SN0001");
  EXPECT_EQ((*rec)->status, CertStatus::kActive);
  // The reply is the certificate followed by the issuing CA (not the root); the registry
  // keeps the certificate alone.
  auto chain = sh::CertsFromPem(created.certificate_pem);
  ASSERT_TRUE(chain);
  ASSERT_EQ(chain->size(), 2u);
  EXPECT_EQ((*rec)->pem, sh::CertToPem((*chain)[0].get()));
  EXPECT_EQ(X509_cmp((*chain)[1].get(), state_->issuer->cert()), 0);
  EXPECT_EQ(CountCerts(), 1u);
  EXPECT_EQ(CountPending(), 0);
  EXPECT_TRUE(Events().empty());

  // The token works once.
  auto again = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}});
  ExpectRegisterRejected(again, sh::kInvalidCertificateOwnershipToken, 0);
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(ProvisioningServiceTest, ExpiredOwnershipTokenIsRejected) {
  options_.ownership_token_ttl = seconds(600);
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  clock_.Advance(seconds(601));
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}});
  ExpectRegisterRejected(reply, sh::kInvalidCertificateOwnershipToken, 0);
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_TRUE(Things().empty());
}

TEST_F(ProvisioningServiceTest, OwnershipTokenJustBeforeExpiryWorks) {
  options_.ownership_token_ttl = seconds(600);
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  clock_.Advance(seconds(599));
  ExpectRegistered(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}));
}

TEST_F(ProvisioningServiceTest, UnknownOwnershipTokenIsRejected) {
  auto reply = Register("not-a-token-anyone-was-given", {{"SerialNumber", "SN0001"}});
  ExpectRegisterRejected(reply, sh::kInvalidCertificateOwnershipToken, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, TokenOfAnotherClientIdIsRejectedAndStaysUsable) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}, "dev-0002");
  ExpectRegisterRejected(reply, sh::kInvalidCertificateOwnershipToken, 0, "dev-0002");
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_EQ(CountPending(), 1);
  // The rightful client still can.
  ExpectRegistered(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}));
}

TEST_F(ProvisioningServiceTest, TokenOfAnotherClaimSubjectIsRejected) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}, kClient, "claim-batch-8");
  ExpectRegisterRejected(reply, sh::kInvalidCertificateOwnershipToken, 0, kClient, "claim-batch-8");
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_EQ(CountPending(), 1);
}

TEST_F(ProvisioningServiceTest, CommonNameDifferentFromTheTemplatesThingNameIsRejected) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0002"}});
  ExpectRegisterRejected(reply, sh::kInvalidParameters, 0);
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_TRUE(Things().empty());
}

TEST_F(ProvisioningServiceTest, MissingRequiredParameterIsRejected) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {});
  ExpectRegisterRejected(reply, sh::kInvalidParameters, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, DeviceMaySupplyNoCertificateDerivedParameter) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token,
                        {{"SerialNumber", "SN0001"}, {"AWS::IoT::Certificate::Id", std::string(64, 'a')}});
  ExpectRegisterRejected(reply, sh::kInvalidParameters, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, UnknownTemplateIsRejected) {
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}, kClient, kClaim, "nope");
  ExpectRegisterRejected(reply, sh::kTemplateNotFound, 0, kClient, kClaim, "nope");
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_EQ(CountPending(), 1);
}

TEST_F(ProvisioningServiceTest, ClaimSubjectNotAllowedByTheTemplateIsRejected) {
  json j = template_json_;
  j["certfleet"]["claimSubjects"] = {"factory-*"};
  UseTemplate(j);
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}});
  ExpectRegisterRejected(reply, sh::kAccessDenied, 0);
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_TRUE(Things().empty());

  // A claim subject that the glob matches may.
  auto key2 = NewKey();
  auto created2 = CreateFromCsr(key2.get(), "gw-SN0002", kClient, "factory-7");
  ExpectRegistered(Register(created2.certificate_ownership_token, {{"SerialNumber", "SN0002"}}, kClient, "factory-7"),
                   kClient, "factory-7");
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(ProvisioningServiceTest, AlreadyProvisionedThingIsRejected) {
  std::string first = Provision("SN0001");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001", "dev-0002");
  auto reply = Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}, "dev-0002");
  ExpectRegisterRejected(reply, sh::kThingAlreadyProvisioned, 0, "dev-0002");
  EXPECT_EQ(CountCerts(), 1u);
  auto things = Things();
  ASSERT_EQ(things.size(), 1u);
  ASSERT_TRUE(things[0].current_cert_id);
  EXPECT_EQ(*things[0].current_cert_id, first);
  auto rec = state_->registry->FindCert(first);
  ASSERT_TRUE(rec && *rec);
  EXPECT_FALSE((*rec)->superseded_by);
}

TEST_F(ProvisioningServiceTest, RegisterThingRetriedWithTheSameKeyReplacesTheLostCertificate) {
  // The device was provisioned, then lost the answer (a crash before it stored it) and
  // asks again with the same key: the new certificate replaces the one it never received.
  auto key = NewKey();
  auto first = CreateFromCsr(key.get(), "gw-SN0001", kClient);
  ExpectRegistered(Register(first.certificate_ownership_token, {{"SerialNumber", "SN0001"}}), kClient);
  auto second = CreateFromCsr(key.get(), "gw-SN0001", kClient);
  ExpectRegistered(Register(second.certificate_ownership_token, {{"SerialNumber", "SN0001"}}), kClient);
  EXPECT_EQ(CountCerts(), 2u);
  auto things = Things();
  ASSERT_EQ(things.size(), 1u);
  ASSERT_TRUE(things[0].current_cert_id);
  EXPECT_EQ(*things[0].current_cert_id, second.certificate_id);
  auto old = state_->registry->FindCert(first.certificate_id);
  ASSERT_TRUE(old && *old);
  ASSERT_TRUE((*old)->superseded_by);
  EXPECT_EQ(*(*old)->superseded_by, second.certificate_id);
}

TEST_F(ProvisioningServiceTest, ReprovisioningAllowedByTheTemplateSupersedesTheOldCertificate) {
  json j = template_json_;
  j["certfleet"]["allowReprovisioning"] = true;
  UseTemplate(j);
  std::string first = Provision("SN0001");
  std::string second = Provision("SN0001", "dev-0002");
  ASSERT_NE(first, second);
  EXPECT_EQ(CountCerts(), 2u);
  auto things = Things();
  ASSERT_EQ(things.size(), 1u);
  ASSERT_TRUE(things[0].current_cert_id);
  EXPECT_EQ(*things[0].current_cert_id, second);
  auto old = state_->registry->FindCert(first);
  ASSERT_TRUE(old && *old);
  ASSERT_TRUE((*old)->superseded_by);
  EXPECT_EQ(*(*old)->superseded_by, second);
  EXPECT_TRUE(Events().empty());
}

TEST_F(ProvisioningServiceTest, AQuarantinedThingCannotReprovision) {
  json j = template_json_;
  j["certfleet"]["allowReprovisioning"] = true;
  UseTemplate(j);
  std::string first = Provision("SN0001");
  ASSERT_TRUE(state_->registry->SetQuarantine("gw-SN0001", std::string("audit finding"), "test", clock_.Now()).ok());
  const size_t events = Events().size();
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001", "dev-0002");
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}, "dev-0002"),
                         sh::kAccessDenied, events, "dev-0002");
  EXPECT_EQ(CountCerts(), 1u);
  EXPECT_EQ(*Things()[0].current_cert_id, first);
}

// ---- Malformed requests ----

TEST_F(ProvisioningServiceTest, MalformedJsonIsInvalidPayload) {
  const std::string csr_topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  ExpectRejected(Handle(csr_topic, "{\"certificateSigningRequest\": "), csr_topic, sh::kInvalidPayload, 0);
  ExpectRejected(Handle(csr_topic, "[]"), csr_topic, sh::kInvalidPayload, 1);
  ExpectRejected(Handle(csr_topic, "{}"), csr_topic, sh::kInvalidPayload, 2);
  const std::string reg_topic = TopicString(CertfleetTopic(sh::Operation::kRegisterThing));
  ExpectRejected(Handle(reg_topic, "not json"), reg_topic, sh::kInvalidPayload, 3);
  ExpectRejected(Handle(reg_topic, R"({"certificateOwnershipToken": 7})"), reg_topic, sh::kInvalidPayload, 4);
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_EQ(CountPending(), 0);
}

TEST_F(ProvisioningServiceTest, CsrThatIsNotPemIsInvalidCsr) {
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  ExpectRejected(Handle(topic, CsrPayload("hello, I am a certificate request")), topic, sh::kInvalidCsr, 0);
  auto key = NewKey();
  sh::CsrRequest req;
  req.common_name = "gw-SN0001";
  auto csr = sh::BuildCsr(key.get(), req);
  ASSERT_TRUE(csr);
  // DER where PEM is expected.
  ExpectRejected(Handle(topic, CsrPayload(sh::Base64Encode(sh::CsrToDer(csr->get())))), topic, sh::kInvalidCsr, 1);
  EXPECT_EQ(CountPending(), 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, CsrWithABadSignatureIsInvalidCsr) {
  auto key = NewKey();
  sh::CsrRequest req;
  req.common_name = "gw-SN0001";
  auto csr = sh::BuildCsr(key.get(), req);
  ASSERT_TRUE(csr);
  std::string der = sh::CsrToDer(csr->get());
  der.back() = static_cast<char>(der.back() ^ 0x01);  // the last byte of the ECDSA signature's s
  auto tampered = sh::CsrFromDer(der);
  ASSERT_TRUE(tampered) << tampered.error().ToString();
  ASSERT_FALSE(sh::VerifyCsrSignature(tampered->get()).ok());

  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  ExpectRejected(Handle(topic, CsrPayload(sh::CsrToPem(tampered->get()))), topic, sh::kInvalidCsr, 0);
  EXPECT_EQ(CountPending(), 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, WeakRsaKeyIsInvalidCsr) {
  sh::EvpPkeyPtr weak(EVP_RSA_gen(1024));
  ASSERT_TRUE(weak);
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  ExpectRejected(Handle(topic, CsrPayload(CsrPem(weak.get(), "gw-SN0001"))), topic, sh::kInvalidCsr, 0);
  EXPECT_EQ(CountPending(), 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, CsrCommonNameThatIsNoThingNameIsInvalidCsr) {
  auto key = NewKey();
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  // The companion's own identities are not thing names.
  ExpectRejected(Handle(topic, CsrPayload(CsrPem(key.get(), "certfleet-companion"))), topic, sh::kInvalidCsr, 0);
  ExpectRejected(Handle(topic, CsrPayload(CsrPem(key.get(), "gw 1"))), topic, sh::kInvalidCsr, 1);
  EXPECT_EQ(CountPending(), 0);
}

// ---- CreateKeysAndCertificate ----

TEST_F(ProvisioningServiceTest, CreateKeysAndCertificateIsDisabledByDefault) {
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateKeysAndCertificate, "gw-SN0009"));
  EXPECT_EQ(topic, "certfleet/provisioning/claim-batch-7/gw-SN0009/certificates/create/json");
  auto reply = Handle(topic, "{}");
  ExpectRejected(reply, topic, sh::kNotAllowed, 0);
  auto r = sh::DecodeRejection(reply->payload);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error_code, "CreateKeysAndCertificateNotAllowed");
  EXPECT_EQ(r->status_code, 403);
  EXPECT_EQ(CountPending(), 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, CreateKeysAndCertificateWhenEnabledReturnsAMatchingKey) {
  options_.allow_create_keys = true;
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateKeysAndCertificate, "gw-SN0009"));
  auto reply = Handle(topic, "");
  ASSERT_TRUE(reply);
  ASSERT_EQ(reply->topic, topic + "/accepted") << reply->payload;
  auto accepted = sh::DecodeCreateKeysAndCertificateAccepted(reply->payload);
  ASSERT_TRUE(accepted) << accepted.error().ToString();
  tokens_.push_back(accepted->certificate_ownership_token);
  auto cert = sh::CertFromPem(accepted->certificate_pem);
  ASSERT_TRUE(cert);
  auto key = sh::PrivateKeyFromPem(accepted->private_key);
  ASSERT_TRUE(key) << key.error().ToString();
  EXPECT_TRUE(sh::SamePublicKey(key->get(), X509_get0_pubkey(cert->get())));
  EXPECT_EQ(accepted->certificate_id, sh::Sha256Hex(sh::CertToDer(cert->get())));
  EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(cert->get())), "gw-SN0009");
  EXPECT_TRUE(VerifyToRoot(cert->get(), clock_.Now()).ok());
  // The private key is never logged.
  auto b64_line = accepted->private_key.substr(accepted->private_key.find('\n') + 1, 40);
  EXPECT_FALSE(log_.Contains(b64_line));

  // And it registers like any other.
  auto registered = ExpectRegistered(
      Register(accepted->certificate_ownership_token, {{"SerialNumber", "SN0009"}}, "gw-SN0009"), "gw-SN0009");
  EXPECT_EQ(registered.thing_name, "gw-SN0009");
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(ProvisioningServiceTest, CreateKeysAndCertificateNeedsAThingNameAsClientId) {
  options_.allow_create_keys = true;
  const std::string topic = TopicString(CertfleetTopic(sh::Operation::kCreateKeysAndCertificate, "certfleet-x"));
  ExpectRejected(Handle(topic, "{}"), topic, sh::kInvalidParameters, 0);
  EXPECT_EQ(CountPending(), 0);
}

// ---- Topics and dialects ----

TEST_F(ProvisioningServiceTest, TopicsThatAreNoRequestsAreIgnored) {
  const std::string csr_topic = TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr));
  EXPECT_FALSE(Handle(csr_topic + "/accepted", "{}"));
  EXPECT_FALSE(Handle(csr_topic + "/rejected", "{}"));
  EXPECT_FALSE(Handle("certfleet/things/gw-1/rotation/request", "{}"));
  EXPECT_FALSE(Handle("certfleet/provisioning/+/dev/certificates/create-from-csr/json", "{}"));
  EXPECT_FALSE(Handle("certfleet/provisioning/a/b/certificates/create-from-csr/cbor", "{}"));
  EXPECT_FALSE(Handle("", ""));
  EXPECT_TRUE(Events().empty());
}

TEST_F(ProvisioningServiceTest, CertfleetDialectIgnoresAwsTopics) {
  auto key = NewKey();
  EXPECT_FALSE(Handle("$aws/certificates/create-from-csr/json", CsrPayload(CsrPem(key.get(), "gw-SN0001"))));
  EXPECT_FALSE(Handle("$aws/certificates/create/json", "{}"));
  EXPECT_FALSE(Handle("$aws/provisioning-templates/gateways/provision/json", "{}"));
  EXPECT_EQ(CountPending(), 0);
}

TEST_F(ProvisioningServiceTest, AwsDialectServesAwsTopicsAndIgnoresCertfleetTopics) {
  options_.dialect = sh::Dialect::kAws;
  auto key = NewKey();
  EXPECT_FALSE(Handle(TopicString(CertfleetTopic(sh::Operation::kCreateCertificateFromCsr)),
                      CsrPayload(CsrPem(key.get(), "gw-SN0001"))));
  EXPECT_EQ(CountPending(), 0);

  const std::string csr_topic = "$aws/certificates/create-from-csr/json";
  auto reply = Handle(csr_topic, CsrPayload(CsrPem(key.get(), "gw-SN0001")));
  ASSERT_TRUE(reply);
  ASSERT_EQ(reply->topic, csr_topic + "/accepted") << reply->payload;
  auto created = sh::DecodeCreateCertificateFromCsrAccepted(reply->payload);
  ASSERT_TRUE(created);
  tokens_.push_back(created->certificate_ownership_token);

  const std::string reg_topic = "$aws/provisioning-templates/gateways/provision/json";
  auto reg = Handle(reg_topic, RegisterPayload(created->certificate_ownership_token, {{"SerialNumber", "SN0001"}}));
  ASSERT_TRUE(reg);
  EXPECT_EQ(reg->topic, reg_topic + "/accepted") << reg->payload;
  auto registered = sh::DecodeRegisterThingAccepted(reg->payload);
  ASSERT_TRUE(registered);
  EXPECT_EQ(registered->thing_name, "gw-SN0001");

  const std::string unknown = "$aws/provisioning-templates/nope/provision/json";
  ExpectRejected(Handle(unknown, RegisterPayload("x", {})), unknown, sh::kTemplateNotFound, 0);
}

TEST_F(ProvisioningServiceTest, AwsDialectClosesTemplatesRestrictedToClaimSubjects) {
  // AWS topics carry no claim subject: a restricted template must fail closed.
  options_.dialect = sh::Dialect::kAws;
  json j = template_json_;
  j["certfleet"]["claimSubjects"] = {"factory-*"};
  UseTemplate(j);
  auto key = NewKey();
  const std::string csr_topic = "$aws/certificates/create-from-csr/json";
  auto reply = Handle(csr_topic, CsrPayload(CsrPem(key.get(), "gw-SN0001")));
  ASSERT_TRUE(reply);
  auto created = sh::DecodeCreateCertificateFromCsrAccepted(reply->payload);
  ASSERT_TRUE(created) << reply->payload;
  tokens_.push_back(created->certificate_ownership_token);
  const std::string reg_topic = "$aws/provisioning-templates/gateways/provision/json";
  ExpectRejected(Handle(reg_topic, RegisterPayload(created->certificate_ownership_token, {{"SerialNumber", "SN0001"}})),
                 reg_topic, sh::kAccessDenied, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, HookDoesNotRunForANameMismatch) {
  const std::string marker = dir_.path() + "/hook-ran";
  UsePreProvisionHook("touch '" + marker + "'\necho '{\"allowProvisioning\": true}'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0002"}}),
                         sh::kInvalidParameters, 0);
  EXPECT_FALSE(fs_.Exists(marker));
}

// ---- The pre-provisioning hook ----

TEST_F(ProvisioningServiceTest, PreProvisionHookThatAllows) {
  const std::string input = dir_.path() + "/hook-input.json";
  UsePreProvisionHook("cat > '" + input + "'\necho '{\"allowProvisioning\": true}'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto registered = ExpectRegistered(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}));
  EXPECT_EQ(registered.thing_name, "gw-SN0001");
  EXPECT_EQ(CountCerts(), 1u);

  // What the hook saw: the request's facts, never the ownership token.
  auto text = fs_.ReadFile(input, 1 << 20);
  ASSERT_TRUE(text) << text.error().ToString();
  EXPECT_EQ(text->find(created.certificate_ownership_token), std::string::npos);
  json in = json::parse(*text, nullptr, false);
  ASSERT_TRUE(in.is_object()) << *text;
  EXPECT_EQ(in.value("certificateId", ""), created.certificate_id);
  EXPECT_EQ(in.value("clientId", ""), kClient);
  EXPECT_EQ(in.value("claimSubject", ""), kClaim);
  EXPECT_EQ(in["parameters"].value("SerialNumber", ""), "SN0001");
}

TEST_F(ProvisioningServiceTest, ProofOfThePreviousIdentityIsVerifiedAndGivenToTheHook) {
  json j = template_json_;
  j["certfleet"]["allowReprovisioning"] = true;
  UseTemplate(j);
  const std::string input = dir_.path() + "/hook-input.json";
  UsePreProvisionHook("cat > '" + input + "'\necho '{\"allowProvisioning\": true}'");
  auto old_key = NewKey();
  auto first = CreateFromCsr(old_key.get(), "gw-SN0001");
  ExpectRegistered(Register(first.certificate_ownership_token, {{"SerialNumber", "SN0001"}}));
  auto hook_input = [&]() {
    auto text = fs_.ReadFile(input, 1 << 20);
    EXPECT_TRUE(text);
    return text ? json::parse(*text, nullptr, false) : json();
  };
  auto proof = [&](EVP_PKEY* key, const std::string& new_id) {
    auto sig = sh::SignSha256(key, sh::PreviousCertificateProofText(new_id));
    EXPECT_TRUE(sig);
    return sig ? sh::Base64EncodeLine(*sig) : std::string();
  };

  // Signed with the old key over the new certificate's id: verified. The proof
  // parameters are not template parameters (the template would refuse unknown ones).
  auto new_key = NewKey();
  auto second = CreateFromCsr(new_key.get(), "gw-SN0001");
  ExpectRegistered(Register(second.certificate_ownership_token,
                            {{"SerialNumber", "SN0001"},
                             {sh::kPreviousCertificateIdParameter, first.certificate_id},
                             {sh::kPreviousCertificateSignatureParameter, proof(old_key.get(), second.certificate_id)}}));
  json in = hook_input();
  EXPECT_EQ(in.value("previousCertificateId", ""), first.certificate_id);
  EXPECT_EQ(in.value("previousCertificateVerified", false), true) << in.dump();
  EXPECT_FALSE(in["parameters"].contains(sh::kPreviousCertificateIdParameter));
  EXPECT_TRUE(log_.Contains("previous certificate proof"));

  // Signed by another key, or over another certificate: not verified; the hook decides.
  auto third = CreateFromCsr(NewKey().get(), "gw-SN0001");
  ExpectRegistered(Register(third.certificate_ownership_token,
                            {{"SerialNumber", "SN0001"},
                             {sh::kPreviousCertificateIdParameter, second.certificate_id},
                             {sh::kPreviousCertificateSignatureParameter, proof(old_key.get(), third.certificate_id)}}));
  in = hook_input();
  EXPECT_EQ(in.value("previousCertificateVerified", true), false);
  EXPECT_NE(in.value("previousCertificateError", "").find("does not verify"), std::string::npos) << in.dump();

  // A certificate of another thing is not a proof for this one.
  auto other_key = NewKey();
  auto other = CreateFromCsr(other_key.get(), "gw-SN0002");
  ExpectRegistered(Register(other.certificate_ownership_token, {{"SerialNumber", "SN0002"}}));
  auto fourth = CreateFromCsr(NewKey().get(), "gw-SN0001");
  ExpectRegistered(Register(fourth.certificate_ownership_token,
                            {{"SerialNumber", "SN0001"},
                             {sh::kPreviousCertificateIdParameter, other.certificate_id},
                             {sh::kPreviousCertificateSignatureParameter, proof(other_key.get(), fourth.certificate_id)}}));
  in = hook_input();
  EXPECT_EQ(in.value("previousCertificateVerified", true), false);
  EXPECT_NE(in.value("previousCertificateError", "").find("another thing"), std::string::npos) << in.dump();
}

TEST_F(ProvisioningServiceTest, PreProvisionHookThatDenies) {
  UsePreProvisionHook("cat >/dev/null\necho '{\"allowProvisioning\": false}'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}),
                         sh::kAccessDenied, 0);
  EXPECT_EQ(CountCerts(), 0u);
  EXPECT_TRUE(Things().empty());
}

TEST_F(ProvisioningServiceTest, PreProvisionHookThatTimesOutDenies) {
  UsePreProvisionHook("cat >/dev/null\nexec sleep 30", milliseconds(200));
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto started = std::chrono::steady_clock::now();
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}),
                         sh::kAccessDenied, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - started, seconds(10));
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, PreProvisionHookThatAnswersGarbageDenies) {
  UsePreProvisionHook("cat >/dev/null\necho 'allow, I guess'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}),
                         sh::kAccessDenied, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, PreProvisionHookParameterOverridesApply) {
  UsePreProvisionHook(
      "cat >/dev/null\necho '{\"allowProvisioning\": true, \"parameterOverrides\": {\"Model\": \"gw-900\"}}'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  auto registered = ExpectRegistered(
      Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}, {"Model", "gw-200"}}));
  EXPECT_EQ(registered.device_configuration.at("model"), "gw-900");
  EXPECT_EQ(CountCerts(), 1u);
}

TEST_F(ProvisioningServiceTest, PreProvisionHookOverrideOfTheThingNameMustStillMatchTheCertificate) {
  UsePreProvisionHook(
      "cat >/dev/null\necho '{\"allowProvisioning\": true, \"parameterOverrides\": {\"SerialNumber\": \"SN0002\"}}'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}),
                         sh::kInvalidParameters, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

TEST_F(ProvisioningServiceTest, PreProvisionHookMayNotOverrideACertificateDerivedParameter) {
  UsePreProvisionHook(
      "cat >/dev/null\necho '{\"allowProvisioning\": true, \"parameterOverrides\": "
      "{\"AWS::IoT::Certificate::Id\": \"" +
      std::string(64, 'a') + "\"}}'");
  auto key = NewKey();
  auto created = CreateFromCsr(key.get(), "gw-SN0001");
  ExpectRegisterRejected(Register(created.certificate_ownership_token, {{"SerialNumber", "SN0001"}}),
                         sh::kInvalidParameters, 0);
  EXPECT_EQ(CountCerts(), 0u);
}

}  // namespace
}  // namespace certfleet::companion
