// EST (RFC 7030) request handling, independent of the HTTP transport so that it can
// be tested without sockets. The HTTPS server (est_server.h) turns each request into
// an EstRequest and writes the EstResponse back.
//
// Thread-safe: Handle() may run on many threads at once.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "companion/init.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace certfleet::companion {

struct EstRequest {
  std::string method;  // "GET", "POST"
  std::string path;    // "/.well-known/est/simpleenroll"
  std::string content_type;
  std::string body;
  std::string authorization;                  // the Authorization header, if any
  X509* peer_cert = nullptr;                  // borrowed; the TLS client certificate
  STACK_OF(X509)* peer_chain = nullptr;       // borrowed; intermediates the client sent
  std::string remote;                         // "ip:port", for logs and security events
};

struct EstResponse {
  int status = 500;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Content types exactly as RFC 7030 writes them.
inline constexpr char kPkcs7Mime[] = "application/pkcs7-mime";
inline constexpr char kPkcs7CertsOnly[] = "application/pkcs7-mime; smime-type=certs-only";
inline constexpr char kPkcs10[] = "application/pkcs10";

class EstService {
 public:
  // `state` must outlive the service and have its registry and issuer loaded.
  EstService(CompanionState& state, const shared::Clock& clock, shared::Logger& log);

  EstResponse Handle(const EstRequest& request);

 private:
  EstResponse CaCerts();
  EstResponse Enroll(const EstRequest& request);
  EstResponse Reenroll(const EstRequest& request);
  // Signs `tmpl`, records it with `rec` (thing, source and links set by the caller;
  // the certificate fields are filled in here) durably, then answers with it.
  EstResponse IssueAndRecord(const EstRequest& request, const std::string& who, const CertTemplate& tmpl,
                             IssueRecord rec, shared::WallTime now);
  // The same, returning the certificate; on failure null with the answer in `refused`.
  shared::X509Ptr IssueAndRecordCert(const EstRequest& request, const std::string& who, const CertTemplate& tmpl,
                                     IssueRecord rec, shared::WallTime now, EstResponse& refused);
  // A one-time token for `serial`: nullopt when it may be used (its hash in `hash`),
  // otherwise the refusal, recorded as a security event.
  std::optional<EstResponse> CheckToken(const EstRequest& request, const std::string& serial, const std::string& token,
                                        shared::WallTime now, std::string& hash);
  // POST /cvm/v1/certificates (cvm.cc).
  EstResponse Cvm(const EstRequest& request);
  EstResponse Reject(const EstRequest& request, int status, const std::string& kind, const std::string& who,
                     const std::string& message);

  CompanionState& state_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  std::string cacerts_body_;
  std::vector<shared::KeyType> allowed_keys_;
};

// The SHA-256 hex under which a token is stored.
std::string TokenHash(std::string_view token);
// A fresh token: 32 random bytes, base64url without padding (43 characters).
shared::Result<std::string> NewToken();

}  // namespace certfleet::companion
