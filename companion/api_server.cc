#include "companion/api_server.h"

#include "companion/https_listener.h"

#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

void Reply(const ApiResponse& res, httplib::Response& hres) {
  hres.status = res.status;
  for (const auto& [k, v] : res.headers) hres.set_header(k, v);
  hres.set_header("X-Content-Type-Options", "nosniff");
  hres.set_content(res.body, res.content_type);
}

}  // namespace

sh::Status CheckOperatorCaIsSeparate(const std::string& client_ca_pem, const std::vector<std::string>& fleet_ca_pems) {
  CF_ASSIGN_OR_RETURN(std::vector<sh::X509Ptr> operator_cas, sh::CertsFromPem(client_ca_pem));
  for (const std::string& pem : fleet_ca_pems) {
    if (pem.empty()) continue;
    CF_ASSIGN_OR_RETURN(std::vector<sh::X509Ptr> fleet, sh::CertsFromPem(pem));
    for (const auto& f : fleet) {
      for (const auto& o : operator_cas) {
        if (EVP_PKEY_eq(X509_get0_pubkey(f.get()), X509_get0_pubkey(o.get())) == 1) {
          return sh::Status(Code::kInvalidArgument,
                            "api.client_ca_file trusts a fleet CA (" + sh::DescribeCert(f.get()).subject +
                                "): its device or claim certificates would authenticate as operators; use a CA of "
                                "the operators' own");
        }
      }
    }
  }
  return sh::Status::Ok();
}

ApiServer::ApiServer(ApiService& service, const ApiConfig& config, const std::string& tls_chain_pem, EVP_PKEY* tls_key,
                     const std::string& client_ca_pem, sh::Logger& log)
    : service_(service), config_(config), log_(log) {
  server_ = std::make_unique<HttpsListener>([&](SSL_CTX& ctx) -> bool {
    sh::Status st = UseServerIdentity(ctx, tls_chain_pem, tls_key, "API TLS certificate/key");
    if (!st.ok()) {
      init_error_ = st.message();
      return false;
    }
    if (!client_ca_pem.empty()) {
      auto cas = sh::CertsFromPem(client_ca_pem);
      if (!cas || cas->empty()) {
        init_error_ = "api.client_ca_file holds no certificate";
        return false;
      }
      X509_STORE* store = SSL_CTX_get_cert_store(&ctx);
      STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
      for (auto& ca : *cas) {
        X509_STORE_add_cert(store, ca.get());
        sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(ca.get())));
      }
      SSL_CTX_set_client_CA_list(&ctx, names);
      // Optional: a client without a certificate may still present a bearer token; a
      // certificate that does not chain to the operator CA fails the handshake.
      SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER, nullptr);
      SSL_CTX_set_verify_depth(&ctx, 4);
    } else {
      SSL_CTX_set_verify(&ctx, SSL_VERIFY_NONE, nullptr);
    }
    static const unsigned char kSessionContext[] = "certfleet-api";
    SSL_CTX_set_session_id_context(&ctx, kSessionContext, sizeof kSessionContext - 1);
    return true;
  });
  if (!server_->is_valid()) return;
  // Operators' clients (certfleetctl pages, dashboards) reuse their connections.
  ConfigureConnections(*server_, config_.threads, config_.max_body_bytes, 100);

  auto handler = [this](const httplib::Request& hreq, httplib::Response& hres) {
    ApiRequest req;
    req.method = hreq.method;
    req.path = hreq.path;
    // The query comes from the URL only: cpp-httplib also merges a form-encoded body into
    // params, and a JSON body sent with curl's default form content type must not become
    // "query parameters".
    const auto q = hreq.target.find('?');
    if (q != std::string::npos) {
      httplib::Params params;
      httplib::detail::parse_query_text(hreq.target.substr(q + 1), params);
      for (const auto& [k, v] : params) req.query.emplace(k, v);
    }
    req.authorization = hreq.get_header_value("Authorization");
    req.body = hreq.body;
    req.remote = hreq.remote_addr + ":" + std::to_string(hreq.remote_port);
    if (hreq.ssl != nullptr && SSL_get_verify_result(hreq.ssl) == X509_V_OK) {
      sh::X509Ptr peer(SSL_get1_peer_certificate(hreq.ssl));
      if (peer) req.client_cert_cn = sh::NameCommonName(X509_get_subject_name(peer.get()));
    }
    Reply(service_.Handle(req), hres);
  };
  // Every path reaches the service, whose router answers 404 and 405 in JSON.
  server_->Get(".*", handler);
  server_->Post(".*", handler);
  server_->Put(".*", handler);
  server_->Delete(".*", handler);
  server_->Patch(".*", handler);
  server_->set_error_handler([](const httplib::Request&, httplib::Response& hres) {
    if (!hres.body.empty()) return;
    ApiResponse r = hres.status == 413   ? JsonError(413, "payload_too_large", "request body too large")
                    : hres.status == 400 ? JsonError(400, "bad_request", "malformed request")
                                         : JsonError(hres.status, "error", "request failed");
    Reply(r, hres);
  });
  server_->set_exception_handler([this](const httplib::Request&, httplib::Response& hres, std::exception_ptr) {
    log_.Error("API handler failed with an exception");
    Reply(JsonError(500, "internal", "internal error"), hres);
  });
}

ApiServer::~ApiServer() = default;

sh::Result<std::string> ApiServer::Bind(const std::string& listen_override) {
  if (!server_->is_valid()) return sh::Error(Code::kInvalidArgument, "API TLS setup failed: " + init_error_);
  return BindListener(static_cast<HttpsListener&>(*server_), listen_override.empty() ? config_.listen : listen_override,
                      "API");
}

Status ApiServer::Serve() {
  if (!static_cast<HttpsListener&>(*server_).Serve()) return Status(Code::kUnavailable, "API listener stopped with an error");
  return Status::Ok();
}

void ApiServer::Stop() { static_cast<HttpsListener&>(*server_).Stop(); }

}  // namespace certfleet::companion
