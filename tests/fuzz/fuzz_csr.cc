// Fuzzes the PKCS#10 parsers (EST simpleenroll bodies, CreateCertificateFromCsr, CVM)
// and what the companion does next with a parsed CSR.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "shared/core/base64.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"

namespace {

using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer only

void Inspect(X509_REQ* csr) {
  Status st = VerifyCsrSignature(csr);
  (void)st;
  GeneralNamesPtr sans = CsrSans(csr);
  (void)CanonicalSans(sans.get());
  const X509_NAME* subject = X509_REQ_get_subject_name(csr);
  (void)NameCommonName(subject);
  (void)NameToString(subject);
  (void)DescribeKey(X509_REQ_get0_pubkey(csr));
  (void)CsrToDer(csr);
  (void)CsrToPem(csr);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);

  if (auto csr = CsrFromDer(input)) Inspect(csr->get());

  // The same bytes as the body of a PEM block, and the input as PEM text itself.
  std::string pem = "-----BEGIN CERTIFICATE REQUEST-----\n" + Base64Encode(input) +
                    "-----END CERTIFICATE REQUEST-----\n";
  if (auto csr = CsrFromPem(pem)) Inspect(csr->get());
  if (auto csr = CsrFromPem(input)) Inspect(csr->get());

  DrainOpenSslErrors();
  return 0;
}
