#include "shared/x509/key.h"

#include <openssl/core_names.h>
#include <openssl/pem.h>

#include "shared/x509/openssl_error.h"

namespace certfleet::shared {

std::string_view KeyTypeName(KeyType type) {
  switch (type) {
    case KeyType::kEcP256: return "ec-p256";
    case KeyType::kEcP384: return "ec-p384";
    case KeyType::kRsa2048: return "rsa-2048";
    case KeyType::kRsa3072: return "rsa-3072";
  }
  return "unknown";
}

Result<KeyType> ParseKeyType(std::string_view name) {
  for (KeyType t : {KeyType::kEcP256, KeyType::kEcP384, KeyType::kRsa2048, KeyType::kRsa3072}) {
    if (KeyTypeName(t) == name) return t;
  }
  return Error(Code::kInvalidArgument,
               "unknown key type '" + std::string(name) + "' (ec-p256, ec-p384, rsa-2048, rsa-3072)");
}

Status CheckKeyTypeName(const std::string& name) {
  auto type = ParseKeyType(name);
  return type ? Status::Ok() : type.error();
}

Result<EvpPkeyPtr> GenerateKeyPair(KeyType type) {
  EVP_PKEY* key = nullptr;
  switch (type) {
    case KeyType::kEcP256: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"); break;
    case KeyType::kEcP384: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"); break;
    case KeyType::kRsa2048: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}); break;
    case KeyType::kRsa3072: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{3072}); break;
  }
  if (key == nullptr) return Error(OpenSslStatus(Code::kInternal, "key generation failed"));
  return EvpPkeyPtr(key);
}

KeyInfo DescribeKey(EVP_PKEY* key) {
  KeyInfo info;
  if (key == nullptr) return info;
  int id = EVP_PKEY_get_base_id(key);
  info.bits = EVP_PKEY_get_bits(key);
  switch (id) {
    case EVP_PKEY_EC: {
      info.algorithm = "EC";
      char curve[64] = {0};
      size_t len = 0;
      if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof curve, &len) == 1) {
        info.curve = curve;
      }
      break;
    }
    case EVP_PKEY_RSA: info.algorithm = "RSA"; break;
    case EVP_PKEY_RSA_PSS: info.algorithm = "RSA-PSS"; break;
    case EVP_PKEY_ED25519: info.algorithm = "ED25519"; break;
    case EVP_PKEY_ED448: info.algorithm = "ED448"; break;
    case EVP_PKEY_DSA: info.algorithm = "DSA"; break;
    default: {
      const char* name = EVP_PKEY_get0_type_name(key);
      info.algorithm = name != nullptr ? name : "UNKNOWN";
    }
  }
  return info;
}

Result<std::string> PrivateKeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Error(OpenSslStatus(Code::kInternal, "encoding private key"));
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Result<EvpPkeyPtr> PrivateKeyFromPem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr);
  if (key == nullptr) return Error(OpenSslStatus(Code::kInvalidArgument, "not a PEM private key"));
  return EvpPkeyPtr(key);
}

Result<std::string> PublicKeyDer(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key, &der);
  if (len <= 0) return Error(OpenSslStatus(Code::kInternal, "encoding public key"));
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

bool SamePublicKey(EVP_PKEY* a, EVP_PKEY* b) {
  if (a == nullptr || b == nullptr) return false;
  return EVP_PKEY_eq(a, b) == 1;
}

Result<std::string> SignSha256(EVP_PKEY* key, std::string_view data) {
  if (key == nullptr) return Error(Code::kInvalidArgument, "no key to sign with");
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  size_t length = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &length, reinterpret_cast<const unsigned char*>(data.data()), data.size()) !=
          1) {
    return Error(OpenSslStatus(Code::kInternal, "signing failed"));
  }
  std::string signature(length, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &length,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return Error(OpenSslStatus(Code::kInternal, "signing failed"));
  }
  signature.resize(length);
  return signature;
}

Status VerifySha256(EVP_PKEY* key, std::string_view data, std::string_view signature) {
  if (key == nullptr) return Status(Code::kInvalidArgument, "no key to verify with");
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1) {
    return OpenSslStatus(Code::kInternal, "verification setup failed");
  }
  int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                            reinterpret_cast<const unsigned char*>(data.data()), data.size());
  if (rc != 1) {
    DrainOpenSslErrors();
    return Status(Code::kUnauthenticated, "signature does not verify");
  }
  return Status::Ok();
}

}  // namespace certfleet::shared
