#include "shared/x509/key_facts.h"

#include <openssl/core_names.h>
#include <openssl/objects.h>

#include <array>
#include <bitset>

#include "shared/x509/cert.h"

namespace certfleet::shared {

namespace {

// The primes whose product is the ROCA generator's modulus M (2 excluded: every RSA
// modulus is odd, and 65537 generates the trivial group mod 2).
constexpr std::array<unsigned, 38> kRocaPrimes = {3,   5,   7,   11,  13,  17,  19,  23,  29,  31,  37,  41,  43,
                                                  47,  53,  59,  61,  67,  71,  73,  79,  83,  89,  97,  101, 103,
                                                  107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167};

// For each prime p, the residues in the subgroup <65537 mod p>, as a bitset.
struct RocaTable {
  std::array<std::bitset<168>, kRocaPrimes.size()> members;
  RocaTable() {
    for (size_t i = 0; i < kRocaPrimes.size(); ++i) {
      const unsigned p = kRocaPrimes[i];
      const unsigned g = 65537 % p;
      unsigned x = 1;
      do {
        members[i].set(x);
        x = (x * g) % p;
      } while (x != 1);
    }
  }
};

const RocaTable& Table() {
  static const RocaTable table;
  return table;
}

std::string KeyTypeOf(EVP_PKEY* key) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
    case EVP_PKEY_RSA_PSS: return "RSA";
    case EVP_PKEY_EC: return "EC";
    case EVP_PKEY_ED25519: return "ED25519";
    case EVP_PKEY_ED448: return "ED448";
    case EVP_PKEY_DSA: return "DSA";
    default: break;
  }
  const char* name = EVP_PKEY_get0_type_name(key);
  return name != nullptr ? name : "UNKNOWN";
}

}  // namespace

bool HasRocaFingerprint(const BIGNUM* n) {
  if (n == nullptr || BN_is_zero(n) || BN_is_negative(n)) return false;
  const RocaTable& table = Table();
  for (size_t i = 0; i < kRocaPrimes.size(); ++i) {
    const BN_ULONG r = BN_mod_word(n, kRocaPrimes[i]);
    if (r == static_cast<BN_ULONG>(-1) || !table.members[i].test(static_cast<size_t>(r))) return false;
  }
  return true;
}

KeyFacts DeriveKeyFacts(X509* cert) {
  KeyFacts f;
  const int sig_nid = X509_get_signature_nid(cert);
  const char* sn = OBJ_nid2sn(sig_nid);
  f.sig_alg = sn != nullptr ? sn : "UNKNOWN";
  // X509_get_signature_info also reads the digest out of RSA-PSS parameters, where the
  // algorithm OID alone names none.
  int md_nid = NID_undef;
  int pk_nid = NID_undef;
  if (X509_get_signature_info(cert, &md_nid, &pk_nid, nullptr, nullptr) == 1 && md_nid != NID_undef) {
    const char* md = OBJ_nid2sn(md_nid);
    f.sig_hash = md != nullptr ? md : "UNKNOWN";
  }
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) {
    f.key_type = "UNKNOWN";
    return f;
  }
  f.key_type = KeyTypeOf(key);
  f.key_bits = EVP_PKEY_get_bits(key);
  if (f.key_type == "RSA") {
    BIGNUM* n = nullptr;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) == 1) {
      f.roca = HasRocaFingerprint(n);
      BN_free(n);
    }
  }
  return f;
}

Result<KeyFacts> DeriveKeyFactsFromPem(std::string_view pem) {
  CF_ASSIGN_OR_RETURN(X509Ptr cert, CertFromPem(pem));
  return DeriveKeyFacts(cert.get());
}

}  // namespace certfleet::shared
