#include "shared/x509/key_facts.h"

#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <gtest/gtest.h>

#include "shared/x509/key.h"

namespace certfleet::shared {
namespace {

using BnPtr = std::unique_ptr<BIGNUM, FnDeleter<BN_free>>;
using BnCtxPtr = std::unique_ptr<BN_CTX, FnDeleter<BN_CTX_free>>;

// A modulus built the way the ROCA-affected generator builds its primes' product:
// k*M + (65537^a mod M), M the product of the primes up to 167. Not an RSA modulus
// anyone can use; the discriminant only looks at residues.
BnPtr SyntheticRocaModulus() {
  BnCtxPtr ctx(BN_CTX_new());
  BnPtr m(BN_new());
  BN_one(m.get());
  for (unsigned p = 2; p <= 167; ++p) {
    bool prime = true;
    for (unsigned d = 2; d * d <= p; ++d) prime = prime && (p % d != 0);
    if (prime) BN_mul_word(m.get(), p);
  }
  BnPtr g(BN_new());
  BN_set_word(g.get(), 65537);
  BnPtr a(BN_new());
  BN_rand(a.get(), 64, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
  BnPtr r(BN_new());
  BN_mod_exp(r.get(), g.get(), a.get(), m.get(), ctx.get());
  // k * m + r has bits(k) + bits(m) or one bit less: draw k until n is 2048 bits.
  BnPtr k(BN_new());
  BnPtr n(BN_new());
  do {
    BN_rand(k.get(), 2048 - BN_num_bits(m.get()) + 1, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY);
    BN_mul(n.get(), k.get(), m.get(), ctx.get());
    BN_add(n.get(), n.get(), r.get());
  } while (BN_num_bits(n.get()) != 2048);
  return n;
}

EvpPkeyPtr RsaPublicKey(const BIGNUM* n) {
  std::unique_ptr<OSSL_PARAM_BLD, FnDeleter<OSSL_PARAM_BLD_free>> bld(OSSL_PARAM_BLD_new());
  BnPtr e(BN_new());
  BN_set_word(e.get(), 65537);
  OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n);
  OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get());
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld.get());
  std::unique_ptr<EVP_PKEY_CTX, FnDeleter<EVP_PKEY_CTX_free>> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* key = nullptr;
  EVP_PKEY_fromdata_init(ctx.get());
  EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params);
  OSSL_PARAM_free(params);
  return EvpPkeyPtr(key);
}

// A self-issued-looking certificate for `subject_key`, signed by `signer` with `md`.
X509Ptr MakeCert(EVP_PKEY* subject_key, EVP_PKEY* signer, const EVP_MD* md) {
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 7);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("gw-1"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_time_adj_ex(X509_getm_notBefore(cert.get()), 0, 0, nullptr);
  X509_time_adj_ex(X509_getm_notAfter(cert.get()), 30, 0, nullptr);
  X509_set_pubkey(cert.get(), subject_key);
  EXPECT_GT(X509_sign(cert.get(), signer, md), 0);
  return cert;
}

TEST(RocaTest, SyntheticFingerprintedModulusIsDetected) {
  for (int i = 0; i < 5; ++i) {
    BnPtr n = SyntheticRocaModulus();
    EXPECT_TRUE(HasRocaFingerprint(n.get()));
  }
}

TEST(RocaTest, GeneratedRsaModulusIsNotFlagged) {
  auto key = GenerateKeyPair(KeyType::kRsa2048);
  ASSERT_TRUE(key);
  BIGNUM* n = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(key->get(), OSSL_PKEY_PARAM_RSA_N, &n), 1);
  EXPECT_FALSE(HasRocaFingerprint(n));
  BN_free(n);
}

TEST(RocaTest, OneResidueOutsideTheSubgroupClears) {
  BnPtr n = SyntheticRocaModulus();
  // 65537 mod 11 = 10 generates only {1, 10} mod 11: an even shift of a fingerprinted
  // modulus lands outside that subgroup for most shifts, and one outside residue clears it.
  bool cleared = false;
  for (unsigned shift = 2; shift < 40 && !cleared; shift += 2) {
    BnPtr m(BN_dup(n.get()));
    BN_add_word(m.get(), shift);
    cleared = !HasRocaFingerprint(m.get());
  }
  EXPECT_TRUE(cleared);
  EXPECT_FALSE(HasRocaFingerprint(nullptr));
}

TEST(KeyFactsTest, EcKeyWithSha256) {
  auto key = GenerateKeyPair(KeyType::kEcP256);
  ASSERT_TRUE(key);
  X509Ptr cert = MakeCert(key->get(), key->get(), EVP_sha256());
  KeyFacts f = DeriveKeyFacts(cert.get());
  EXPECT_EQ(f.key_type, "EC");
  EXPECT_EQ(f.key_bits, 256);
  EXPECT_EQ(f.sig_alg, "ecdsa-with-SHA256");
  EXPECT_EQ(f.sig_hash, "SHA256");
  EXPECT_FALSE(f.roca);
}

TEST(KeyFactsTest, RsaKeySignedWithSha1) {
  auto key = GenerateKeyPair(KeyType::kRsa2048);
  ASSERT_TRUE(key);
  X509Ptr cert = MakeCert(key->get(), key->get(), EVP_sha1());
  KeyFacts f = DeriveKeyFacts(cert.get());
  EXPECT_EQ(f.key_type, "RSA");
  EXPECT_EQ(f.key_bits, 2048);
  EXPECT_EQ(f.sig_hash, "SHA1");
  EXPECT_FALSE(f.roca);
}

// RSA-PSS names its digest in the algorithm parameters, not in the OID.
TEST(KeyFactsTest, RsaPssSignatureDigestIsRead) {
  auto key = GenerateKeyPair(KeyType::kRsa2048);
  ASSERT_TRUE(key);
  for (const auto& [md, name] : {std::pair{EVP_sha1(), "SHA1"}, std::pair{EVP_sha256(), "SHA256"}}) {
    X509Ptr cert = MakeCert(key->get(), key->get(), EVP_sha256());
    std::unique_ptr<EVP_MD_CTX, FnDeleter<EVP_MD_CTX_free>> ctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    ASSERT_EQ(EVP_DigestSignInit(ctx.get(), &pctx, md, nullptr, key->get()), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
    ASSERT_GT(X509_sign_ctx(cert.get(), ctx.get()), 0);
    KeyFacts f = DeriveKeyFacts(cert.get());
    EXPECT_EQ(f.sig_alg, "RSASSA-PSS");
    EXPECT_EQ(f.sig_hash, name);
  }
}

TEST(KeyFactsTest, CertificateForARocaModulusIsFlagged) {
  BnPtr n = SyntheticRocaModulus();
  EvpPkeyPtr pub = RsaPublicKey(n.get());
  ASSERT_NE(pub, nullptr);
  auto signer = GenerateKeyPair(KeyType::kEcP256);
  ASSERT_TRUE(signer);
  X509Ptr cert = MakeCert(pub.get(), signer->get(), EVP_sha256());
  KeyFacts f = DeriveKeyFacts(cert.get());
  EXPECT_EQ(f.key_type, "RSA");
  EXPECT_EQ(f.key_bits, 2048);
  EXPECT_TRUE(f.roca);
}

TEST(KeyFactsTest, PemThatIsNoCertificateIsRejected) {
  EXPECT_FALSE(DeriveKeyFactsFromPem("not a certificate"));
}

}  // namespace
}  // namespace certfleet::shared
