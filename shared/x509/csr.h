// PKCS#10 certificate signing requests.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::shared {

struct CsrRequest {
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  // Optional challengePassword attribute (EST proof-of-possession linking).
  std::string challenge_password;
};

// Builds a CSR signed with `key` (any EVP_PKEY: software, PKCS#11, TPM). SHA-256.
Result<X509ReqPtr> BuildCsr(EVP_PKEY* key, const CsrRequest& request);
// Builds a CSR for exactly this subject name and SAN extension (re-enrollment copies
// them from the current certificate). `sans` may be null.
Result<X509ReqPtr> BuildCsrWithName(EVP_PKEY* key, const X509_NAME* subject, const GENERAL_NAMES* sans);

std::string CsrToDer(X509_REQ* csr);
std::string CsrToPem(X509_REQ* csr);

// kInvalidArgument unless `der` is exactly one DER CSR.
Result<X509ReqPtr> CsrFromDer(std::string_view der);
Result<X509ReqPtr> CsrFromPem(std::string_view pem);

// Proof of possession: the CSR is signed by the key it carries. kInvalidArgument if not.
Status VerifyCsrSignature(X509_REQ* csr);

// The CSR's requested subjectAltName extension, or null.
GeneralNamesPtr CsrSans(X509_REQ* csr);

}  // namespace certfleet::shared
