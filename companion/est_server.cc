#include "companion/est_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

// httplib's listener with two things the packaged library does not let us configure:
// a listen backlog that does not drop connection bursts (it is compiled in as 5), and
// no SO_REUSEPORT (which would let a second server share, and silently split, the port).
class Listener final : public httplib::SSLServer {
 public:
  using httplib::SSLServer::SSLServer;
  // After bind: a second listen() on a listening socket resizes its backlog.
  bool WidenBacklog() { return ::listen(svr_sock_, SOMAXCONN) == 0; }
};

void OnlyReuseAddr(int sock) {
  int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
}

// Accept any client certificate at the TLS layer; EstService verifies it against the
// trust store that fits the operation. A client without a certificate is accepted too.
int AcceptAnyClientCert(int, X509_STORE_CTX*) { return 1; }

}  // namespace

EstServer::EstServer(EstService& service, const EstConfig& config, const std::string& tls_chain_pem, EVP_PKEY* tls_key,
                     sh::Logger& log)
    : service_(service), config_(config), log_(log) {
  server_ = std::make_unique<Listener>([&](SSL_CTX& ctx) -> bool {
    auto chain = sh::CertsFromPem(tls_chain_pem);
    if (!chain) {
      init_error_ = chain.error().message();
      return false;
    }
    if (SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate(&ctx, chain->front().get()) != 1 || SSL_CTX_use_PrivateKey(&ctx, tls_key) != 1 ||
        SSL_CTX_check_private_key(&ctx) != 1) {
      init_error_ = sh::OpenSslStatus(Code::kInvalidArgument, "EST TLS certificate/key").message();
      return false;
    }
    for (size_t i = 1; i < chain->size(); ++i) {
      X509_up_ref((*chain)[i].get());
      SSL_CTX_add_extra_chain_cert(&ctx, (*chain)[i].get());
    }
    SSL_CTX_set_options(&ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER, AcceptAnyClientCert);
    // EST clients open a connection per operation and do not resume sessions; minting
    // TLS 1.3 tickets would cost a third of the handshake for nothing.
    SSL_CTX_set_num_tickets(&ctx, 0);
    static const unsigned char kSessionContext[] = "certfleet-est";
    SSL_CTX_set_session_id_context(&ctx, kSessionContext, sizeof kSessionContext - 1);
    return true;
  });
  if (!server_->is_valid()) return;
  int threads = config_.threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server_->set_payload_max_length(static_cast<size_t>(config_.max_body_bytes));
  server_->set_read_timeout(std::chrono::seconds(10));
  server_->set_write_timeout(std::chrono::seconds(10));
  server_->set_keep_alive_max_count(20);
  server_->set_keep_alive_timeout(5);
  server_->set_tcp_nodelay(true);
  server_->set_socket_options(OnlyReuseAddr);

  auto handler = [this](const httplib::Request& hreq, httplib::Response& hres) {
    EstRequest req;
    req.method = hreq.method;
    req.path = hreq.path;
    req.content_type = hreq.get_header_value("Content-Type");
    req.authorization = hreq.get_header_value("Authorization");
    req.body = hreq.body;
    req.remote = hreq.remote_addr + ":" + std::to_string(hreq.remote_port);
    sh::X509Ptr peer;
    if (hreq.ssl != nullptr) {
      peer.reset(SSL_get1_peer_certificate(hreq.ssl));
      req.peer_chain = SSL_get_peer_cert_chain(hreq.ssl);
    }
    req.peer_cert = peer.get();
    EstResponse res = service_.Handle(req);
    hres.status = res.status;
    for (const auto& [k, v] : res.headers) hres.set_header(k, v);
    hres.set_content(res.body, res.content_type);
  };
  server_->Get(R"(/\.well-known/est/.*)", handler);
  server_->Post(R"(/\.well-known/est/.*)", handler);
  server_->Put(R"(/\.well-known/est/.*)", handler);
  server_->Delete(R"(/\.well-known/est/.*)", handler);
  server_->Get("/cvm/v1/certificates", handler);
  server_->Post("/cvm/v1/certificates", handler);
  server_->set_error_handler([](const httplib::Request& hreq, httplib::Response& hres) {
    if (!hres.body.empty()) return;
    std::string msg;
    switch (hres.status) {
      case 404: msg = "not found: " + hreq.path; break;
      case 413: msg = "request body too large"; break;
      case 400: msg = "bad request"; break;
      default: msg = "error " + std::to_string(hres.status);
    }
    hres.set_content(msg + "\n", "text/plain; charset=utf-8");
  });
  server_->set_exception_handler([this](const httplib::Request&, httplib::Response& hres, std::exception_ptr) {
    log_.Error("EST handler failed with an exception");
    hres.status = 500;
    hres.set_content("internal error\n", "text/plain; charset=utf-8");
  });
}

EstServer::~EstServer() = default;

sh::Result<std::string> EstServer::Bind() {
  if (!server_->is_valid()) return sh::Error(Code::kInvalidArgument, "EST TLS setup failed: " + init_error_);
  const std::string& listen = config_.listen;
  auto colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = std::stoi(listen.substr(colon + 1));
  int bound = port;
  if (port == 0) {
    bound = server_->bind_to_any_port(host);
    if (bound < 0) return sh::Error(Code::kUnavailable, "cannot bind EST listener to " + listen);
  } else if (!server_->bind_to_port(host, port)) {
    return sh::Error(Code::kUnavailable, "cannot bind EST listener to " + listen + ": " + std::strerror(errno));
  }
  if (!static_cast<Listener*>(server_.get())->WidenBacklog()) {
    return sh::Error(Code::kUnavailable, "cannot listen on " + listen + ": " + std::strerror(errno));
  }
  std::string addr = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(bound);
  return addr;
}

Status EstServer::Serve() {
  if (!server_->listen_after_bind()) return Status(Code::kUnavailable, "EST listener stopped with an error");
  return Status::Ok();
}

void EstServer::Stop() { server_->stop(); }

}  // namespace certfleet::companion
