// An EST (RFC 7030) client over libcurl, written to work with any conforming server:
// explicit trust anchor, TLS 1.2 minimum, lenient decoding (RFC 8951), 202 +
// Retry-After handled by resending the same request. The TLS client key comes from
// the hal (any EVP_PKEY), handed to OpenSSL through libcurl's SSL_CTX callback.
//
// Not thread-safe: one client per thread. curl_global_init must have run (main).
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::agent {

using shared::Result;
using shared::Status;

struct EstClientOptions {
  // "https://host:port" optionally followed by "/<label>"; "/.well-known/est" is implied.
  std::string server;
  // PEM of the CA(s) that must sign the server's certificate chain.
  std::string trust_anchor_pem;
  // HTTP Basic credentials (over TLS only).
  std::string user;
  std::string password;
  // TLS client authentication: certificate chain PEM (leaf first) and its key (borrowed).
  std::string client_cert_pem;
  EVP_PKEY* client_key = nullptr;
  std::chrono::seconds connect_timeout{15};
  std::chrono::seconds request_timeout{60};
  // Total time to keep waiting on 202 Accepted before giving up (kDeadlineExceeded).
  std::chrono::seconds max_pending_wait{std::chrono::minutes(30)};
  // Waits for a Retry-After; replaced in tests so that nothing sleeps.
  std::function<void(std::chrono::seconds)> sleep;
  // Caps TLS at 1.2 (for servers that need tls-unique, or for testing).
  bool tls12_only = false;
};

struct EstHttpResult {
  long status = 0;
  std::string content_type;
  std::string body;
  std::optional<std::string> retry_after;
  std::optional<shared::WallTime> server_date;  // the Date header, if any
};

class EstClient {
 public:
  explicit EstClient(EstClientOptions options);

  // GET /cacerts. The certificates the server's CA publishes (issuing CA first).
  Result<std::vector<shared::X509Ptr>> CaCerts();
  // POST /simpleenroll, /simplereenroll with a DER CSR. The issued certificate.
  Result<shared::X509Ptr> SimpleEnroll(const std::string& csr_der);
  Result<shared::X509Ptr> SimpleReenroll(const std::string& csr_der);

  // The newest Date header seen from the server (an input to the trusted-time rule).
  std::optional<shared::WallTime> last_server_date() const { return last_server_date_; }

 private:
  Result<EstHttpResult> Perform(const std::string& op, const std::string* body);
  Result<shared::X509Ptr> Enroll(const std::string& op, const std::string& csr_der);

  EstClientOptions options_;
  std::optional<shared::WallTime> last_server_date_;
};

// "Retry-After" as seconds from `now`: delta-seconds or an HTTP-date. Unparseable -> nullopt.
std::optional<std::chrono::seconds> ParseRetryAfter(std::string_view value, shared::WallTime now);
// Decodes an EST certs-only response body (base64, lenient) into certificates.
Result<std::vector<shared::X509Ptr>> DecodeCertsOnlyBody(std::string_view content_type, std::string_view body);

}  // namespace certfleet::agent
