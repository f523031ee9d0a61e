#include "companion/est_service.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cctype>

#include "shared/core/base64.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

constexpr std::string_view kPrefix = "/.well-known/est/";

EstResponse Text(int status, std::string message) {
  EstResponse r;
  r.status = status;
  r.body = std::move(message);
  r.body += '\n';
  return r;
}

EstResponse CertsOnly(const std::string& der, const char* content_type) {
  EstResponse r;
  r.status = 200;
  r.content_type = content_type;
  r.body = sh::Base64Encode(der);
  r.headers.emplace_back("Content-Transfer-Encoding", "base64");
  return r;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The media type without parameters, lower case, trimmed.
std::string MediaType(std::string_view content_type) {
  auto semi = content_type.find(';');
  std::string_view t = content_type.substr(0, semi);
  while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
  while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
  return Lower(t);
}

struct BasicCredentials {
  std::string user;
  std::string password;
};

std::optional<BasicCredentials> ParseBasic(std::string_view header) {
  if (header.size() < 6 || Lower(header.substr(0, 6)) != "basic ") return std::nullopt;
  auto decoded = sh::Base64Decode(header.substr(6));
  if (!decoded) return std::nullopt;
  struct Wipe {
    std::string& s;
    ~Wipe() { OPENSSL_cleanse(s.data(), s.size()); }
  } wipe{*decoded};
  // The user is the device serial, which may contain ':' (MAC-style serials are
  // allowed by certfleetctl); tokens never do, so split at the last colon.
  auto colon = decoded->rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  return BasicCredentials{decoded->substr(0, colon), decoded->substr(colon + 1)};
}

bool SameSans(const GENERAL_NAMES* a, const GENERAL_NAMES* b) { return sh::CanonicalSans(a) == sh::CanonicalSans(b); }

// The EST label of a request path ("/.well-known/est/<label>/<op>"), as a list for hook
// inputs: empty without a label.
std::vector<std::string> PathLabels(std::string_view path) {
  if (path.substr(0, kPrefix.size()) != kPrefix) return {};
  path.remove_prefix(kPrefix.size());
  auto slash = path.find('/');
  if (slash == std::string_view::npos) return {};
  return {std::string(path.substr(0, slash))};
}

// The profile key type of an accepted public key ("ec-p256", ...), "" if none matches.
std::string ProfileKeyTypeName(EVP_PKEY* key) {
  for (sh::KeyType t : {sh::KeyType::kEcP256, sh::KeyType::kEcP384, sh::KeyType::kRsa2048, sh::KeyType::kRsa3072}) {
    if (CheckKeyPolicy(key, {t}).ok()) return std::string(sh::KeyTypeName(t));
  }
  return "";
}

}  // namespace

EnrollHookInput EstService::EnrollInput(const EstRequest& req, std::string_view event, std::string_view method,
                                        const std::string& thing_name, X509_REQ* csr, EVP_PKEY* pub,
                                        const std::string& client_cert_id) {
  EnrollHookInput in;
  in.event = std::string(event);
  in.method = std::string(method);
  in.thing_name = thing_name;
  in.csr_subject = sh::NameToString(X509_REQ_get_subject_name(csr));
  in.csr_public_key_type = ProfileKeyTypeName(pub);
  in.client_certificate_id = client_cert_id;
  in.remote_address = req.remote;
  in.labels = PathLabels(req.path);
  return in;
}

std::string TokenHash(std::string_view token) { return sh::Sha256Hex(token); }

sh::Result<std::string> NewToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return sh::Error(sh::OpenSslStatus(Code::kInternal, "RAND_bytes"));
  std::string b64 = sh::Base64UrlEncode(std::string_view(reinterpret_cast<char*>(bytes), sizeof bytes));
  OPENSSL_cleanse(bytes, sizeof bytes);
  return b64;
}

EstService::EstService(CompanionState& state, const sh::Clock& clock, sh::Logger& log, EstHooks hooks)
    : state_(state), clock_(clock), log_(log), hooks_(std::move(hooks)) {
  auto der = sh::BuildCertsOnly(state_.issuer->Chain());
  cacerts_body_ = der ? *der : std::string();
  for (const auto& name : state_.config.profile.key_types) {
    if (auto t = sh::ParseKeyType(name)) allowed_keys_.push_back(*t);
  }
  if (hooks_.runner != nullptr && (hooks_.specs.post_enroll || hooks_.specs.post_reenroll)) {
    post_hooks_ = std::make_unique<PostHookQueue>(*hooks_.runner, log_);
  }
}

EstService::~EstService() = default;

void EstService::DrainPostHooks() {
  if (post_hooks_) post_hooks_->Drain();
}

std::optional<EstResponse> EstService::RunPreHook(const EstRequest& req, const std::optional<HookSpec>& spec,
                                                  const std::string& who, const EnrollHookInput& input) {
  if (!spec || hooks_.runner == nullptr) return std::nullopt;
  HookDecision decision = DecideAllow(hooks_.runner->Run(*spec, input.event, BuildEnrollHookInput(input)));
  if (decision.allow) return std::nullopt;
  log_.Warn("EST request denied by hook", {{"event", input.event}, {"method", input.method}, {"who", who},
                                           {"thing", input.thing_name}, {"remote", req.remote},
                                           {"reason", decision.reason}});
  SecurityEvent ev{0, clock_.Now(), "hook_denied", who.empty() ? req.remote : who,
                   input.event + " hook: " + decision.reason + " (thing " + input.thing_name + ", from " + req.remote + ")"};
  Status st = state_.registry->RecordSecurityEvent(ev);
  if (!st.ok()) log_.Error("recording security event failed", {{"error", st.ToString()}});
  return Text(403, "enrollment denied by policy");
}

void EstService::QueuePostHook(const std::optional<HookSpec>& spec, std::string_view event, std::string_view method,
                               X509* cert, const std::string& thing_name, const std::string& previous_id) {
  if (!spec || !post_hooks_) return;
  sh::CertInfo info = sh::DescribeCert(cert);
  IssuedHookInput in;
  in.event = std::string(event);
  in.method = std::string(method);
  in.thing_name = thing_name;
  in.certificate_id = info.id;
  in.serial = info.serial;
  in.not_after = info.not_after;
  in.previous_certificate_id = previous_id;
  post_hooks_->Post(*spec, event, BuildIssuedHookInput(in));
}

EstResponse EstService::Reject(const EstRequest& req, int status, const std::string& kind, const std::string& who,
                               const std::string& message) {
  log_.Warn("EST request rejected", {{"kind", kind}, {"who", who}, {"remote", req.remote}, {"reason", message}});
  SecurityEvent ev{0, clock_.Now(), kind, who.empty() ? req.remote : who, message + " (from " + req.remote + ")"};
  Status st = state_.registry->RecordSecurityEvent(ev);
  if (!st.ok()) log_.Error("recording security event failed", {{"error", st.ToString()}});
  EstResponse r = Text(status, message);
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"certfleet EST\", charset=\"UTF-8\"");
  return r;
}

EstResponse EstService::Handle(const EstRequest& req) {
  std::string_view path = req.path;
  if (path == "/cvm/v1/certificates") {
    if (req.method != "POST") {
      EstResponse r = Text(405, "method not allowed; use POST");
      r.headers.emplace_back("Allow", "POST");
      return r;
    }
    return Observed("cvm", Cvm(req));
  }
  if (path.substr(0, kPrefix.size()) != kPrefix) return Text(404, "not found: " + req.path);
  path.remove_prefix(kPrefix.size());
  std::string_view op = path;
  auto slash = path.find('/');
  if (slash != std::string_view::npos) {
    std::string_view label = path.substr(0, slash);
    op = path.substr(slash + 1);
    const auto& labels = state_.config.est.labels;
    if (op.find('/') != std::string_view::npos || std::find(labels.begin(), labels.end(), label) == labels.end()) {
      return Text(404, "not found: " + req.path);
    }
  }
  auto need = [&](const char* method) -> std::optional<EstResponse> {
    if (req.method == method) return std::nullopt;
    EstResponse r = Text(405, "method not allowed; use " + std::string(method));
    r.headers.emplace_back("Allow", method);
    return r;
  };
  if (op == "cacerts") {
    if (auto r = need("GET")) return *r;
    return CaCerts();
  }
  if (op == "csrattrs") {
    if (auto r = need("GET")) return *r;
    EstResponse r;
    r.status = 204;  // no attributes required
    return r;
  }
  if (op == "simpleenroll") {
    if (auto r = need("POST")) return *r;
    return Observed("simpleenroll", Enroll(req));
  }
  if (op == "simplereenroll") {
    if (auto r = need("POST")) return *r;
    return Observed("simplereenroll", Reenroll(req));
  }
  if (op == "serverkeygen" || op == "fullcmc") return Text(501, std::string(op) + " is not supported");
  return Text(404, "not found: " + req.path);
}

EstResponse EstService::CaCerts() {
  if (cacerts_body_.empty()) return Text(500, "CA certificates unavailable");
  return CertsOnly(cacerts_body_, kPkcs7Mime);
}

namespace {

// Decodes and checks the request body common to both enrollment operations.
struct ParsedCsr {
  sh::X509ReqPtr csr;
  int status = 0;
  std::string error;
};

ParsedCsr ParseCsrBody(const EstRequest& req) {
  ParsedCsr out;
  if (MediaType(req.content_type) != kPkcs10) {
    out.status = 415;
    out.error = "expected Content-Type application/pkcs10, got '" + req.content_type + "'";
    return out;
  }
  auto der = sh::Base64Decode(req.body);
  if (!der) {
    out.status = 400;
    out.error = "malformed request body: " + der.error().message();
    return out;
  }
  auto csr = sh::CsrFromDer(*der);
  if (!csr) {
    out.status = 400;
    out.error = "malformed CSR: " + csr.error().message();
    return out;
  }
  Status st = sh::VerifyCsrSignature(csr->get());
  if (!st.ok()) {
    out.status = 400;
    out.error = st.message();
    return out;
  }
  out.csr = std::move(*csr);
  return out;
}

}  // namespace

std::optional<EstResponse> EstService::CheckToken(const EstRequest& req, const std::string& serial,
                                                  const std::string& token, sh::WallTime now, std::string& hash) {
  const std::string who = "serial:" + serial;
  hash = TokenHash(token);
  auto tok = state_.registry->FindToken(hash);
  if (!tok) return Text(503, "registry unavailable");
  if (!*tok) return Reject(req, 401, "token_unknown", who, "unknown enrollment token");
  if ((*tok)->used_at) return Reject(req, 401, "token_reused", who, "enrollment token already used");
  if ((*tok)->expires_at <= now) return Reject(req, 401, "token_expired", who, "enrollment token expired");
  if ((*tok)->serial != serial) return Reject(req, 401, "token_foreign", who, "enrollment token belongs to another serial");
  return std::nullopt;
}

EstResponse EstService::Enroll(const EstRequest& req) {
  const sh::WallTime now = clock_.Now();
  // 1. Who is asking: a bootstrap (claim) certificate or a one-time token.
  std::optional<std::string> token_hash;
  std::string serial;
  std::string who;
  bool claim_ok = false;
  if (req.peer_cert != nullptr) {
    who = sh::CertFingerprint(req.peer_cert);
    if (state_.bootstrap_trust) {
      Status st = state_.bootstrap_trust->Verify(req.peer_cert, req.peer_chain, now);
      claim_ok = st.ok();
      if (!claim_ok && req.authorization.empty()) {
        return Reject(req, 403, "untrusted_client_certificate", who, "client certificate not accepted for enrollment: " + st.message());
      }
    } else if (req.authorization.empty()) {
      return Reject(req, 403, "untrusted_client_certificate", who, "no bootstrap trust is configured; enroll with a token");
    }
  }
  if (!claim_ok) {
    if (req.authorization.empty()) return Reject(req, 401, "missing_credentials", "", "authentication required");
    auto creds = ParseBasic(req.authorization);
    if (!creds) return Reject(req, 401, "malformed_credentials", "", "malformed Authorization header");
    serial = creds->user;
    who = "serial:" + serial;
    std::string hash;
    if (auto refused = CheckToken(req, serial, creds->password, now, hash)) return *refused;
    OPENSSL_cleanse(creds->password.data(), creds->password.size());
    token_hash = hash;
  }

  // 2. What is asked for.
  ParsedCsr parsed = ParseCsrBody(req);
  if (!parsed.csr) return Reject(req, parsed.status, "bad_request", who, parsed.error);
  X509_REQ* csr = parsed.csr.get();
  EVP_PKEY* pub = X509_REQ_get0_pubkey(csr);
  Status st = CheckKeyPolicy(pub, allowed_keys_);
  if (!st.ok()) return Reject(req, 400, "key_policy", who, st.message());
  std::string cn = sh::NameCommonName(X509_REQ_get_subject_name(csr));
  if (token_hash) {
    if (cn.empty()) cn = serial;
    if (cn != serial) return Reject(req, 403, "subject_mismatch", who, "the CSR's common name must equal the token's serial '" + serial + "'");
  }
  if (!IsValidThingName(cn)) return Reject(req, 400, "bad_subject", who, "the CSR's common name '" + cn + "' is not a valid thing name");
  sh::GeneralNamesPtr sans = sh::CsrSans(csr);
  if (sans && sk_GENERAL_NAME_num(sans.get()) > 0 && !state_.config.profile.allow_csr_sans) {
    return Reject(req, 400, "san_not_allowed", who, "subjectAltName in the CSR is not allowed by the certificate profile");
  }

  CertTemplate tmpl;
  auto name = NameFromCommonName(cn);
  if (!name) return Reject(req, 400, "bad_subject", who, name.error().message());
  tmpl.subject = std::move(*name);
  tmpl.sans = std::move(sans);
  tmpl.public_key = pub;
  tmpl.validity = state_.config.profile.validity;
  tmpl.backdate = state_.config.profile.backdate;
  // 3. The operator's pre-enroll hook, before anything is issued or the token consumed.
  const std::string_view method = token_hash ? kEnrollMethodToken : kEnrollMethodClaim;
  if (auto denied = RunPreHook(req, hooks_.specs.pre_enroll, who,
                               EnrollInput(req, kHookEventPreEnroll, method, cn, csr, pub, token_hash ? "" : who))) {
    return *denied;
  }

  // 4. Issue and record durably before answering.
  IssueRecord rec;
  rec.cert.thing_name = cn;
  rec.cert.source = token_hash ? "est-enroll-token" : "est-enroll-claim";
  rec.token_hash = token_hash;
  rec.require_no_current = !token_hash;
  EstResponse refused;
  sh::X509Ptr cert = IssueAndRecordCert(req, who, tmpl, std::move(rec), now, refused);
  if (!cert) return refused;
  QueuePostHook(hooks_.specs.post_enroll, kHookEventPostEnroll, method, cert.get(), cn, "");
  return CertsOnlyResponse(cert.get());
}

EstResponse EstService::Reenroll(const EstRequest& req) {
  const sh::WallTime now = clock_.Now();
  if (req.peer_cert == nullptr) {
    return Reject(req, 401, "missing_credentials", "", "re-enrollment requires the current certificate as TLS client certificate");
  }
  std::string who = sh::CertFingerprint(req.peer_cert);
  Status st = state_.device_trust.Verify(req.peer_cert, req.peer_chain, now);
  // Set when the certificate expired and is accepted within est.expired_reenroll_grace.
  std::optional<sh::WallTime> expired_at;
  if (!st.ok()) {
    const sh::WallTime not_after = sh::DescribeCert(req.peer_cert).not_after;
    if (not_after >= now) return Reject(req, 403, "untrusted_client_certificate", who, st.message());
    // Only the leaf's expiry may be forgiven: the chain must have verified just before it
    // expired, and the CAs above it must be valid now.
    Status at_expiry = state_.device_trust.VerifyExpiredLeaf(req.peer_cert, req.peer_chain, now);
    if (!at_expiry.ok()) return Reject(req, 403, "untrusted_client_certificate", who, at_expiry.message());
    const auto grace = state_.config.est.expired_reenroll_grace;
    if (grace.count() == 0 || now - not_after > grace) {
      return Reject(req, 403, "expired_certificate", who,
                    "expired_certificate: client certificate expired at " + sh::FormatRfc3339(not_after) +
                        (grace.count() == 0 ? "; re-enrollment after expiry is not allowed"
                                            : "; beyond the expired re-enrollment grace period"));
    }
    expired_at = not_after;
  }
  auto found = state_.registry->FindCert(who);
  if (!found) return Text(503, "registry unavailable");
  if (!*found) return Reject(req, 403, "unknown_client_certificate", who, "client certificate is not in the registry");
  const CertRecord& current = **found;
  if (current.status == CertStatus::kRevoked) return Reject(req, 403, "revoked_certificate", who, "client certificate is revoked");
  if (current.status != CertStatus::kActive) {
    return Reject(req, 403, "inactive_certificate", who, "client certificate is " + std::string(CertStatusName(current.status)));
  }
  // A quarantined thing (docs/audit.md) gets no new identity, the expired-certificate
  // grace included, until an operator lifts the quarantine.
  auto thing = state_.registry->FindThing(current.thing_name);
  if (!thing) return Text(503, "registry unavailable");
  if (*thing && (*thing)->quarantined_at) {
    return Reject(req, 403, "quarantined_thing", who, "thing '" + current.thing_name + "' is quarantined");
  }
  if (current.superseded_at && *current.superseded_at + state_.config.est.superseded_grace <= now) {
    return Reject(req, 403, "superseded_certificate", who, "client certificate was replaced and its grace period is over");
  }
  if (expired_at && current.superseded_by) {
    // The superseded grace is for a lost answer, not for an identity that also expired.
    return Reject(req, 403, "expired_certificate",
                  who, "expired_certificate: an expired certificate may re-enroll only while it is its thing's current one");
  }
  if (current.superseded_by) {
    // A replaced certificate may ask again only while its replacement stands: once the
    // operator revoked or deactivated the replacement, the old one must not bring it back.
    auto successor = state_.registry->FindCert(*current.superseded_by);
    if (!successor) return Text(503, "registry unavailable");
    if (!*successor || (*successor)->status != CertStatus::kActive) {
      return Reject(req, 403, "superseded_certificate", who, "client certificate was replaced and its replacement is no longer active");
    }
  }

  ParsedCsr parsed = ParseCsrBody(req);
  if (!parsed.csr) return Reject(req, parsed.status, "bad_request", who, parsed.error);
  X509_REQ* csr = parsed.csr.get();
  EVP_PKEY* pub = X509_REQ_get0_pubkey(csr);
  if (X509_NAME_cmp(X509_REQ_get_subject_name(csr), X509_get_subject_name(req.peer_cert)) != 0) {
    return Reject(req, 403, "subject_mismatch", who, "the CSR's Subject differs from the current certificate's");
  }
  sh::GeneralNamesPtr csr_sans = sh::CsrSans(csr);
  sh::GeneralNamesPtr cert_sans(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(req.peer_cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!SameSans(csr_sans.get(), cert_sans.get())) {
    return Reject(req, 403, "subject_mismatch", who, "the CSR's SubjectAltName differs from the current certificate's");
  }
  st = CheckKeyPolicy(pub, allowed_keys_);
  if (!st.ok()) return Reject(req, 400, "key_policy", who, st.message());
  bool same_key = sh::SamePublicKey(pub, X509_get0_pubkey(req.peer_cert));
  if (same_key && state_.config.est.reenroll_require_new_key) {
    return Reject(req, 400, "key_reuse", who, "re-enrollment requires a new key");
  }

  CertTemplate tmpl;
  tmpl.subject.reset(X509_NAME_dup(X509_get_subject_name(req.peer_cert)));
  tmpl.sans = std::move(cert_sans);
  tmpl.public_key = pub;
  tmpl.validity = state_.config.profile.validity;
  tmpl.backdate = state_.config.profile.backdate;
  if (auto denied = RunPreHook(req, hooks_.specs.pre_reenroll, who,
                               EnrollInput(req, kHookEventPreReenroll, kEnrollMethodReenroll, current.thing_name, csr,
                                           pub, who))) {
    return *denied;
  }

  IssueRecord rec;
  rec.cert.thing_name = current.thing_name;
  rec.cert.source = same_key ? "est-renew" : "est-rekey";
  rec.replaces_cert_id = current.id;
  if (expired_at) {
    // Recorded with the issuance, in its transaction: the event exists exactly when the
    // certificate does. IssueAndRecordCert appends the new certificate's id.
    rec.event = SecurityEvent{0, now, "expired_reenroll", who,
                              "thing " + current.thing_name + " re-enrolled with a certificate expired at " +
                                  sh::FormatRfc3339(*expired_at) + " (serial " + current.serial + ", from " +
                                  req.remote + ")"};
  }
  EstResponse refused;
  sh::X509Ptr cert = IssueAndRecordCert(req, who, tmpl, std::move(rec), now, refused);
  if (!cert) return refused;
  if (expired_at) {
    log_.Warn("expired certificate re-enrolled within grace",
              {{"thing", current.thing_name}, {"serial", current.serial}, {"fingerprint", who},
               {"not_after", sh::FormatRfc3339(*expired_at)}, {"remote", req.remote}});
  }
  QueuePostHook(hooks_.specs.post_reenroll, kHookEventPostReenroll, kEnrollMethodReenroll, cert.get(),
                current.thing_name, current.id);
  return CertsOnlyResponse(cert.get());
}

EstResponse EstService::CertsOnlyResponse(X509* cert) {
  auto der = sh::BuildCertsOnly({cert});
  if (!der) return Text(500, "encoding response failed");
  return CertsOnly(*der, kPkcs7CertsOnly);
}

sh::X509Ptr EstService::IssueAndRecordCert(const EstRequest& req, const std::string& who, const CertTemplate& tmpl,
                                           IssueRecord rec, sh::WallTime now, EstResponse& refused) {
  auto cert = state_.issuer->Issue(tmpl, now);
  if (!cert) {
    log_.Error("issuance failed", {{"error", cert.error().ToString()}});
    refused = Text(500, "issuance failed");
    return nullptr;
  }
  sh::CertInfo info = sh::DescribeCert(cert->get());
  CertRecord& c = rec.cert;
  c.id = info.id;
  c.serial = info.serial;
  c.subject = info.subject;
  c.not_before = info.not_before;
  c.not_after = info.not_after;
  c.issued_at = now;
  c.status = CertStatus::kActive;
  c.pem = sh::CertToPem(cert->get());
  if (rec.event) rec.event->detail += ": new certificate " + info.id;
  Status st = state_.registry->RecordIssued(rec, now);
  if (!st.ok()) {
    if (st.code() == Code::kPermissionDenied) {
      refused = Reject(req, 403, "quarantined_thing", who, st.message());
      return nullptr;
    }
    if (st.code() == Code::kFailedPrecondition) {
      // Lost a race: the token was used, or the thing enrolled, since the check.
      refused = Reject(req, rec.token_hash ? 401 : 403, rec.token_hash ? "token_reused" : "thing_exists", who,
                       st.message());
      return nullptr;
    }
    log_.Error("recording certificate failed", {{"error", st.ToString()}});
    if (sh::IsRetryable(st.code())) {
      refused = Text(503, "registry busy, retry later");
      refused.headers.emplace_back("Retry-After", "5");
      return nullptr;
    }
    refused = Text(500, "recording the certificate failed");
    return nullptr;
  }
  log_.Info("issued", {{"thing", c.thing_name}, {"serial", info.serial}, {"fingerprint", info.id},
                       {"not_after", sh::FormatRfc3339(info.not_after)}, {"source", c.source},
                       {"replaces", rec.replaces_cert_id.value_or("")}});
  return std::move(*cert);
}

}  // namespace certfleet::companion
