#include "agent/issuance.h"

#include "shared/x509/cert.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::agent {

using shared::Code;
using shared::Status;
namespace sh = shared;

Status VerifyIssued(X509* cert, EVP_PKEY* key, const std::string& anchor_pem, const std::vector<sh::X509Ptr>& ca_certs,
                    sh::WallTime now) {
  if (!sh::SamePublicKey(X509_get0_pubkey(cert), key)) {
    return Status(Code::kDataLoss, "the issued certificate does not carry our public key");
  }
  CF_ASSIGN_OR_RETURN(sh::TrustStore anchors, sh::TrustStore::FromPem(anchor_pem));
  sh::X509StackRefPtr untrusted(sk_X509_new_null());  // borrows ca_certs
  if (!untrusted) return sh::OpenSslStatus(Code::kInternal, "sk_X509_new_null");
  for (const auto& c : ca_certs) {
    if (sk_X509_push(untrusted.get(), c.get()) <= 0) return sh::OpenSslStatus(Code::kInternal, "sk_X509_push");
  }
  return anchors.Verify(cert, untrusted.get(), now).WithContext("the issued certificate");
}

sh::Result<std::unique_ptr<hal::KeyHandle>> KeyForSlot(hal::KeyStore& keys, const std::string& slot, sh::KeyType type,
                                                       sh::Logger& log) {
  auto existing = keys.Load(slot);
  if (existing) {
    log.Info("reusing the uncertified key left in its slot by an earlier attempt", {{"slot", slot}});
    return std::move(*existing);
  }
  if (existing.error().code() != Code::kNotFound) return sh::Error(existing.error());
  return keys.Generate(slot, type);
}

std::string SlotCertifiedBy(const sh::Filesystem& fs, hal::KeyStore& keys, const std::string& cert_file,
                            const std::vector<std::string>& slots) {
  if (!fs.Exists(cert_file)) return "";
  auto pem = fs.ReadFile(cert_file, 1 << 20);
  if (!pem) return "";
  auto cert = sh::CertFromPem(*pem);
  if (!cert) return "";
  for (const std::string& slot : slots) {
    auto key = keys.Load(slot);
    if (key && sh::SamePublicKey(X509_get0_pubkey(cert->get()), (*key)->pkey())) return slot;
  }
  return "";
}

}  // namespace certfleet::agent
