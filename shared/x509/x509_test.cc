#include <openssl/pem.h>
#include <openssl/ui.h>
#include <openssl/x509v3.h>

#include <gtest/gtest.h>

#include <chrono>
#include <ostream>
#include <string>
#include <vector>

#include "shared/core/base64.h"
#include "shared/core/clock.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::shared {

// Names KeyType parameters in test output (found by argument-dependent lookup, so it
// cannot sit in the anonymous namespace).
static void PrintTo(KeyType type, std::ostream* os) { *os << KeyTypeName(type); }

namespace {

using std::chrono::hours;
using std::chrono::seconds;

// All certificates are made relative to this instant (2026-01-01T00:00:00Z), as a
// FakeClock would report it: nothing here expires with the calendar.
const WallTime kNow = FromUnixSeconds(1767225600);

// ---- Test helpers: a tiny CA built directly with OpenSSL ----

struct CertSpec {
  std::string common_name;
  std::string organization = "certfleet test";
  // In OpenSSL config syntax: "DNS:gw.example", "IP:10.0.0.1", "email:a@b", ...
  std::vector<std::string> sans;
  bool is_ca = false;
  WallTime not_before = kNow - hours(1);
  WallTime not_after = kNow + hours(24 * 90);
  // When set, used instead of not_after, as an ASN.1 time string ("99991231235959Z").
  std::string not_after_text;
  uint64_t serial = 1;
};

void AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  ASSERT_NE(ext, nullptr) << value << ": " << DrainOpenSslErrors();
  ASSERT_EQ(X509_add_ext(cert, ext.get(), -1), 1);
}

// Issues a certificate for `subject_key`, signed by `issuer_key`; self-signed when
// `issuer` is null (then `issuer_key` must be `subject_key`'s private half).
X509Ptr MakeCert(const CertSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  X509Ptr cert(X509_new());
  EXPECT_NE(cert, nullptr);
  if (!cert) return nullptr;
  EXPECT_EQ(X509_set_version(cert.get(), X509_VERSION_3), 1);
  EXPECT_EQ(ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert.get()), spec.serial), 1);
  EXPECT_NE(ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(ToUnixSeconds(spec.not_before))),
            nullptr);
  if (spec.not_after_text.empty()) {
    EXPECT_NE(ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(ToUnixSeconds(spec.not_after))),
              nullptr);
  } else {
    EXPECT_EQ(ASN1_TIME_set_string_X509(X509_getm_notAfter(cert.get()), spec.not_after_text.c_str()), 1);
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (!spec.organization.empty()) {
    EXPECT_EQ(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                         reinterpret_cast<const unsigned char*>(spec.organization.c_str()), -1, -1, 0),
              1);
  }
  EXPECT_EQ(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                       reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0),
            1);
  EXPECT_EQ(X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name), 1);
  EXPECT_EQ(X509_set_pubkey(cert.get(), subject_key), 1);

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  AddExtension(cert.get(), &ctx, NID_basic_constraints, spec.is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  AddExtension(cert.get(), &ctx, NID_key_usage,
               spec.is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  AddExtension(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  if (issuer != nullptr) AddExtension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (!spec.sans.empty()) {
    std::string joined;
    for (const auto& s : spec.sans) joined += (joined.empty() ? "" : ",") + s;
    AddExtension(cert.get(), &ctx, NID_subject_alt_name, joined);
  }
  EXPECT_GT(X509_sign(cert.get(), issuer_key, EVP_sha256()), 0) << DrainOpenSslErrors();
  return cert;
}

EvpPkeyPtr EcKey() {
  auto key = GenerateKeyPair(KeyType::kEcP256);
  EXPECT_TRUE(key.has_value());
  return key ? std::move(*key) : nullptr;
}

// A root CA, and a leaf issued by it, with their keys.
struct Pki {
  EvpPkeyPtr ca_key = EcKey();
  X509Ptr ca;
  EvpPkeyPtr leaf_key = EcKey();
  X509Ptr leaf;

  explicit Pki(const std::string& ca_name = "certfleet test CA") {
    CertSpec ca_spec;
    ca_spec.common_name = ca_name;
    ca_spec.is_ca = true;
    ca_spec.serial = 0x01;
    ca_spec.not_before = kNow - hours(24);
    ca_spec.not_after = kNow + hours(24 * 3650);
    ca = MakeCert(ca_spec, ca_key.get(), nullptr, ca_key.get());

    CertSpec leaf_spec;
    leaf_spec.common_name = "gw-0001";
    leaf_spec.sans = {"DNS:gw-0001.example", "IP:10.0.0.7", "DNS:alt.example", "IP:2001:db8::1"};
    leaf_spec.serial = 0x1234ABCDULL;
    leaf = MakeCert(leaf_spec, leaf_key.get(), ca.get(), ca_key.get());
  }
};

bool IsLowerHex(const std::string& s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

X509StackPtr Stack(const std::vector<X509*>& certs) {
  X509StackPtr stack(sk_X509_new_null());
  for (X509* c : certs) {
    X509_up_ref(c);
    sk_X509_push(stack.get(), c);
  }
  return stack;
}

// ---- Keys ----

class KeyTypeTest : public ::testing::TestWithParam<KeyType> {};

TEST_P(KeyTypeTest, GenerateDescribeAndBuildCsr) {
  KeyType type = GetParam();
  auto parsed = ParseKeyType(KeyTypeName(type));
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(*parsed, type);

  auto key = GenerateKeyPair(type);
  ASSERT_TRUE(key.has_value()) << key.error().ToString();
  KeyInfo info = DescribeKey(key->get());
  switch (type) {
    case KeyType::kEcP256:
      EXPECT_EQ(info.algorithm, "EC");
      EXPECT_EQ(info.curve, "prime256v1");
      EXPECT_EQ(info.bits, 256);
      break;
    case KeyType::kEcP384:
      EXPECT_EQ(info.algorithm, "EC");
      EXPECT_EQ(info.curve, "secp384r1");
      EXPECT_EQ(info.bits, 384);
      break;
    case KeyType::kRsa2048:
      EXPECT_EQ(info.algorithm, "RSA");
      EXPECT_EQ(info.curve, "");
      EXPECT_EQ(info.bits, 2048);
      break;
    case KeyType::kRsa3072:
      EXPECT_EQ(info.algorithm, "RSA");
      EXPECT_EQ(info.bits, 3072);
      break;
  }

  // PEM round trip keeps the key.
  auto pem = PrivateKeyToPem(key->get());
  ASSERT_TRUE(pem.has_value());
  EXPECT_EQ(pem->rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  auto back = PrivateKeyFromPem(*pem);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_TRUE(SamePublicKey(key->get(), back->get()));
  auto der = PublicKeyDer(key->get());
  ASSERT_TRUE(der.has_value());
  EXPECT_EQ(*der, *PublicKeyDer(back->get()));

  // A CSR signed with it verifies, and stops verifying when its signature changes.
  CsrRequest request;
  request.common_name = "gw-" + std::string(KeyTypeName(type));
  request.dns_names = {"gw.example"};
  auto csr = BuildCsr(key->get(), request);
  ASSERT_TRUE(csr.has_value()) << csr.error().ToString();
  EXPECT_TRUE(VerifyCsrSignature(csr->get()).ok());
  std::string csr_der = CsrToDer(csr->get());
  ASSERT_FALSE(csr_der.empty());
  std::string tampered = csr_der;
  tampered[tampered.size() - 1] ^= 0x01;  // the last byte belongs to the signature BIT STRING
  auto parsed_tampered = CsrFromDer(tampered);
  ASSERT_TRUE(parsed_tampered.has_value()) << parsed_tampered.error().ToString();
  Status st = VerifyCsrSignature(parsed_tampered->get());
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  EXPECT_EQ(DrainOpenSslErrors(), "") << "the error queue must be drained into the Status";
}

INSTANTIATE_TEST_SUITE_P(AllKeyTypes, KeyTypeTest,
                         ::testing::Values(KeyType::kEcP256, KeyType::kEcP384, KeyType::kRsa2048, KeyType::kRsa3072),
                         [](const ::testing::TestParamInfo<KeyType>& param_info) {
                           std::string name(KeyTypeName(param_info.param));
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

TEST(KeyTest, ParseKeyTypeRejectsUnknown) {
  for (const char* name : {"", "ec", "EC-P256", "rsa-1024", "ed25519"}) {
    auto t = ParseKeyType(name);
    ASSERT_FALSE(t.has_value()) << name;
    EXPECT_EQ(t.error().code(), Code::kInvalidArgument);
  }
}

TEST(KeyTest, PrivateKeyFromPemRejectsGarbage) {
  for (const std::string& text : {std::string(""), std::string("not a key"),
                                  std::string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}) {
    auto key = PrivateKeyFromPem(text);
    ASSERT_FALSE(key.has_value());
    EXPECT_EQ(key.error().code(), Code::kInvalidArgument);
  }
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(KeyTest, PrivateKeyFromPemAcceptsTraditionalForms) {
  EvpPkeyPtr key = EcKey();
  BioPtr bio(BIO_new(BIO_s_mem()));
  ASSERT_EQ(PEM_write_bio_PrivateKey_traditional(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr), 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  std::string sec1(data, static_cast<size_t>(len));
  ASSERT_EQ(sec1.rfind("-----BEGIN EC PRIVATE KEY-----", 0), 0u);
  auto back = PrivateKeyFromPem(sec1);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_TRUE(SamePublicKey(key.get(), back->get()));
  EvpPkeyPtr other = EcKey();
  EXPECT_FALSE(SamePublicKey(key.get(), other.get()));
  EXPECT_FALSE(SamePublicKey(key.get(), nullptr));
}

// ---- CSRs ----

TEST(CsrTest, BuildWithNamesAndRoundTrip) {
  EvpPkeyPtr key = EcKey();
  CsrRequest request;
  request.common_name = "gw-0001";
  request.dns_names = {"gw-0001.example", "a.example"};
  request.ip_addresses = {"192.0.2.10", "2001:db8::1"};
  request.challenge_password = "tls-unique-value";
  auto csr = BuildCsr(key.get(), request);
  ASSERT_TRUE(csr.has_value()) << csr.error().ToString();
  ASSERT_TRUE(VerifyCsrSignature(csr->get()).ok());

  EXPECT_EQ(NameCommonName(X509_REQ_get_subject_name(csr->get())), "gw-0001");
  EXPECT_EQ(NameToString(X509_REQ_get_subject_name(csr->get())), "CN=gw-0001");
  GeneralNamesPtr sans = CsrSans(csr->get());
  ASSERT_NE(sans, nullptr);
  EXPECT_EQ(CanonicalSans(sans.get()),
            (std::vector<std::string>{"DNS:a.example", "DNS:gw-0001.example", "IP:192.0.2.10",
                                      "IP:20010db8000000000000000000000001"}));
  EXPECT_EQ(X509_REQ_get_attr_by_NID(csr->get(), NID_pkcs9_challengePassword, -1) >= 0, true);
  EXPECT_TRUE(SamePublicKey(X509_REQ_get0_pubkey(csr->get()), key.get()));

  // DER round trip is byte-exact.
  std::string der = CsrToDer(csr->get());
  auto parsed = CsrFromDer(der);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(CsrToDer(parsed->get()), der);
  EXPECT_TRUE(VerifyCsrSignature(parsed->get()).ok());
  EXPECT_EQ(CanonicalSans(CsrSans(parsed->get()).get()), CanonicalSans(sans.get()));

  // PEM round trip, and EST's base64 body form.
  std::string pem = CsrToPem(csr->get());
  EXPECT_EQ(pem.rfind("-----BEGIN CERTIFICATE REQUEST-----", 0), 0u);
  auto from_pem = CsrFromPem(pem);
  ASSERT_TRUE(from_pem.has_value()) << from_pem.error().ToString();
  EXPECT_EQ(CsrToDer(from_pem->get()), der);
  auto body = Base64Decode(Base64Encode(der));
  ASSERT_TRUE(body.has_value());
  EXPECT_EQ(CsrToDer(CsrFromDer(*body)->get()), der);
}

TEST(CsrTest, WithoutSansHasNoSanExtension) {
  EvpPkeyPtr key = EcKey();
  CsrRequest request;
  request.common_name = "only-cn";
  auto csr = BuildCsr(key.get(), request);
  ASSERT_TRUE(csr.has_value());
  EXPECT_EQ(CsrSans(csr->get()), nullptr);
  EXPECT_TRUE(CanonicalSans(nullptr).empty());
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(CsrTest, BadIpAddressIsInvalidArgument) {
  EvpPkeyPtr key = EcKey();
  for (const char* ip : {"", "300.1.1.1", "10.0.0", "gw.example", "::g"}) {
    CsrRequest request;
    request.common_name = "x";
    request.ip_addresses = {ip};
    auto csr = BuildCsr(key.get(), request);
    ASSERT_FALSE(csr.has_value()) << ip;
    EXPECT_EQ(csr.error().code(), Code::kInvalidArgument);
  }
}

TEST(CsrTest, BuildCsrWithNameCopiesSubjectAndSans) {
  Pki pki;
  EvpPkeyPtr new_key = EcKey();
  GeneralNamesPtr sans(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(pki.leaf.get(), NID_subject_alt_name, nullptr, nullptr)));
  ASSERT_NE(sans, nullptr);
  auto csr = BuildCsrWithName(new_key.get(), X509_get_subject_name(pki.leaf.get()), sans.get());
  ASSERT_TRUE(csr.has_value()) << csr.error().ToString();
  EXPECT_TRUE(VerifyCsrSignature(csr->get()).ok());
  EXPECT_EQ(X509_NAME_cmp(X509_REQ_get_subject_name(csr->get()), X509_get_subject_name(pki.leaf.get())), 0);
  EXPECT_EQ(CanonicalSans(CsrSans(csr->get()).get()), CertSans(pki.leaf.get()));

  auto no_sans = BuildCsrWithName(new_key.get(), X509_get_subject_name(pki.leaf.get()), nullptr);
  ASSERT_TRUE(no_sans.has_value());
  EXPECT_EQ(CsrSans(no_sans->get()), nullptr);
}

TEST(CsrTest, CsrFromDerRejectsGarbageTruncationAndTrailingBytes) {
  EvpPkeyPtr key = EcKey();
  CsrRequest request;
  request.common_name = "gw";
  request.dns_names = {"gw.example"};
  std::string der = CsrToDer(BuildCsr(key.get(), request)->get());
  ASSERT_GT(der.size(), 100u);

  std::vector<std::string> bad = {
      "",
      "garbage",
      std::string(1, '\x30'),
      std::string("\x30\x00", 2),
      std::string(300, '\xff'),
      der + std::string(1, '\0'),
      der + der,
      der.substr(1),
  };
  for (size_t cut : {size_t{1}, size_t{2}, der.size() / 2, der.size() - 1}) bad.push_back(der.substr(0, cut));
  for (const auto& input : bad) {
    SCOPED_TRACE(input.size());
    auto csr = CsrFromDer(input);
    ASSERT_FALSE(csr.has_value());
    EXPECT_EQ(csr.error().code(), Code::kInvalidArgument);
  }
  // A certificate is not a CSR.
  Pki pki;
  EXPECT_FALSE(CsrFromDer(CertToDer(pki.leaf.get())).has_value());
  EXPECT_FALSE(CsrFromPem("not pem").has_value());
  EXPECT_FALSE(CsrFromPem(CertToPem(pki.leaf.get())).has_value());
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

// ---- Certificates ----

TEST(CertTest, FingerprintAndDescribe) {
  Pki pki;
  std::string fp = CertFingerprint(pki.leaf.get());
  EXPECT_EQ(fp.size(), 64u);
  EXPECT_TRUE(IsLowerHex(fp)) << fp;
  EXPECT_EQ(fp, Sha256Hex(CertToDer(pki.leaf.get())));
  EXPECT_NE(fp, CertFingerprint(pki.ca.get()));
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

  CertInfo info = DescribeCert(pki.leaf.get());
  EXPECT_EQ(info.id, fp);
  EXPECT_EQ(info.serial, "1234ABCD");
  EXPECT_EQ(info.subject, "CN=gw-0001,O=certfleet test");
  EXPECT_EQ(info.issuer, "CN=certfleet test CA,O=certfleet test");
  EXPECT_EQ(info.common_name, "gw-0001");
  EXPECT_EQ(info.dns_names, (std::vector<std::string>{"alt.example", "gw-0001.example"}));
  EXPECT_EQ(info.ip_addresses, (std::vector<std::string>{"10.0.0.7", "20010db8000000000000000000000001"}));
  EXPECT_EQ(info.not_before, kNow - hours(1));
  EXPECT_EQ(info.not_after, kNow + hours(24 * 90));
  EXPECT_FALSE(info.is_ca);

  CertInfo ca = DescribeCert(pki.ca.get());
  EXPECT_TRUE(ca.is_ca);
  EXPECT_EQ(ca.serial, "01");
  EXPECT_EQ(ca.subject, ca.issuer);
  EXPECT_TRUE(ca.dns_names.empty());
  EXPECT_EQ(ca.not_after, kNow + hours(24 * 3650));  // past 2049: GeneralizedTime
}

// RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration" (IEEE 802.1AR
// device identities use it). Such dates lie beyond WallTime's range (nanoseconds since
// 1970 end in 2262) and must saturate, not overflow.
TEST(CertTest, DescribeCertWithNoWellDefinedExpiration) {
  EvpPkeyPtr key = EcKey();
  CertSpec spec;
  spec.common_name = "idevid";
  spec.not_after_text = "99991231235959Z";
  X509Ptr cert = MakeCert(spec, key.get(), nullptr, key.get());
  CertInfo info = DescribeCert(cert.get());
  EXPECT_EQ(info.not_after, WallTime::max());
  EXPECT_GT(info.not_after, kNow + hours(24 * 365 * 200));
  EXPECT_EQ(info.not_before, kNow - hours(1));

  auto store = TrustStore::FromCerts({cert.get()});
  ASSERT_TRUE(store.has_value());
  EXPECT_TRUE(store->Verify(cert.get(), nullptr, kNow).ok());

  EXPECT_EQ(FromUnixSeconds(253402300799), WallTime::max());
  EXPECT_EQ(FromUnixSeconds(-253402300799), WallTime::min());
  EXPECT_EQ(ToUnixSeconds(FromUnixSeconds(1767225600)), 1767225600);
}

TEST(CertTest, CertSansCanonicalStrings) {
  EvpPkeyPtr key = EcKey();
  CertSpec spec;
  spec.common_name = "sans";
  spec.sans = {"URI:spiffe://fleet/gw-1", "email:ops@example.org", "IP:192.0.2.1", "DNS:b.example",
               "DNS:a.example", "IP:::1"};
  X509Ptr cert = MakeCert(spec, key.get(), nullptr, key.get());
  EXPECT_EQ(CertSans(cert.get()),
            (std::vector<std::string>{"DNS:a.example", "DNS:b.example", "IP:00000000000000000000000000000001",
                                      "IP:192.0.2.1", "URI:spiffe://fleet/gw-1", "email:ops@example.org"}));

  CertSpec bare;
  bare.common_name = "bare";
  X509Ptr no_sans = MakeCert(bare, key.get(), nullptr, key.get());
  EXPECT_TRUE(CertSans(no_sans.get()).empty());
  EXPECT_TRUE(DescribeCert(no_sans.get()).dns_names.empty());
}

TEST(CertTest, DerAndPemRoundTrips) {
  Pki pki;
  std::string der = CertToDer(pki.leaf.get());
  auto back = CertFromDer(der);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(CertFingerprint(back->get()), CertFingerprint(pki.leaf.get()));
  for (const std::string& bad : {std::string(""), std::string("junk"), der + "x", der.substr(0, der.size() - 1)}) {
    auto r = CertFromDer(bad);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  }

  std::string pem = CertToPem(pki.leaf.get());
  auto from_pem = CertFromPem(pem);
  ASSERT_TRUE(from_pem.has_value());
  EXPECT_EQ(CertToDer(from_pem->get()), der);
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(CertTest, CertsFromPemBundle) {
  Pki pki;
  std::string bundle = "# device chain\n" + CertToPem(pki.leaf.get()) + "\nsome text between\n" +
                       CertToPem(pki.ca.get());
  auto certs = CertsFromPem(bundle);
  ASSERT_TRUE(certs.has_value()) << certs.error().ToString();
  ASSERT_EQ(certs->size(), 2u);
  EXPECT_EQ(CertFingerprint((*certs)[0].get()), CertFingerprint(pki.leaf.get()));
  EXPECT_EQ(CertFingerprint((*certs)[1].get()), CertFingerprint(pki.ca.get()));
  EXPECT_EQ(CertsToPem(*certs), CertToPem(pki.leaf.get()) + CertToPem(pki.ca.get()));

  auto first = CertFromPem(bundle);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(CertFingerprint(first->get()), CertFingerprint(pki.leaf.get()));

  // CRLF line ends, as files edited on other systems have.
  std::string crlf;
  for (char c : CertToPem(pki.ca.get())) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  auto from_crlf = CertsFromPem(crlf);
  ASSERT_TRUE(from_crlf.has_value()) << from_crlf.error().ToString();
  EXPECT_EQ(from_crlf->size(), 1u);

  for (const std::string& bad : {std::string(""), std::string("no pem here"),
                                 std::string("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                                 CsrToPem(BuildCsr(pki.leaf_key.get(), CsrRequest{"x", {}, {}, ""})->get())}) {
    auto r = CertsFromPem(bad);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
    EXPECT_FALSE(CertFromPem(bad).has_value());
  }
  EXPECT_FALSE(CertsFromPem(std::string_view()).has_value());
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

// ---- Trust ----

TEST(TrustStoreTest, VerifiesLeafAtTimes) {
  Pki pki;
  auto store = TrustStore::FromPem(CertToPem(pki.ca.get()));
  ASSERT_TRUE(store.has_value()) << store.error().ToString();
  ASSERT_EQ(store->anchors().size(), 1u);

  Status ok = store->Verify(pki.leaf.get(), nullptr, kNow);
  EXPECT_TRUE(ok.ok()) << ok.ToString();
  EXPECT_TRUE(store->Verify(pki.leaf.get(), nullptr, kNow + hours(24 * 90) - seconds(1)).ok());

  WallTime after = kNow + hours(24 * 90) + seconds(1);
  Status expired = store->Verify(pki.leaf.get(), nullptr, after);
  EXPECT_EQ(expired.code(), Code::kUnauthenticated) << expired.ToString();
  EXPECT_NE(expired.message().find("expired"), std::string::npos) << expired.message();

  Status early = store->Verify(pki.leaf.get(), nullptr, kNow - hours(2));
  EXPECT_EQ(early.code(), Code::kUnauthenticated);
  EXPECT_NE(early.message().find("not yet valid"), std::string::npos) << early.message();

  EXPECT_TRUE(store->Verify(pki.leaf.get(), nullptr, after, /*ignore_time=*/true).ok());
  EXPECT_TRUE(store->Verify(pki.leaf.get(), nullptr, kNow + hours(24 * 365 * 20), true).ok());
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(TrustStoreTest, RejectsWrongAnchor) {
  Pki pki;
  Pki other;                          // same CA name, different key
  Pki stranger("some other CA");      // different name
  for (X509* anchor : {other.ca.get(), stranger.ca.get(), pki.leaf.get()}) {
    auto store = TrustStore::FromCerts({anchor});
    ASSERT_TRUE(store.has_value());
    Status st = store->Verify(pki.leaf.get(), nullptr, kNow);
    EXPECT_EQ(st.code(), Code::kUnauthenticated) << st.ToString();
    // Ignoring time does not ignore the signature.
    EXPECT_EQ(store->Verify(pki.leaf.get(), nullptr, kNow, true).code(), Code::kUnauthenticated);
  }
  // Several anchors: the right one among them is enough.
  auto both = TrustStore::FromCerts({other.ca.get(), pki.ca.get()});
  ASSERT_TRUE(both.has_value());
  EXPECT_TRUE(both->Verify(pki.leaf.get(), nullptr, kNow).ok());
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(TrustStoreTest, ChainThroughUntrustedIntermediate) {
  Pki root;
  EvpPkeyPtr int_key = EcKey();
  CertSpec int_spec;
  int_spec.common_name = "certfleet issuing CA";
  int_spec.is_ca = true;
  int_spec.serial = 2;
  X509Ptr intermediate = MakeCert(int_spec, int_key.get(), root.ca.get(), root.ca_key.get());
  EvpPkeyPtr leaf_key = EcKey();
  CertSpec leaf_spec;
  leaf_spec.common_name = "gw-0002";
  X509Ptr leaf = MakeCert(leaf_spec, leaf_key.get(), intermediate.get(), int_key.get());

  auto store = TrustStore::FromCerts({root.ca.get()});
  ASSERT_TRUE(store.has_value());
  X509StackPtr untrusted = Stack({intermediate.get()});
  EXPECT_TRUE(store->Verify(leaf.get(), untrusted.get(), kNow).ok());
  EXPECT_EQ(store->Verify(leaf.get(), nullptr, kNow).code(), Code::kUnauthenticated);
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(TrustStoreTest, ExpiredLeafVerifiesOnlyWhileItsCasAreValid) {
  Pki root;
  EvpPkeyPtr int_key = EcKey();
  CertSpec int_spec;
  int_spec.common_name = "certfleet issuing CA";
  int_spec.is_ca = true;
  int_spec.serial = 2;
  int_spec.not_after = kNow + hours(24 * 100);
  X509Ptr intermediate = MakeCert(int_spec, int_key.get(), root.ca.get(), root.ca_key.get());
  EvpPkeyPtr leaf_key = EcKey();
  CertSpec leaf_spec;
  leaf_spec.common_name = "gw-0003";
  X509Ptr leaf = MakeCert(leaf_spec, leaf_key.get(), intermediate.get(), int_key.get());
  auto store = TrustStore::FromCerts({root.ca.get()});
  ASSERT_TRUE(store.has_value());
  X509StackPtr untrusted = Stack({intermediate.get()});

  // The leaf expired (90d) but its issuing CA (100d) is still valid.
  WallTime after = kNow + hours(24 * 95);
  EXPECT_EQ(store->Verify(leaf.get(), untrusted.get(), after).code(), Code::kUnauthenticated);
  Status st = store->VerifyExpiredLeaf(leaf.get(), untrusted.get(), after);
  EXPECT_TRUE(st.ok()) << st.ToString();
  // An expired issuing CA is not forgiven.
  st = store->VerifyExpiredLeaf(leaf.get(), untrusted.get(), kNow + hours(24 * 101));
  EXPECT_EQ(st.code(), Code::kUnauthenticated);
  EXPECT_NE(st.message().find("not valid now"), std::string::npos) << st.message();
  // Nor a chain that never verified.
  EXPECT_EQ(store->VerifyExpiredLeaf(leaf.get(), nullptr, after).code(), Code::kUnauthenticated);
  Pki stranger("some other CA");
  auto other = TrustStore::FromCerts({stranger.ca.get()});
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->VerifyExpiredLeaf(leaf.get(), untrusted.get(), after).code(), Code::kUnauthenticated);
  EXPECT_EQ(DrainOpenSslErrors(), "");
}

TEST(TrustStoreTest, FromPemRejectsGarbage) {
  auto store = TrustStore::FromPem("nothing");
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code(), Code::kInvalidArgument);
  EXPECT_NE(store.error().message().find("trust anchors"), std::string::npos);
}

// ---- PKCS#7 certs-only ----

TEST(Pkcs7Test, BuildAndParseRoundTrip) {
  Pki pki;
  auto der = BuildCertsOnly({pki.leaf.get(), pki.ca.get()});
  ASSERT_TRUE(der.has_value()) << der.error().ToString();
  auto certs = ParseCertsOnly(*der);
  ASSERT_TRUE(certs.has_value()) << certs.error().ToString();
  ASSERT_EQ(certs->size(), 2u);
  EXPECT_EQ(CertFingerprint((*certs)[0].get()), CertFingerprint(pki.leaf.get()));
  EXPECT_EQ(CertFingerprint((*certs)[1].get()), CertFingerprint(pki.ca.get()));

  auto one = BuildCertsOnly({pki.ca.get()});
  ASSERT_TRUE(one.has_value());
  auto one_back = ParseCertsOnly(*one);
  ASSERT_TRUE(one_back.has_value());
  ASSERT_EQ(one_back->size(), 1u);
  EXPECT_EQ(CertToDer((*one_back)[0].get()), CertToDer(pki.ca.get()));

  // As EST carries it: base64 in 64-column lines.
  auto decoded = Base64Decode(Base64Encode(*der));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(ParseCertsOnly(*decoded)->size(), 2u);
}

TEST(Pkcs7Test, BuildCertsOnlyIsDegenerateSignedData) {
  Pki pki;
  auto der = BuildCertsOnly({pki.leaf.get()});
  ASSERT_TRUE(der.has_value());
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der->data());
  Pkcs7Ptr p7(d2i_PKCS7(nullptr, &p, static_cast<long>(der->size())));
  ASSERT_NE(p7, nullptr);
  ASSERT_EQ(OBJ_obj2nid(p7->type), NID_pkcs7_signed);
  PKCS7_SIGNED* sd = p7->d.sign;
  EXPECT_EQ(sk_PKCS7_SIGNER_INFO_num(sd->signer_info), 0);
  EXPECT_EQ(sk_X509_num(sd->cert), 1);
  ASSERT_NE(sd->contents, nullptr);
  EXPECT_EQ(OBJ_obj2nid(sd->contents->type), NID_pkcs7_data);
  // RFC 5751 3.8 / RFC 7030 4.1.3: certs-only carries no encapsulated content.
  EXPECT_EQ(sd->contents->d.data, nullptr);
}

TEST(Pkcs7Test, ParseCertsOnlyRejectsWhatIsNotCertsOnly) {
  Pki pki;
  auto good = BuildCertsOnly({pki.leaf.get()});
  ASSERT_TRUE(good.has_value());

  auto expect_rejected = [](std::string_view der, const char* what) {
    SCOPED_TRACE(what);
    auto r = ParseCertsOnly(der);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  };
  expect_rejected("", "empty");
  expect_rejected("garbage garbage", "garbage");
  expect_rejected(std::string(64, '\0'), "zeros");
  expect_rejected(CertToDer(pki.leaf.get()), "a bare certificate");
  expect_rejected(*good + std::string(1, '\0'), "trailing NUL");
  expect_rejected(*good + *good, "two messages");
  expect_rejected(std::string_view(*good).substr(0, good->size() - 1), "truncated");
  expect_rejected(std::string_view(*good).substr(0, good->size() / 2), "half");

  auto empty = BuildCertsOnly({});
  ASSERT_TRUE(empty.has_value());
  expect_rejected(*empty, "no certificates");

  // A PKCS#7 of another content type.
  Pkcs7Ptr data(PKCS7_new());
  ASSERT_EQ(PKCS7_set_type(data.get(), NID_pkcs7_data), 1);
  unsigned char* raw = nullptr;
  int len = i2d_PKCS7(data.get(), &raw);
  ASSERT_GT(len, 0);
  std::string data_der(reinterpret_cast<char*>(raw), static_cast<size_t>(len));
  OPENSSL_free(raw);
  expect_rejected(data_der, "pkcs7-data");

  Pkcs7Ptr digested(PKCS7_new());
  ASSERT_EQ(PKCS7_set_type(digested.get(), NID_pkcs7_digest), 1);
  raw = nullptr;
  len = i2d_PKCS7(digested.get(), &raw);
  if (len > 0) {
    std::string digest_der(reinterpret_cast<char*>(raw), static_cast<size_t>(len));
    OPENSSL_free(raw);
    expect_rejected(digest_der, "pkcs7-digestedData");
  }
  DrainOpenSslErrors();
}

// ---- Parsing never asks for a pass phrase ----

// Counts how often OpenSSL tried to open its interactive pass phrase prompt.
int g_prompts = 0;
int CountingOpener(UI*) {
  ++g_prompts;
  return 0;  // fail: never block on a terminal in a test
}

class NoPromptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    method_ = UI_create_method("certfleet-test-no-prompt");
    ASSERT_NE(method_, nullptr);
    UI_method_set_opener(method_, CountingOpener);
    old_ = UI_get_default_method();
    UI_set_default_method(method_);
    g_prompts = 0;
  }
  void TearDown() override {
    UI_set_default_method(old_);
    UI_destroy_method(method_);
    DrainOpenSslErrors();
  }

  // A PEM block of `label` whose headers say it is encrypted.
  static std::string EncryptedPem(const std::string& label, std::string_view der) {
    return "-----BEGIN " + label + "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC," +
           "00112233445566778899AABBCCDDEEFF\n\n" + Base64Encode(der) + "-----END " + label + "-----\n";
  }

  UI_METHOD* method_ = nullptr;
  const UI_METHOD* old_ = nullptr;
};

TEST_F(NoPromptTest, UntrustedPemWithEncryptionHeadersFailsWithoutPrompting) {
  Pki pki;
  std::string cert_der = CertToDer(pki.leaf.get());
  auto certs = CertsFromPem(EncryptedPem("CERTIFICATE", cert_der));
  EXPECT_FALSE(certs.has_value());
  EXPECT_EQ(g_prompts, 0);

  std::string csr_der = CsrToDer(BuildCsr(pki.leaf_key.get(), CsrRequest{"x", {}, {}, ""})->get());
  auto csr = CsrFromPem(EncryptedPem("CERTIFICATE REQUEST", csr_der));
  EXPECT_FALSE(csr.has_value());
  EXPECT_EQ(g_prompts, 0);

  auto key = PrivateKeyFromPem(EncryptedPem("EC PRIVATE KEY", std::string(48, 'k')));
  EXPECT_FALSE(key.has_value());
  EXPECT_EQ(g_prompts, 0);

  // PKCS#8 encrypted keys too.
  BioPtr bio(BIO_new(BIO_s_mem()));
  char pass[] = "secret";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio.get(), pki.leaf_key.get(), EVP_aes_128_cbc(), pass, 6, nullptr,
                                          nullptr),
            1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  auto pkcs8 = PrivateKeyFromPem(std::string(data, static_cast<size_t>(len)));
  EXPECT_FALSE(pkcs8.has_value());
  EXPECT_EQ(g_prompts, 0);
}

}  // namespace
}  // namespace certfleet::shared
