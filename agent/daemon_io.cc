#include "agent/daemon_io.h"

#include <openssl/x509v3.h>

#include <algorithm>

#include "shared/x509/csr.h"

namespace certfleet::agent {

using shared::Status;
namespace sh = shared;

namespace {

class MqttSession final : public Session {
 public:
  MqttSession(std::unique_ptr<sh::MqttClient> client, std::chrono::milliseconds timeout)
      : client_(std::move(client)), timeout_(timeout) {}
  ~MqttSession() override { client_->Disconnect(); }
  Status Publish(const std::string& topic, std::string_view payload, int qos, bool retain) override {
    return client_->Publish(topic, payload, qos, retain, timeout_);
  }
  bool connected() const override { return client_->connected(); }

 private:
  std::unique_ptr<sh::MqttClient> client_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

sh::Result<std::unique_ptr<Session>> MqttBroker::Connect(const ClientIdentity& identity, const sh::MqttWill& will,
                                                         const std::vector<std::string>& subscriptions,
                                                         SessionHandlers handlers) {
  sh::MqttOptions m;
  m.host = options_.host;
  m.port = options_.port;
  m.client_id = identity.client_id;
  m.keepalive_seconds = options_.keepalive_seconds;
  m.trust_anchor_pem = options_.trust_anchor_pem;
  m.client_cert_pem = identity.cert_pem;
  m.client_key = identity.key;
  m.verify_name = options_.verify_name.empty() ? options_.host : options_.verify_name;
  if (!will.payload.empty()) m.will = will;
  m.clean_session = true;
  CF_ASSIGN_OR_RETURN(auto client, sh::MqttClient::Create(m, log_));
  client->SetMessageHandler(std::move(handlers.on_message));
  client->SetConnectionHandler(std::move(handlers.on_connection));
  client->SetStandingSubscriptions(subscriptions, 1);
  CF_RETURN_IF_ERROR(client->Connect(options_.timeout));
  return std::unique_ptr<Session>(new MqttSession(std::move(client), options_.timeout));
}

sh::Result<Reenrolled> EstEnroller::Reenroll(const ClientIdentity& current, X509* current_cert, EVP_PKEY* new_key) {
  EstClientOptions o;
  o.server = options_.server;
  o.trust_anchor_pem = options_.trust_anchor_pem;
  o.tls12_only = options_.tls12_only;
  o.request_timeout = options_.timeout;
  o.connect_timeout = std::min(o.connect_timeout, options_.timeout);
  o.client_cert_pem = current.cert_pem;
  o.client_key = current.key;
  // The daemon must not hang on a server that keeps answering 202.
  o.max_pending_wait = std::chrono::minutes(10);
  EstClient client(std::move(o));
  Reenrolled out;
  CF_ASSIGN_OR_RETURN(out.ca_certs, client.CaCerts());
  sh::GeneralNamesPtr sans(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(current_cert, NID_subject_alt_name, nullptr, nullptr)));
  CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsrWithName(new_key, X509_get_subject_name(current_cert), sans.get()));
  auto cert = client.SimpleReenroll(sh::CsrToDer(csr.get()));
  out.server_date = client.last_server_date();
  if (!cert) return sh::Error(cert.error());
  out.cert = std::move(*cert);
  return out;
}

}  // namespace certfleet::agent
