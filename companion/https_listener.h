// What the companion's two HTTPS listeners (EST, operator API) share: cpp-httplib's TLS
// server with a real listen backlog and no SO_REUSEPORT, the server identity loaded into
// its SSL_CTX, and binding to "host:port" (port 0: an ephemeral one).
#pragma once

#include <httplib.h>
#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::companion {

// httplib's listener with two things the packaged library does not let us configure: a
// listen backlog that does not drop connection bursts (it is compiled in as 5), and no
// SO_REUSEPORT (which would let a second server share, and silently split, the port).
//
// And a stop that is never lost: httplib's stop() does nothing until the listen loop has
// started, so a SIGTERM that arrives between bind and listen would leave Serve() running
// for ever. Serve/Stop may be called from different threads, in either order.
class HttpsListener final : public httplib::SSLServer {
 public:
  using httplib::SSLServer::SSLServer;
  // After bind: a second listen() on a listening socket resizes its backlog.
  bool WidenBacklog();
  // listen_after_bind, unless Stop() came first. False when the loop failed.
  bool Serve();
  // Ends Serve(): waits (milliseconds) for its loop to start if it is about to, then stops it.
  void Stop();

 private:
  std::atomic<bool> serving_{false};
  std::atomic<bool> stop_requested_{false};
};

// The socket options the listeners set: SO_REUSEADDR only (set_socket_options).
void OnlyReuseAddr(int sock);

// What both listeners set the same way: `threads` workers, bodies of at most `max_body`
// bytes, 10 s read and write timeouts, at most `keep_alive_max` requests per connection
// (5 s idle), TCP_NODELAY, OnlyReuseAddr.
void ConfigureConnections(httplib::SSLServer& server, int threads, int64_t max_body, size_t keep_alive_max);

// Loads the server identity into `ctx`: the leaf and intermediates of `chain_pem`, `key`
// (checked against the leaf), TLS 1.2 at least, no renegotiation, server cipher order.
// kInvalidArgument naming `what` ("EST TLS certificate/key") when any of it fails.
shared::Status UseServerIdentity(SSL_CTX& ctx, const std::string& chain_pem, EVP_PKEY* key, std::string_view what);

// Binds `listener` to `listen` ("host:port", "[v6]:port"; port 0 picks one) and widens
// its backlog. Returns the bound address in the same form. kUnavailable naming `what`.
shared::Result<std::string> BindListener(HttpsListener& listener, const std::string& listen, std::string_view what);

}  // namespace certfleet::companion
