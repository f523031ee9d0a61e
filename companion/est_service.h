// EST (RFC 7030) request handling, independent of the HTTP transport so that it can
// be tested without sockets. The HTTPS server (est_server.h) turns each request into
// an EstRequest and writes the EstResponse back.
//
// Thread-safe: Handle() may run on many threads at once.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "companion/hook_set.h"
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

// Enrollment hooks (docs/hooks.md). Pre-enroll runs for simpleenroll (claim certificate or
// token) and the CVM endpoint, pre-reenroll for simplereenroll: after the request is
// authenticated and checked, before anything is issued or a token consumed. A deny answers
// 403 and records a "hook_denied" security event. Post-enroll and post-reenroll are queued
// once the certificate is durably recorded and never change the answer.
struct EstHooks {
  HookRunner* runner = nullptr;  // borrowed; must outlive the service; null = no hooks run
  HookSet specs;                 // the enroll and reenroll members are used
};

class EstService {
 public:
  // `state` must outlive the service and have its registry and issuer loaded.
  EstService(CompanionState& state, const shared::Clock& clock, shared::Logger& log, EstHooks hooks = {});
  // Finishes the post-hooks already queued.
  ~EstService();

  EstResponse Handle(const EstRequest& request);
  // Called once per enrollment answer (simpleenroll, simplereenroll, cvm) with the
  // operation and the HTTP status (metrics). Set before serving; must be thread-safe.
  void SetObserver(std::function<void(std::string_view operation, int http_status)> observer) {
    observer_ = std::move(observer);
  }
  // Blocks until the post-hooks queued so far have run (tests, shutdown).
  void DrainPostHooks();

 private:
  std::function<void(std::string_view, int)> observer_;
  EstResponse Observed(std::string_view operation, EstResponse r) {
    if (observer_) observer_(operation, r.status);
    return r;
  }
  EstResponse CaCerts();
  EstResponse Enroll(const EstRequest& request);
  EstResponse Reenroll(const EstRequest& request);
  // Signs `tmpl` and records it with `rec` (thing, source and links set by the caller; the
  // certificate fields are filled in here) durably; on failure null with the answer in `refused`.
  shared::X509Ptr IssueAndRecordCert(const EstRequest& request, const std::string& who, const CertTemplate& tmpl,
                                     IssueRecord rec, shared::WallTime now, EstResponse& refused);
  // The EST answer for an issued certificate: certs-only PKCS#7, base64.
  EstResponse CertsOnlyResponse(X509* cert);
  // A pre-hook input for a checked request.
  EnrollHookInput EnrollInput(const EstRequest& request, std::string_view event, std::string_view method,
                              const std::string& thing_name, X509_REQ* csr, EVP_PKEY* pub,
                              const std::string& client_cert_id);
  // A one-time token for `serial`: nullopt when it may be used (its hash in `hash`),
  // otherwise the refusal, recorded as a security event.
  std::optional<EstResponse> CheckToken(const EstRequest& request, const std::string& serial, const std::string& token,
                                        shared::WallTime now, std::string& hash);
  // POST /cvm/v1/certificates (cvm.cc).
  EstResponse Cvm(const EstRequest& request);
  EstResponse Reject(const EstRequest& request, int status, const std::string& kind, const std::string& who,
                     const std::string& message);
  // Runs the pre-hook `spec` (if set) for `input`: nullopt when allowed, otherwise the 403
  // refusal, recorded as a "hook_denied" security event.
  std::optional<EstResponse> RunPreHook(const EstRequest& request, const std::optional<HookSpec>& spec,
                                        const std::string& who, const EnrollHookInput& input);
  // Queues the post-hook `spec` (if set) for the certificate just recorded.
  void QueuePostHook(const std::optional<HookSpec>& spec, std::string_view event, std::string_view method,
                     X509* cert, const std::string& thing_name, const std::string& previous_id);

  CompanionState& state_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  std::string cacerts_body_;
  std::vector<shared::KeyType> allowed_keys_;
  EstHooks hooks_;
  std::unique_ptr<PostHookQueue> post_hooks_;  // set when a post-hook is configured
};

// The SHA-256 hex under which a token is stored.
std::string TokenHash(std::string_view token);
// A fresh token: 32 random bytes, base64url without padding (43 characters).
shared::Result<std::string> NewToken();

}  // namespace certfleet::companion
