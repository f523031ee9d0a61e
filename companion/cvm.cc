// The certificate vending endpoint (CVM): for devices without a claim certificate.
//
//   POST /cvm/v1/certificates   Content-Type: application/json
//   {"serialNumber": "...", "registrationToken": "...", "certificateSigningRequest": "-----BEGIN ..."}
//   200 {"thingName", "certificateId", "certificatePem"}   (certificate, then the issuing CA)
//   4xx/5xx {"statusCode", "errorMessage"}
//
// The registration token is a one-time enrollment token from `certfleetctl token create`
// for that serial: checked and consumed in the transaction that records the certificate.
// A replayed or foreign token is refused and recorded as a security event. The pre-enroll
// hook (method "cvm") runs after these checks and before issuance; a deny is a 403.
#include <openssl/crypto.h>

#include <nlohmann/json.hpp>

#include "companion/cvm_request.h"
#include "companion/est_service.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"

namespace certfleet::companion {

namespace sh = shared;
using nlohmann::json;

namespace {

EstResponse Json(int status, const json& body) {
  EstResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = body.dump();
  return r;
}

// Turns a plain-text refusal into the endpoint's JSON error shape.
EstResponse AsJsonError(EstResponse r) {
  std::string message = r.body;
  while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) message.pop_back();
  EstResponse out = Json(r.status, {{"statusCode", r.status}, {"errorMessage", message}});
  out.headers = std::move(r.headers);
  return out;
}

}  // namespace

EstResponse EstService::Cvm(const EstRequest& req) {
  const sh::WallTime now = clock_.Now();
  auto media = req.content_type.substr(0, req.content_type.find(';'));
  if (media != "application/json") {
    return AsJsonError(Reject(req, 415, "bad_request", "", "expected Content-Type application/json"));
  }
  auto parsed = ParseCvmRequest(req.body);
  if (!parsed) return AsJsonError(Reject(req, 400, "bad_request", "", parsed.error().message()));
  struct Wipe {
    std::string& s;
    ~Wipe() { OPENSSL_cleanse(s.data(), s.size()); }
  } wipe{parsed->registration_token};
  const std::string& serial = parsed->serial_number;
  if (!IsValidThingName(serial)) return AsJsonError(Reject(req, 400, "bad_request", "", "bad serialNumber"));
  const std::string who = "serial:" + serial;
  std::string token_hash;
  if (auto refused = CheckToken(req, serial, parsed->registration_token, now, token_hash)) return AsJsonError(*refused);

  auto csr = sh::CsrFromPem(parsed->csr_pem);
  if (!csr) return AsJsonError(Reject(req, 400, "bad_request", who, "malformed CSR: " + csr.error().message()));
  Status st = sh::VerifyCsrSignature(csr->get());
  if (!st.ok()) return AsJsonError(Reject(req, 400, "bad_request", who, st.message()));
  EVP_PKEY* pub = X509_REQ_get0_pubkey(csr->get());
  st = CheckKeyPolicy(pub, allowed_keys_);
  if (!st.ok()) return AsJsonError(Reject(req, 400, "key_policy", who, st.message()));
  std::string cn = sh::NameCommonName(X509_REQ_get_subject_name(csr->get()));
  if (!cn.empty() && cn != serial) {
    return AsJsonError(Reject(req, 403, "subject_mismatch", who, "the CSR's common name must be the serial number"));
  }
  sh::GeneralNamesPtr sans = sh::CsrSans(csr->get());
  if (sans && sk_GENERAL_NAME_num(sans.get()) > 0 && !state_.config.profile.allow_csr_sans) {
    return AsJsonError(Reject(req, 400, "san_not_allowed", who, "subjectAltName in the CSR is not allowed"));
  }

  CertTemplate tmpl;
  auto name = NameFromCommonName(serial);
  if (!name) return AsJsonError(Reject(req, 400, "bad_subject", who, name.error().message()));
  tmpl.subject = std::move(*name);
  tmpl.sans = std::move(sans);
  tmpl.public_key = pub;
  tmpl.validity = state_.config.profile.validity;
  tmpl.backdate = state_.config.profile.backdate;
  // The pre-enroll hook runs before issuance: a deny leaves the token unused.
  if (auto denied = RunPreHook(req, hooks_.specs.pre_enroll, who,
                               EnrollInput(req, kHookEventPreEnroll, kEnrollMethodCvm, serial, csr->get(), pub, ""))) {
    return AsJsonError(std::move(*denied));
  }
  IssueRecord rec;
  rec.cert.thing_name = serial;
  rec.cert.source = "cvm";
  rec.token_hash = token_hash;
  EstResponse refused;
  sh::X509Ptr cert = IssueAndRecordCert(req, who, tmpl, std::move(rec), now, refused);
  if (!cert) return AsJsonError(std::move(refused));
  QueuePostHook(hooks_.specs.post_enroll, kHookEventPostEnroll, kEnrollMethodCvm, cert.get(), serial, "");
  std::string chain = sh::CertToPem(cert.get()) + state_.issuer->IntermediatesPem();
  return Json(200, {{"thingName", serial}, {"certificateId", sh::CertFingerprint(cert.get())}, {"certificatePem", chain}});
}

}  // namespace certfleet::companion
