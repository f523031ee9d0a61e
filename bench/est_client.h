// The load generator's side of one EST exchange: a new TCP connection, a full TLS
// handshake (never resumed), optionally one HTTP/1.1 request with `Connection: close`,
// and the complete response. Written against OpenSSL directly so that connection reuse
// and session resumption are under our control, which libcurl would hide.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::bench {

// https://HOST[:PORT][/LABEL], or a path that already starts with /.well-known/est.
struct EstUrl {
  std::string host;       // without IPv6 brackets
  std::string port;       // "443" when the URL names none
  std::string authority;  // HOST[:PORT] as written, for the Host header
  std::string base_path;  // "/.well-known/est" or "/.well-known/est/LABEL"
};
// kInvalidArgument unless `url` is an https URL of that shape.
shared::Result<EstUrl> ParseEstUrl(std::string_view url);

// Incremental HTTP/1.x response framing: Content-Length, chunked, or read-to-EOF.
enum class ParseState { kIncomplete, kComplete, kMalformed };
struct HttpResponse {
  ParseState state = ParseState::kIncomplete;
  int status = 0;
  std::string body;   // de-chunked
  std::string error;  // set when kMalformed
};
// Parses everything received so far; `at_eof` says the peer has closed, which
// completes a response that has neither Content-Length nor chunked framing.
HttpResponse ParseHttpResponse(std::string_view data, bool at_eof);

struct ClientOptions {
  std::string trust_anchor_file;  // PEM; the server certificate must chain to it
  std::string server_name;        // name checked in the server certificate (and SNI); default: URL host
  std::string client_cert_file;   // PEM chain, leaf first; empty = no client certificate
  std::string client_key_file;
  bool tls12_only = false;        // otherwise TLS 1.2 minimum, 1.3 preferred
  std::chrono::milliseconds timeout{30000};  // per socket read/write/connect
};

// The result of one exchange. `failure` is empty on success, otherwise a short
// category ("connect", "tls_handshake", "tls_io", "http_malformed") that the caller
// counts; `detail` says more, for the first occurrences only.
struct Exchange {
  std::string failure;
  std::string detail;
  int status = 0;
  std::string body;
};

// Thread-safe after Create: the SSL_CTX is only read by Run, and each call uses its
// own socket and SSL object.
class EstClient {
 public:
  // Resolves the host once and builds the client SSL_CTX with the session cache off.
  // kInvalidArgument for unreadable PEM files or an unresolvable host.
  static shared::Result<std::unique_ptr<EstClient>> Create(const EstUrl& url, const ClientOptions& options);

  // Connects, completes a full handshake and then: with an empty `request`, sends
  // close_notify and waits for the server to close (so the server has finished with
  // the client certificate); otherwise writes `request` (a complete HTTP request) and
  // reads the whole response.
  Exchange Run(std::string_view request) const;

 private:
  EstClient() = default;

  shared::SslCtxPtr ctx_;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  std::string sni_;  // empty for IP literals
  std::chrono::milliseconds timeout_{0};
};

}  // namespace certfleet::bench
