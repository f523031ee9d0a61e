#include "bench/est_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "shared/x509/openssl_error.h"

namespace certfleet::bench {

using shared::Code;
namespace sh = shared;

namespace {

constexpr std::string_view kEstRoot = "/.well-known/est";

bool IsIpLiteral(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) {
           return std::tolower(x) == std::tolower(y);
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Parses a non-negative decimal or hexadecimal number; false on anything else or overflow.
bool ParseSize(std::string_view s, int base, size_t& out) {
  if (s.empty() || s.size() > 15) return false;
  size_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    v = v * static_cast<size_t>(base) + static_cast<size_t>(d);
  }
  out = v;
  return true;
}

HttpResponse Malformed(std::string error) {
  HttpResponse r;
  r.state = ParseState::kMalformed;
  r.error = std::move(error);
  return r;
}

// Decodes a chunked body that starts at data[0]. kIncomplete until the last chunk and
// the trailer section have arrived.
HttpResponse Dechunk(std::string_view data, HttpResponse r) {
  size_t pos = 0;
  for (;;) {
    size_t eol = data.find("\r\n", pos);
    if (eol == std::string_view::npos) return r;
    std::string_view line = data.substr(pos, eol - pos);
    line = Trim(line.substr(0, line.find(';')));  // chunk extensions are ignored
    size_t size = 0;
    if (!ParseSize(line, 16, size)) return Malformed("bad chunk size");
    pos = eol + 2;
    if (size == 0) {
      // Trailer fields, then an empty line.
      for (;;) {
        size_t end = data.find("\r\n", pos);
        if (end == std::string_view::npos) return r;
        if (end == pos) {
          r.state = ParseState::kComplete;
          return r;
        }
        pos = end + 2;
      }
    }
    if (data.size() < pos + size + 2) return r;
    r.body.append(data.substr(pos, size));
    if (data.substr(pos + size, 2) != "\r\n") return Malformed("chunk not followed by CRLF");
    pos += size + 2;
  }
}

// Closes a socket when it goes out of scope.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Exchange Fail(std::string failure, std::string detail) {
  Exchange e;
  e.failure = std::move(failure);
  e.detail = std::move(detail);
  return e;
}

// Why the last SSL call on `ssl` failed, including the drained error queue.
std::string SslFailure(SSL* ssl, int rc, const char* what) {
  int err = SSL_get_error(ssl, rc);
  int saved_errno = errno;
  std::string msg = what;
  std::string queue = sh::DrainOpenSslErrors();
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    msg += ": timed out";
  } else if (err == SSL_ERROR_SYSCALL) {
    msg += saved_errno != 0 ? std::string(": ") + std::strerror(saved_errno) : ": connection closed";
  } else if (err == SSL_ERROR_ZERO_RETURN) {
    msg += ": connection closed";
  }
  if (!queue.empty()) msg += ": " + queue;
  if (SSL_get_verify_result(ssl) != X509_V_OK) {
    msg += std::string(" (certificate verification: ") + X509_verify_cert_error_string(SSL_get_verify_result(ssl)) + ")";
  }
  return msg;
}

}  // namespace

sh::Result<EstUrl> ParseEstUrl(std::string_view url) {
  constexpr std::string_view kScheme = "https://";
  if (url.size() <= kScheme.size() || !EqualsIgnoreCase(url.substr(0, kScheme.size()), kScheme)) {
    return sh::Error(Code::kInvalidArgument, "URL must start with https://: '" + std::string(url) + "'");
  }
  std::string_view rest = url.substr(kScheme.size());
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) {
    return sh::Error(Code::kInvalidArgument, "put credentials in --user/--password, not in the URL");
  }
  EstUrl out;
  out.authority = std::string(authority);
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return sh::Error(Code::kInvalidArgument, "unterminated IPv6 literal in URL");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return sh::Error(Code::kInvalidArgument, "junk after IPv6 literal in URL");
      port = after.substr(1);
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  size_t port_number = 443;
  if (!port.empty() && (!ParseSize(port, 10, port_number) || port_number == 0 || port_number > 65535)) {
    return sh::Error(Code::kInvalidArgument, "bad port in URL: '" + std::string(port) + "'");
  }
  if (host.empty()) return sh::Error(Code::kInvalidArgument, "URL has no host");
  out.host = std::string(host);
  out.port = std::to_string(port_number);

  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path.empty() || path == "/") {
    out.base_path = std::string(kEstRoot);
  } else if (path.substr(0, kEstRoot.size()) == kEstRoot &&
             (path.size() == kEstRoot.size() || path[kEstRoot.size()] == '/')) {
    out.base_path = std::string(path);
  } else {
    out.base_path = std::string(kEstRoot) + std::string(path);
  }
  std::string_view label = std::string_view(out.base_path).substr(kEstRoot.size());
  if (!label.empty()) label.remove_prefix(1);
  if (label.find('/') != std::string_view::npos || label.find_first_of("?#% ") != std::string_view::npos) {
    return sh::Error(Code::kInvalidArgument, "the URL path must be empty or one CA label: '" + std::string(path) + "'");
  }
  return out;
}

namespace {

HttpResponse ParseFramed(std::string_view data, bool at_eof) {
  HttpResponse r;
  size_t head_end = data.find("\r\n\r\n");
  if (head_end == std::string_view::npos) {
    if (data.size() > 64 * 1024) return Malformed("response header larger than 64 KiB");
    if (at_eof) return Malformed(data.empty() ? "connection closed without a response" : "truncated response header");
    return r;
  }
  std::string_view head = data.substr(0, head_end);
  std::string_view body = data.substr(head_end + 4);
  size_t eol = head.find("\r\n");
  std::string_view status_line = head.substr(0, eol);
  // HTTP/1.x SP 3DIGIT [SP reason]
  if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ' ||
      !std::isdigit(static_cast<unsigned char>(status_line[9])) ||
      !std::isdigit(static_cast<unsigned char>(status_line[10])) ||
      !std::isdigit(static_cast<unsigned char>(status_line[11]))) {
    return Malformed("bad status line");
  }
  r.status = (status_line[9] - '0') * 100 + (status_line[10] - '0') * 10 + (status_line[11] - '0');

  bool chunked = false;
  bool have_length = false;
  size_t length = 0;
  std::string_view fields = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (!fields.empty()) {
    size_t end = fields.find("\r\n");
    std::string_view line = fields.substr(0, end);
    fields = end == std::string_view::npos ? std::string_view() : fields.substr(end + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return Malformed("header line without a colon");
    std::string_view name = line.substr(0, colon);
    std::string_view value = Trim(line.substr(colon + 1));
    if (EqualsIgnoreCase(name, "Content-Length")) {
      size_t n = 0;
      if (!ParseSize(value, 10, n) || (have_length && n != length)) return Malformed("bad Content-Length");
      have_length = true;
      length = n;
    } else if (EqualsIgnoreCase(name, "Transfer-Encoding")) {
      std::string_view last = Trim(value.substr(value.rfind(',') == std::string_view::npos ? 0 : value.rfind(',') + 1));
      chunked = EqualsIgnoreCase(last, "chunked");
    }
  }
  if (r.status == 204 || r.status == 304 || (r.status >= 100 && r.status < 200)) {
    r.state = ParseState::kComplete;  // no body by definition
    return r;
  }
  if (chunked) return Dechunk(body, std::move(r));
  if (have_length) {
    if (body.size() < length) {
      if (at_eof) return Malformed("response body shorter than Content-Length");
      return r;
    }
    r.body = std::string(body.substr(0, length));
    r.state = ParseState::kComplete;
    return r;
  }
  if (!at_eof) return r;
  r.body = std::string(body);
  r.state = ParseState::kComplete;
  return r;
}

}  // namespace

HttpResponse ParseHttpResponse(std::string_view data, bool at_eof) {
  HttpResponse r = ParseFramed(data, at_eof);
  if (at_eof && r.state == ParseState::kIncomplete) return Malformed("connection closed before the response was complete");
  return r;
}

sh::Result<std::unique_ptr<EstClient>> EstClient::Create(const EstUrl& url, const ClientOptions& options) {
  std::unique_ptr<EstClient> c(new EstClient());
  c->timeout_ = options.timeout;

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = AF_UNSPEC;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(url.host.c_str(), url.port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return sh::Error(Code::kInvalidArgument, "cannot resolve " + url.host + ": " + gai_strerror(rc));
  }
  std::memcpy(&c->addr_, res->ai_addr, res->ai_addrlen);
  c->addr_len_ = res->ai_addrlen;
  freeaddrinfo(res);

  c->ctx_.reset(SSL_CTX_new(TLS_client_method()));
  SSL_CTX* ctx = c->ctx_.get();
  if (ctx == nullptr) return sh::Error(sh::OpenSslStatus(Code::kInternal, "SSL_CTX_new"));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, options.tls12_only ? TLS1_2_VERSION : TLS1_3_VERSION);
  // Every request pays for a full handshake: no session cache, no tickets.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (SSL_CTX_load_verify_locations(ctx, options.trust_anchor_file.c_str(), nullptr) != 1) {
    return sh::Error(sh::OpenSslStatus(Code::kInvalidArgument, "loading trust anchor " + options.trust_anchor_file));
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  std::string name = options.server_name.empty() ? url.host : options.server_name;
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx);
  if (IsIpLiteral(name)) {
    if (X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str()) != 1) {
      return sh::Error(sh::OpenSslStatus(Code::kInvalidArgument, "server IP address " + name));
    }
  } else {
    if (X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0) != 1) {
      return sh::Error(sh::OpenSslStatus(Code::kInvalidArgument, "server name " + name));
    }
    c->sni_ = name;
  }
  if (!options.client_cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, options.client_cert_file.c_str()) != 1) {
      return sh::Error(sh::OpenSslStatus(Code::kInvalidArgument, "loading client certificate " + options.client_cert_file));
    }
    SSL_CTX_set_default_passwd_cb(ctx, sh::NoPassphrase);
    if (SSL_CTX_use_PrivateKey_file(ctx, options.client_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      return sh::Error(sh::OpenSslStatus(Code::kInvalidArgument, "loading client key " + options.client_key_file));
    }
  }
  return c;
}

Exchange EstClient::Run(std::string_view request) const {
  Socket sock(socket(addr_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) return Fail("connect", std::string("socket: ") + std::strerror(errno));
  int one = 1;
  setsockopt(sock.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout_.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout_.count() % 1000) * 1000);
  setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // bounds connect() too
  if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr_), addr_len_) != 0) {
    return Fail("connect", std::string("connect: ") + std::strerror(errno));
  }

  sh::SslPtr ssl(SSL_new(ctx_.get()));
  if (!ssl || SSL_set_fd(ssl.get(), sock.get()) != 1) return Fail("tls_handshake", sh::DrainOpenSslErrors());
  if (!sni_.empty()) SSL_set_tlsext_host_name(ssl.get(), sni_.c_str());
  int rc = SSL_connect(ssl.get());
  if (rc != 1) return Fail("tls_handshake", SslFailure(ssl.get(), rc, "handshake"));

  if (request.empty()) {
    // Handshake only. Under TLS 1.3 the server checks our certificate after we consider
    // the handshake done; waiting for its close makes that work part of what is timed,
    // and surfaces a rejection as an alert.
    SSL_shutdown(ssl.get());
    char buf[4096];
    for (;;) {
      int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n > 0) continue;
      int err = SSL_get_error(ssl.get(), n);
      if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && (errno == 0 || errno == ECONNRESET))) {
        sh::DrainOpenSslErrors();
        return {};
      }
      return Fail("tls_io", SslFailure(ssl.get(), n, "waiting for close"));
    }
  }

  size_t written = 0;
  while (written < request.size()) {
    int n = SSL_write(ssl.get(), request.data() + written, static_cast<int>(request.size() - written));
    if (n <= 0) return Fail("tls_io", SslFailure(ssl.get(), n, "write"));
    written += static_cast<size_t>(n);
  }
  std::string received;
  char buf[16384];
  for (;;) {
    int n = SSL_read(ssl.get(), buf, sizeof buf);
    bool eof = false;
    if (n > 0) {
      received.append(buf, static_cast<size_t>(n));
      if (received.size() > (1u << 20)) return Fail("http_malformed", "response larger than 1 MiB");
    } else {
      int err = SSL_get_error(ssl.get(), n);
      if (err != SSL_ERROR_ZERO_RETURN && !(err == SSL_ERROR_SYSCALL && errno == 0)) {
        return Fail("tls_io", SslFailure(ssl.get(), n, "read"));
      }
      sh::DrainOpenSslErrors();
      eof = true;
    }
    HttpResponse r = ParseHttpResponse(received, eof);
    if (r.state == ParseState::kMalformed) return Fail("http_malformed", r.error);
    if (r.state == ParseState::kComplete) {
      Exchange e;
      e.status = r.status;
      e.body = std::move(r.body);
      if (!eof) SSL_shutdown(ssl.get());  // our close_notify; the server closes anyway
      sh::DrainOpenSslErrors();
      return e;
    }
  }
}

}  // namespace certfleet::bench
