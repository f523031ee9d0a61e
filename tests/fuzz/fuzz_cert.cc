// Fuzzes the certificate parsers (certificatePem from fleet provisioning, trust bundles,
// mTLS peers) and DescribeCert, CertSans and chain verification on what they return.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shared/core/base64.h"
#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace {

using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer only

void Inspect(X509* cert) {
  CertInfo info = DescribeCert(cert);
  if (info.id != CertFingerprint(cert) || info.id.size() != 64) std::abort();
  (void)CertSans(cert);
  (void)CertToPem(cert);
  // Self-anchored verification walks signature, time and extension checks.
  if (auto store = TrustStore::FromCerts({cert})) {
    Status st = store->Verify(cert, nullptr, FromUnixSeconds(1767225600));
    (void)st;
    st = store->Verify(cert, nullptr, WallTime{}, /*ignore_time=*/true);
    (void)st;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);

  if (auto cert = CertFromDer(input)) {
    Inspect(cert->get());
    // Not checked: that CertToDer gives back `input`. OpenSSL accepts some non-DER forms
    // (e.g. unused bits in the signature BIT STRING) and re-encodes them canonically.
    if (!CertFromDer(CertToDer(cert->get()))) std::abort();
  }

  if (auto certs = CertsFromPem(input)) {
    for (const auto& cert : *certs) Inspect(cert.get());
  }
  std::string pem = "-----BEGIN CERTIFICATE-----\n" + Base64Encode(input) + "-----END CERTIFICATE-----\n";
  if (auto certs = CertsFromPem(pem)) {
    for (const auto& cert : *certs) Inspect(cert.get());
  }

  DrainOpenSslErrors();
  return 0;
}
