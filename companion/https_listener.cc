#include "companion/https_listener.h"

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

namespace sh = shared;
using sh::Code;

bool HttpsListener::WidenBacklog() { return ::listen(svr_sock_, SOMAXCONN) == 0; }

bool HttpsListener::Serve() {
  serving_ = true;
  // Either Stop() sees serving_ (and waits for the loop), or this sees its request.
  const bool ok = stop_requested_ || listen_after_bind();
  serving_ = false;
  return ok;
}

void HttpsListener::Stop() {
  stop_requested_ = true;
  while (serving_ && !is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  stop();
}

void OnlyReuseAddr(int sock) {
  int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
}

void ConfigureConnections(httplib::SSLServer& server, int threads, int64_t max_body, size_t keep_alive_max) {
  server.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server.set_payload_max_length(static_cast<size_t>(max_body));
  server.set_read_timeout(std::chrono::seconds(10));
  server.set_write_timeout(std::chrono::seconds(10));
  server.set_keep_alive_max_count(keep_alive_max);
  server.set_keep_alive_timeout(5);
  server.set_tcp_nodelay(true);
  server.set_socket_options(OnlyReuseAddr);
}

sh::Status UseServerIdentity(SSL_CTX& ctx, const std::string& chain_pem, EVP_PKEY* key, std::string_view what) {
  auto chain = sh::CertsFromPem(chain_pem);
  if (!chain) return chain.error();
  if (SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_use_certificate(&ctx, chain->front().get()) != 1 || SSL_CTX_use_PrivateKey(&ctx, key) != 1 ||
      SSL_CTX_check_private_key(&ctx) != 1) {
    return sh::OpenSslStatus(Code::kInvalidArgument, std::string(what));
  }
  for (size_t i = 1; i < chain->size(); ++i) {
    X509_up_ref((*chain)[i].get());
    SSL_CTX_add_extra_chain_cert(&ctx, (*chain)[i].get());
  }
  SSL_CTX_set_options(&ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  return sh::Status::Ok();
}

sh::Result<std::string> BindListener(HttpsListener& listener, const std::string& listen, std::string_view what) {
  const auto colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const int port = std::stoi(listen.substr(colon + 1));
  int bound = port;
  const std::string where = "cannot bind " + std::string(what) + " listener to " + listen;
  if (port == 0) {
    bound = listener.bind_to_any_port(host);
    if (bound < 0) return sh::Error(Code::kUnavailable, where);
  } else if (!listener.bind_to_port(host, port)) {
    return sh::Error(Code::kUnavailable, where + ": " + std::strerror(errno));
  }
  if (!listener.WidenBacklog()) {
    return sh::Error(Code::kUnavailable, "cannot listen on " + listen + ": " + std::strerror(errno));
  }
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(bound);
}

}  // namespace certfleet::companion
