#include "companion/est_server.h"

#include "companion/https_listener.h"

#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

// Accept any client certificate at the TLS layer; EstService verifies it against the
// trust store that fits the operation. A client without a certificate is accepted too.
int AcceptAnyClientCert(int, X509_STORE_CTX*) { return 1; }

}  // namespace

EstServer::EstServer(EstService& service, const EstConfig& config, const std::string& tls_chain_pem, EVP_PKEY* tls_key,
                     sh::Logger& log)
    : service_(service), config_(config), log_(log) {
  server_ = std::make_unique<HttpsListener>([&](SSL_CTX& ctx) -> bool {
    sh::Status st = UseServerIdentity(ctx, tls_chain_pem, tls_key, "EST TLS certificate/key");
    if (!st.ok()) {
      init_error_ = st.message();
      return false;
    }
    SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER, AcceptAnyClientCert);
    // EST clients open a connection per operation and do not resume sessions; minting
    // TLS 1.3 tickets would cost a third of the handshake for nothing.
    SSL_CTX_set_num_tickets(&ctx, 0);
    static const unsigned char kSessionContext[] = "certfleet-est";
    SSL_CTX_set_session_id_context(&ctx, kSessionContext, sizeof kSessionContext - 1);
    return true;
  });
  if (!server_->is_valid()) return;
  ConfigureConnections(*server_, config_.threads, config_.max_body_bytes, 20);

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
  return BindListener(static_cast<HttpsListener&>(*server_), config_.listen, "EST");
}

Status EstServer::Serve() {
  if (!static_cast<HttpsListener&>(*server_).Serve()) return Status(Code::kUnavailable, "EST listener stopped with an error");
  return Status::Ok();
}

void EstServer::Stop() { static_cast<HttpsListener&>(*server_).Stop(); }

}  // namespace certfleet::companion
