// The certificate authority: building CA certificates at init, and issuing end-entity
// certificates from verified CSRs under the configured profile. Thread-safe after
// construction (the issuing key handle is used under a mutex).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hal/keystore.h"
#include "shared/core/clock.h"
#include "shared/core/handles.h"
#include "shared/core/status.h"
#include "shared/x509/key.h"

namespace certfleet::companion {

using shared::Result;
using shared::Status;

enum class Usage { kClientAuth, kServerAuth };

// What goes into a certificate. The subject and SANs are already decided by policy.
struct CertTemplate {
  shared::X509NamePtr subject;
  shared::GeneralNamesPtr sans;  // may be null
  EVP_PKEY* public_key = nullptr;  // borrowed
  std::chrono::seconds validity{0};
  std::chrono::seconds backdate{0};
  Usage usage = Usage::kClientAuth;
};

// A self-signed root CA certificate.
Result<shared::X509Ptr> MakeRootCa(EVP_PKEY* key, const std::string& common_name, std::chrono::seconds validity,
                                   shared::WallTime now);
// An intermediate CA certificate for `subject_key`, signed by the root.
Result<shared::X509Ptr> MakeIntermediateCa(EVP_PKEY* subject_key, const std::string& common_name, X509* issuer_cert,
                                           EVP_PKEY* issuer_key, std::chrono::seconds validity, shared::WallTime now);

// Checks a public key against the allowed key types; RSA below 2048 bits is always
// refused. kInvalidArgument with the reason.
Status CheckKeyPolicy(EVP_PKEY* key, const std::vector<shared::KeyType>& allowed);

// An X509_NAME holding only CN=`common_name`.
Result<shared::X509NamePtr> NameFromCommonName(const std::string& common_name);

class Issuer;

// A certificate for one of the companion's own services (EST server, broker, its MQTT
// client): CN `common_name`, SANs from `hostnames` (addresses become IP SANs, the rest
// DNS), back-dated 5 minutes.
Result<shared::X509Ptr> IssueServiceCert(Issuer& issuer, EVP_PKEY* key, const std::string& common_name, Usage usage,
                                         const std::vector<std::string>& hostnames, std::chrono::seconds validity,
                                         shared::WallTime now);

class Issuer {
 public:
  Issuer(shared::X509Ptr issuing_cert, std::unique_ptr<hal::KeyHandle> issuing_key,
         std::vector<shared::X509Ptr> chain_above)
      : cert_(std::move(issuing_cert)), key_(std::move(issuing_key)), chain_above_(std::move(chain_above)) {}

  // Signs a certificate: random 159-bit serial, notBefore = now - backdate, notAfter =
  // now + validity capped at the issuing CA's own notAfter.
  Result<shared::X509Ptr> Issue(const CertTemplate& tmpl, shared::WallTime now);

  struct Revoked {
    std::string serial_hex;  // as in CertRecord::serial
    shared::WallTime revoked_at;
  };
  // A CRL signed by the issuing CA, valid from `now` to `now + validity`.
  Result<shared::X509CrlPtr> MakeCrl(const std::vector<Revoked>& revoked, shared::WallTime now,
                                     std::chrono::seconds validity);

  X509* cert() const { return cert_.get(); }
  // The issuing CA and the CAs above it (up to the root), for cacerts and TLS chains.
  std::vector<X509*> Chain() const;
  // PEM of the chain without the self-signed root: what follows a leaf certificate
  // so that a peer holding only the root can verify it.
  std::string IntermediatesPem() const;

 private:
  std::mutex mu_;
  shared::X509Ptr cert_;
  std::unique_ptr<hal::KeyHandle> key_;
  std::vector<shared::X509Ptr> chain_above_;
};

}  // namespace certfleet::companion
