// X.509 certificates: parse, encode, describe, verify.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::shared {

// Parsers return kInvalidArgument for anything that is not exactly what they expect.
Result<X509Ptr> CertFromDer(std::string_view der);
Result<X509Ptr> CertFromPem(std::string_view pem);  // the first certificate
// Every certificate in a PEM bundle; at least one.
Result<std::vector<X509Ptr>> CertsFromPem(std::string_view pem);

std::string CertToDer(X509* cert);
std::string CertToPem(X509* cert);
std::string CertsToPem(const std::vector<X509Ptr>& certs);

// Lower-case hex SHA-256 of the DER encoding (64 characters): the certificate id.
std::string CertFingerprint(X509* cert);
std::string Sha256Hex(std::string_view data);
// `bytes` random bytes (RAND_bytes) as lower-case hex: ids of rotations and audit tasks.
// kInternal if the generator fails.
Result<std::string> RandomHex(size_t bytes);

struct CertInfo {
  std::string id;       // SHA-256 fingerprint, hex
  std::string serial;   // hex, upper case, no separators
  std::string subject;  // RFC 2253 one-line form
  std::string issuer;
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  WallTime not_before;
  WallTime not_after;
  bool is_ca = false;
};
CertInfo DescribeCert(X509* cert);

// The subject's first commonName, or "".
std::string NameCommonName(const X509_NAME* name);
std::string NameToString(const X509_NAME* name);

// Subject alternative names as canonical strings ("DNS:x", "IP:1.2.3.4", ...) sorted,
// from a certificate's or a CSR's extension list. For Subject/SAN equality checks.
std::vector<std::string> CanonicalSans(const GENERAL_NAMES* names);
std::vector<std::string> CertSans(X509* cert);

// A set of trust anchors (and optional intermediates for chain building).
class TrustStore {
 public:
  static Result<TrustStore> FromPem(std::string_view pem);
  static Result<TrustStore> FromCerts(const std::vector<X509*>& certs);

  // Verifies `leaf` (with `untrusted` intermediates) at time `at`. With `ignore_time`,
  // validity periods are not checked (for the expired-certificate grace path).
  // kUnauthenticated with OpenSSL's reason when the chain does not verify.
  Status Verify(X509* leaf, STACK_OF(X509) * untrusted, WallTime at, bool ignore_time = false) const;
  // For an expired `leaf`: verifies the chain as it stood one second before the leaf's
  // notAfter, then requires every certificate above the leaf (intermediates and anchor)
  // to be valid at `now`, so an expired issuing CA is never forgiven. Does not decide
  // whether the leaf's expiry is acceptable; the caller does.
  // kUnauthenticated when the chain does not verify or a CA certificate is not valid now.
  Status VerifyExpiredLeaf(X509* leaf, STACK_OF(X509) * untrusted, WallTime now) const;

  const std::vector<X509Ptr>& anchors() const { return anchors_; }

 private:
  std::vector<X509Ptr> anchors_;
  X509StorePtr store_;
};

}  // namespace certfleet::shared
