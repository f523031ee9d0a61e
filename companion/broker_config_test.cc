#include "companion/broker_config.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "companion/broker_plugin/claim_policy.h"
#include "companion/ca.h"
#include "companion/config.h"
#include "companion/init.h"
#include "companion/registry.h"
#include "companion/testing/test_companion.h"
#include "hal/memory_keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"

namespace certfleet::companion {
namespace {

namespace sh = shared;
using shared::Code;
using std::chrono::hours;

// The lines of `text` between the line starting with `from` (inclusive) and the next
// line starting with `until` (exclusive) or the end.
std::string Section(const std::string& text, const std::string& from, const std::string& until) {
  size_t start = text.find(from);
  if (start == std::string::npos) return "";
  size_t end = text.find(until, start + from.size());
  return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

bool HasLine(const std::string& text, const std::string& line) {
  size_t pos = 0;
  while ((pos = text.find(line, pos)) != std::string::npos) {
    bool starts = pos == 0 || text[pos - 1] == '\n';
    bool ends = pos + line.size() == text.size() || text[pos + line.size()] == '\n';
    if (starts && ends) return true;
    pos += line.size();
  }
  return false;
}

class BrokerConfigTest : public TestCompanion {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(InitState(log_));
    MakeClaimCa();
    options_.out_dir = dir_.path() + "/broker";
    options_.things_port = 18883;
    options_.claim_port = 18884;
  }

  // A claim CA (its own key store) as the bootstrap trust file.
  void MakeClaimCa() {
    claim_ca_ = MakeTestCa("claim CA", clock_.Now(), hours(24 * 365));
    ASSERT_TRUE(claim_ca_);
    claim_ca_pem_ = sh::CertToPem(claim_ca_->cert());
    ASSERT_NO_FATAL_FAILURE(WriteClaimTrust(claim_ca_pem_));
  }

  Status Write() { return WriteBrokerConfig(options_, *state_, fs_, clock_, log_); }
  std::string Read(const std::string& name) {
    auto text = fs_.ReadFile(options_.out_dir + "/" + name, 1 << 20);
    EXPECT_TRUE(text) << name << ": " << text.error().ToString();
    return text ? *text : std::string();
  }
  mode_t Mode(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }
  std::vector<sh::X509Ptr> Certs(const std::string& pem) {
    auto certs = sh::CertsFromPem(pem);
    EXPECT_TRUE(certs) << certs.error().ToString();
    return certs ? std::move(*certs) : std::vector<sh::X509Ptr>{};
  }
  sh::X509CrlPtr Crl() {
    std::string pem = Read("crl.pem");
    sh::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    return sh::X509CrlPtr(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  }
  // A certificate recorded in the registry as an EST enrollment would.
  std::string RecordCert(const std::string& thing) {
    auto key = sh::GenerateKeyPair(sh::KeyType::kEcP256);
    EXPECT_TRUE(key);
    CertTemplate tmpl;
    auto name = NameFromCommonName(thing);
    EXPECT_TRUE(name);
    tmpl.subject = std::move(*name);
    tmpl.public_key = key->get();
    tmpl.validity = hours(24 * 30);
    auto cert = state_->issuer->Issue(tmpl, clock_.Now());
    EXPECT_TRUE(cert) << cert.error().ToString();
    sh::CertInfo info = sh::DescribeCert(cert->get());
    IssueRecord rec;
    rec.cert.id = info.id;
    rec.cert.thing_name = thing;
    rec.cert.serial = info.serial;
    rec.cert.subject = info.subject;
    rec.cert.not_before = info.not_before;
    rec.cert.not_after = info.not_after;
    rec.cert.issued_at = clock_.Now();
    rec.cert.source = "test";
    rec.cert.pem = sh::CertToPem(cert->get());
    rec.cert.status_changed_at = clock_.Now();
    Status st = state_->registry->RecordIssued(rec, clock_.Now());
    EXPECT_TRUE(st.ok()) << st.ToString();
    return info.id;
  }

  std::unique_ptr<TestCa> claim_ca_;
  std::string claim_ca_pem_;
  BrokerConfigOptions options_;
};

TEST_F(BrokerConfigTest, MosquittoConfHasTwoListenersWithPerListenerSettings) {
  Status st = Write();
  ASSERT_TRUE(st.ok()) << st.ToString();
  const std::string conf = Read("mosquitto.conf");
  const std::string& out = options_.out_dir;
  EXPECT_TRUE(HasLine(conf, "per_listener_settings true")) << conf;
  EXPECT_LT(conf.find("per_listener_settings true"), conf.find("\nlistener "));

  std::string things = Section(conf, "listener 18883 127.0.0.1", "listener ");
  std::string claim = Section(conf, "listener 18884 127.0.0.1", "listener ");
  ASSERT_FALSE(things.empty()) << conf;
  ASSERT_FALSE(claim.empty()) << conf;
  for (const std::string* l : {&things, &claim}) {
    EXPECT_TRUE(HasLine(*l, "require_certificate true")) << *l;
    EXPECT_TRUE(HasLine(*l, "use_identity_as_username true")) << *l;
    EXPECT_TRUE(HasLine(*l, "allow_anonymous false")) << *l;
    EXPECT_TRUE(HasLine(*l, "certfile " + out + "/broker.pem")) << *l;
    EXPECT_TRUE(HasLine(*l, "keyfile " + out + "/broker.key")) << *l;
  }
  EXPECT_TRUE(HasLine(things, "cafile " + out + "/things-ca.pem")) << things;
  EXPECT_TRUE(HasLine(things, "crlfile " + out + "/crl.pem")) << things;
  EXPECT_TRUE(HasLine(things, "acl_file " + out + "/things.acl")) << things;
  EXPECT_TRUE(HasLine(claim, "cafile " + out + "/claim-ca.pem")) << claim;
  EXPECT_EQ(claim.find("crlfile"), std::string::npos) << claim;
  EXPECT_TRUE(HasLine(claim, "acl_file " + out + "/claim.acl")) << claim;
  // Exactly two listeners, exactly one CRL.
  size_t listeners = 0;
  for (size_t p = conf.find("\nlistener "); p != std::string::npos; p = conf.find("\nlistener ", p + 1)) ++listeners;
  EXPECT_EQ(listeners, 2u);
  EXPECT_EQ(conf.find("crlfile"), conf.rfind("crlfile"));

  EXPECT_EQ(Read("claim-ca.pem"), claim_ca_pem_);
  EXPECT_EQ(Read("things.acl"), ThingsAcl(state_->config.mqtt.client_id));
  EXPECT_EQ(Read("claim.acl"), ClaimAcl());
}

TEST_F(BrokerConfigTest, ListenAddressAndPortsAreAsGiven) {
  options_.listen_address = "0.0.0.0";
  options_.things_port = 9883;
  options_.claim_port = 9884;
  ASSERT_TRUE(Write().ok());
  const std::string conf = Read("mosquitto.conf");
  EXPECT_TRUE(HasLine(conf, "listener 9883 0.0.0.0")) << conf;
  EXPECT_TRUE(HasLine(conf, "listener 9884 0.0.0.0")) << conf;
}

TEST_F(BrokerConfigTest, BrokerIdentityChainsToTheRootAndNamesTheHosts) {
  options_.hostnames = {"broker.example", "localhost", "127.0.0.1"};
  ASSERT_TRUE(Write().ok());
  EXPECT_EQ(Mode(options_.out_dir + "/broker.key"), 0600u);
  EXPECT_EQ(Mode(options_.out_dir + "/broker.pem"), 0644u);

  auto chain = Certs(Read("broker.pem"));
  ASSERT_GE(chain.size(), 2u);
  auto ts = sh::TrustStore::FromCerts({state_->root.get()});
  ASSERT_TRUE(ts);
  sh::X509StackPtr untrusted(sk_X509_new_null());
  for (size_t i = 1; i < chain.size(); ++i) {
    X509_up_ref(chain[i].get());
    sk_X509_push(untrusted.get(), chain[i].get());
  }
  Status verified = ts->Verify(chain[0].get(), untrusted.get(), clock_.Now());
  EXPECT_TRUE(verified.ok()) << verified.ToString();
  EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(chain[0].get())), "broker.example");
  auto sans = sh::CertSans(chain[0].get());
  for (const char* want : {"DNS:broker.example", "DNS:localhost", "IP:127.0.0.1"}) {
    EXPECT_NE(std::find(sans.begin(), sans.end(), want), sans.end()) << want;
  }

  auto key = sh::PrivateKeyFromPem(Read("broker.key"));
  ASSERT_TRUE(key) << key.error().ToString();
  EXPECT_TRUE(sh::SamePublicKey(key->get(), X509_get0_pubkey(chain[0].get())));
  EXPECT_FALSE(log_.Contains("PRIVATE KEY"));
}

TEST_F(BrokerConfigTest, ThingsCaHoldsIssuingAndRoot) {
  ASSERT_TRUE(Write().ok());
  auto certs = Certs(Read("things-ca.pem"));
  std::vector<std::string> ids;
  for (const auto& c : certs) ids.push_back(sh::CertFingerprint(c.get()));
  EXPECT_NE(std::find(ids.begin(), ids.end(), sh::CertFingerprint(state_->issuer->cert())), ids.end());
  EXPECT_NE(std::find(ids.begin(), ids.end(), sh::CertFingerprint(state_->root.get())), ids.end());
}

TEST_F(BrokerConfigTest, CrlIsSignedByTheIssuingCaAndListsRevokedCertificates) {
  std::string keep = RecordCert("gw-1");
  std::string revoke = RecordCert("gw-2");
  clock_.Advance(std::chrono::minutes(1));
  ASSERT_TRUE(state_->registry->SetCertStatus(revoke, CertStatus::kRevoked, clock_.Now()).ok());
  ASSERT_TRUE(Write().ok());

  sh::X509CrlPtr crl = Crl();
  ASSERT_TRUE(crl) << "crl.pem does not parse";
  EXPECT_EQ(X509_CRL_verify(crl.get(), X509_get0_pubkey(state_->issuer->cert())), 1);
  EXPECT_EQ(X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(state_->issuer->cert())), 0);

  auto serial_of = [&](const std::string& id) {
    auto rec = state_->registry->FindCert(id);
    EXPECT_TRUE(rec && *rec);
    auto cert = sh::CertFromPem((*rec)->pem);
    EXPECT_TRUE(cert);
    return sh::X509Ptr(std::move(*cert));
  };
  sh::X509Ptr revoked_cert = serial_of(revoke);
  sh::X509Ptr kept_cert = serial_of(keep);
  X509_REVOKED* entry = nullptr;
  EXPECT_EQ(X509_CRL_get0_by_cert(crl.get(), &entry, revoked_cert.get()), 1);
  EXPECT_EQ(X509_CRL_get0_by_cert(crl.get(), &entry, kept_cert.get()), 0);
  EXPECT_EQ(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl.get())), 1);
}

TEST_F(BrokerConfigTest, CrlWithoutRevocationsIsEmptyButValid) {
  RecordCert("gw-1");
  ASSERT_TRUE(Write().ok());
  sh::X509CrlPtr crl = Crl();
  ASSERT_TRUE(crl);
  EXPECT_EQ(X509_CRL_verify(crl.get(), X509_get0_pubkey(state_->issuer->cert())), 1);
  // OpenSSL gives no stack (num -1) for a CRL without entries.
  EXPECT_LE(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl.get())), 0);
}

TEST_F(BrokerConfigTest, CompanionMqttIdentityKeepsItsKeyAcrossRuns) {
  ASSERT_TRUE(Write().ok());
  const std::string path = state_->config.mqtt.client_cert_file;
  ASSERT_FALSE(path.empty());
  auto first_pem = fs_.ReadFile(path, 1 << 20);
  ASSERT_TRUE(first_pem) << first_pem.error().ToString();
  auto first = Certs(*first_pem);
  ASSERT_GE(first.size(), 1u);
  EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(first[0].get())), state_->config.mqtt.client_id);
  auto ts = sh::TrustStore::FromCerts({state_->root.get()});
  ASSERT_TRUE(ts);
  sh::X509StackPtr untrusted(sk_X509_new_null());
  X509_up_ref(state_->issuer->cert());
  sk_X509_push(untrusted.get(), state_->issuer->cert());
  EXPECT_TRUE(ts->Verify(first[0].get(), untrusted.get(), clock_.Now()).ok());
  auto key = state_->keys->Load(state_->config.mqtt.client_key_slot);
  ASSERT_TRUE(key) << key.error().ToString();
  EXPECT_TRUE(sh::SamePublicKey((*key)->pkey(), X509_get0_pubkey(first[0].get())));
  const std::string broker_key = Read("broker.key");

  clock_.Advance(hours(24));
  ASSERT_TRUE(Write().ok());
  auto second_pem = fs_.ReadFile(path, 1 << 20);
  ASSERT_TRUE(second_pem);
  auto second = Certs(*second_pem);
  ASSERT_GE(second.size(), 1u);
  EXPECT_NE(sh::CertFingerprint(first[0].get()), sh::CertFingerprint(second[0].get()));
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(first[0].get()), X509_get0_pubkey(second[0].get())));
  // The generated files are replaced.
  EXPECT_EQ(Mode(options_.out_dir + "/broker.key"), 0600u);
  EXPECT_NE(Read("broker.key"), broker_key);
}

TEST_F(BrokerConfigTest, RefusedWithoutABootstrapTrustFile) {
  state_->config.est.bootstrap_trust_file.clear();
  Status st = Write();
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("bootstrap_trust_file"), std::string::npos) << st.ToString();
  struct stat sb {};
  EXPECT_NE(::stat(options_.out_dir.c_str(), &sb), 0) << "nothing is written";
}

TEST_F(BrokerConfigTest, RelativeOutDirIsRefused) {
  options_.out_dir = "broker";
  Status st = Write();
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
}

TEST_F(BrokerConfigTest, WithoutClaimRulesTheClaimListenerHasNoPlugin) {
  ASSERT_TRUE(Write().ok());
  std::string conf = Read("mosquitto.conf");
  EXPECT_EQ(conf.find("plugin"), std::string::npos) << conf;
  EXPECT_FALSE(fs_.ReadFile(options_.out_dir + "/claim-policy.json", 1 << 20));
}

TEST_F(BrokerConfigTest, ClaimRulesBecomeThePolicyAndThePluginOnTheClaimListener) {
  const std::string fp(64, 'c');
  state_->config.claims = {{"factory", ClaimTrustPath(), {}, {"gateway"}}, {"pinned", "", {fp}, {"*"}}};
  options_.claim_plugin_path = "/opt/certfleet/certfleet_mosquitto_claim.so";
  ASSERT_TRUE(Write().ok());
  std::string conf = Read("mosquitto.conf");
  std::string things = Section(conf, "listener 18883", "listener 18884");
  std::string claim = Section(conf, "listener 18884", "\nlistener ");
  EXPECT_EQ(things.find("plugin"), std::string::npos) << conf;
  EXPECT_TRUE(HasLine(claim, "plugin /opt/certfleet/certfleet_mosquitto_claim.so")) << conf;
  EXPECT_TRUE(HasLine(claim, "plugin_opt_policy_file " + options_.out_dir + "/claim-policy.json")) << conf;

  auto policy = broker_plugin::ParseClaimPolicy(Read("claim-policy.json"));
  ASSERT_TRUE(policy) << policy.error().ToString();
  ASSERT_EQ(policy->rules.size(), 2u);
  EXPECT_EQ(policy->rules[0].name, "factory");
  ASSERT_EQ(policy->rules[0].issuer_pems.size(), 1u);
  EXPECT_EQ(policy->rules[0].issuer_pems[0], claim_ca_pem_);
  EXPECT_EQ(policy->rules[0].templates, std::vector<std::string>{"gateway"});
  EXPECT_EQ(policy->rules[1].fingerprints, std::vector<std::string>{fp});
}

TEST_F(BrokerConfigTest, ClaimRuleWithAnUnreadableOrEmptyCaFileIsRefused) {
  state_->config.claims = {{"factory", dir_.path() + "/missing.pem", {}, {"gateway"}}};
  Status st = Write();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("claim 'factory'"), std::string::npos) << st.ToString();
  ASSERT_TRUE(fs_.WriteFileAtomic(dir_.path() + "/garbage.pem", "not a certificate", 0644).ok());
  state_->config.claims = {{"factory", dir_.path() + "/garbage.pem", {}, {"gateway"}}};
  st = Write();
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("rule 'factory'"), std::string::npos) << st.ToString();
}

TEST(ThingsAclTest, RotationRequestIsReadOnlyForTheThing) {
  std::string acl = ThingsAcl("certfleet-companion");
  EXPECT_NE(acl.find("pattern read certfleet/things/%u/rotation/request\n"), std::string::npos);
  EXPECT_NE(acl.find("pattern write certfleet/things/%u/rotation/ack\n"), std::string::npos);
  EXPECT_NE(acl.find("pattern readwrite certfleet/things/%u/+\n"), std::string::npos);
  // A multi-level grant would also grant writing the request (grants are a union).
  EXPECT_EQ(acl.find("certfleet/things/%u/#"), std::string::npos);
}

}  // namespace
}  // namespace certfleet::companion
