#include "shared/mqtt/client.h"

#include <mosquitto.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::shared {

MqttLibrary::MqttLibrary() { mosquitto_lib_init(); }
MqttLibrary::~MqttLibrary() { mosquitto_lib_cleanup(); }

namespace {

bool IsIpAddress(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

Result<SslCtxPtr> BuildSslCtx(const MqttOptions& o) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return Error(OpenSslStatus(Code::kInternal, "SSL_CTX_new"));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> anchors, CertsFromPem(o.trust_anchor_pem));
  X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
  for (auto& c : anchors) X509_STORE_add_cert(store, c.get());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  // The broker's name is checked by OpenSSL during the handshake.
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx.get());
  std::string name = o.verify_name.empty() ? o.host : o.verify_name;
  int ok = IsIpAddress(name) ? X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str())
                             : X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
  if (ok != 1) return Error(OpenSslStatus(Code::kInvalidArgument, "broker name '" + name + "'"));
  if (o.client_key != nullptr) {
    CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> chain, CertsFromPem(o.client_cert_pem));
    if (SSL_CTX_use_certificate(ctx.get(), chain.front().get()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx.get(), o.client_key) != 1 || SSL_CTX_check_private_key(ctx.get()) != 1) {
      return Error(OpenSslStatus(Code::kInvalidArgument, "MQTT client certificate and key do not match"));
    }
    for (size_t i = 1; i < chain.size(); ++i) {
      X509_up_ref(chain[i].get());
      SSL_CTX_add_extra_chain_cert(ctx.get(), chain[i].get());
    }
  }
  return ctx;
}

Status MosqStatus(int rc, std::string_view what) {
  Code code = Code::kUnavailable;
  if (rc == MOSQ_ERR_INVAL || rc == MOSQ_ERR_MALFORMED_UTF8 || rc == MOSQ_ERR_PAYLOAD_SIZE) code = Code::kInvalidArgument;
  if (rc == MOSQ_ERR_NOMEM) code = Code::kResourceExhausted;
  if (rc == MOSQ_ERR_AUTH || rc == MOSQ_ERR_ACL_DENIED) code = Code::kPermissionDenied;
  return Status(code, std::string(what) + ": " + mosquitto_strerror(rc));
}

}  // namespace

Result<std::unique_ptr<MqttClient>> MqttClient::Create(const MqttOptions& options, Logger& log) {
  if (options.client_id.empty()) return Error(Code::kInvalidArgument, "MQTT client id is empty");
  std::unique_ptr<MqttClient> c(new MqttClient(log));
  c->options_ = options;
  CF_ASSIGN_OR_RETURN(c->ssl_ctx_, BuildSslCtx(options));
  c->mosq_ = mosquitto_new(options.client_id.c_str(), options.clean_session, c.get());
  if (c->mosq_ == nullptr) return Error(Code::kInternal, "mosquitto_new failed");
  mosquitto_int_option(c->mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  // Requests and replies are small: without this, Nagle's algorithm and delayed ACKs
  // add about 40 ms to each round trip (measured by bench/run_provision_bench.sh).
  mosquitto_int_option(c->mosq_, MOSQ_OPT_TCP_NODELAY, 1);
  int rc = mosquitto_void_option(c->mosq_, MOSQ_OPT_SSL_CTX, c->ssl_ctx_.get());
  if (rc != MOSQ_ERR_SUCCESS) return Error(MosqStatus(rc, "MQTT TLS context"));
  // libmosquitto uses TLS only when told so; with our own SSL_CTX the CA file is not
  // read, but one must be named. Our context already holds the trust anchors.
  mosquitto_int_option(c->mosq_, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
  mosquitto_reconnect_delay_set(c->mosq_, 1, 60, true);
  if (options.will) {
    const MqttWill& w = *options.will;
    rc = mosquitto_will_set(c->mosq_, w.topic.c_str(), static_cast<int>(w.payload.size()), w.payload.data(), w.qos, w.retain);
    if (rc != MOSQ_ERR_SUCCESS) return Error(MosqStatus(rc, "MQTT will"));
  }
  mosquitto_connect_callback_set(c->mosq_, &MqttClient::OnConnect);
  mosquitto_disconnect_callback_set(c->mosq_, &MqttClient::OnDisconnect);
  mosquitto_subscribe_callback_set(c->mosq_, &MqttClient::OnSubscribe);
  mosquitto_publish_callback_set(c->mosq_, &MqttClient::OnPublish);
  mosquitto_message_callback_set(c->mosq_, &MqttClient::OnMessage);
  return c;
}

MqttClient::~MqttClient() {
  Disconnect();
  if (mosq_ != nullptr) mosquitto_destroy(mosq_);
}

void MqttClient::SetMessageHandler(MessageHandler handler) {
  std::lock_guard lock(mu_);
  on_message_ = std::move(handler);
}

void MqttClient::SetStandingSubscriptions(std::vector<std::string> filters, int qos) {
  std::lock_guard lock(mu_);
  standing_filters_ = std::move(filters);
  standing_qos_ = qos;
}

void MqttClient::SetConnectionHandler(ConnectionHandler handler) {
  std::lock_guard lock(mu_);
  on_connection_ = std::move(handler);
}

void MqttClient::AddStandingSubscriptions(std::vector<std::string> filters, int qos) {
  std::lock_guard lock(mu_);
  for (auto& f : filters) extra_filters_.emplace_back(std::move(f), qos);
}

void MqttClient::AddMessageRoute(std::string filter, MessageHandler handler) {
  std::lock_guard lock(mu_);
  routes_.emplace_back(std::move(filter), std::move(handler));
}

void MqttClient::AddConnectionHandler(ConnectionHandler handler) {
  std::lock_guard lock(mu_);
  extra_connection_handlers_.push_back(std::move(handler));
}

bool MqttClient::connected() const {
  std::lock_guard lock(mu_);
  return connected_;
}

bool MqttClient::WaitFor(std::unique_lock<std::mutex>& lock, std::chrono::milliseconds timeout,
                         const std::function<bool()>& done) {
  return cv_.wait_for(lock, timeout, done);
}

Status MqttClient::Connect(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(mu_);
    connack_rc_ = -1;
  }
  int rc = mosquitto_connect_async(mosq_, options_.host.c_str(), options_.port, options_.keepalive_seconds);
  if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_ERRNO) {
    return MosqStatus(rc, "MQTT connect to " + options_.host + ":" + std::to_string(options_.port));
  }
  if (!loop_started_) {
    rc = mosquitto_loop_start(mosq_);
    if (rc != MOSQ_ERR_SUCCESS) return MosqStatus(rc, "MQTT network thread");
    loop_started_ = true;
  }
  std::unique_lock lock(mu_);
  if (!WaitFor(lock, timeout, [&] { return connack_rc_ >= 0; })) {
    return Status(Code::kUnavailable, "MQTT connect to " + options_.host + ":" + std::to_string(options_.port) +
                                          ": no CONNACK within " + std::to_string(timeout.count()) + " ms");
  }
  if (connack_rc_ != 0) {
    Code code = (connack_rc_ == 4 || connack_rc_ == 5) ? Code::kPermissionDenied : Code::kUnavailable;
    return Status(code, std::string("MQTT broker refused the connection: ") + mosquitto_connack_string(connack_rc_));
  }
  return Status::Ok();
}

Status MqttClient::Subscribe(const std::string& filter, int qos, std::chrono::milliseconds timeout) {
  int mid = 0;
  std::unique_lock lock(mu_);
  int rc = mosquitto_subscribe(mosq_, &mid, filter.c_str(), qos);
  if (rc != MOSQ_ERR_SUCCESS) return MosqStatus(rc, "MQTT subscribe " + filter);
  if (!WaitFor(lock, timeout, [&] { return suback_.count(mid) != 0; })) {
    return Status(Code::kDeadlineExceeded, "MQTT subscribe " + filter + ": no SUBACK");
  }
  int granted = suback_[mid];
  suback_.erase(mid);
  if (granted >= 0x80) return Status(Code::kPermissionDenied, "MQTT broker refused the subscription to " + filter);
  return Status::Ok();
}

Status MqttClient::Publish(const std::string& topic, std::string_view payload, int qos, bool retain,
                           std::chrono::milliseconds timeout) {
  int mid = 0;
  std::unique_lock lock(mu_);
  int rc = mosquitto_publish(mosq_, &mid, topic.c_str(), static_cast<int>(payload.size()), payload.data(), qos, retain);
  if (rc != MOSQ_ERR_SUCCESS) return MosqStatus(rc, "MQTT publish " + topic);
  if (qos == 0) return Status::Ok();
  if (!WaitFor(lock, timeout, [&] { return puback_.count(mid) != 0; })) {
    return Status(Code::kDeadlineExceeded, "MQTT publish " + topic + ": not acknowledged");
  }
  puback_.erase(mid);
  return Status::Ok();
}

void MqttClient::Disconnect() {
  if (mosq_ == nullptr) return;
  mosquitto_disconnect(mosq_);
  if (loop_started_) {
    // A client that never got a CONNACK is in libmosquitto's reconnect loop, which can
    // miss the stop request and sleep through its backoff (up to 60 s) before the join
    // returns; cancel that thread instead (it is in connect/select/sleep, cancellation
    // points, holding no lock).
    bool never_connected;
    {
      std::lock_guard lock(mu_);
      never_connected = connack_rc_ != 0;
    }
    mosquitto_loop_stop(mosq_, never_connected);
    loop_started_ = false;
  }
  std::lock_guard lock(mu_);
  connected_ = false;
}

void MqttClient::OnConnect(mosquitto*, void* self, int rc) {
  auto* c = static_cast<MqttClient*>(self);
  ConnectionHandler handler;
  std::vector<ConnectionHandler> extra_handlers;
  std::vector<std::pair<std::string, int>> filters;
  {
    std::lock_guard lock(c->mu_);
    c->connack_rc_ = rc;
    c->connected_ = rc == 0;
    handler = c->on_connection_;
    extra_handlers = c->extra_connection_handlers_;
    for (const auto& f : c->standing_filters_) filters.emplace_back(f, c->standing_qos_);
    filters.insert(filters.end(), c->extra_filters_.begin(), c->extra_filters_.end());
  }
  if (rc == 0) {
    for (const auto& [f, qos] : filters) {
      int sub_rc = mosquitto_subscribe(c->mosq_, nullptr, f.c_str(), qos);
      if (sub_rc != MOSQ_ERR_SUCCESS) {
        c->log_.Error("MQTT subscribe failed", {{"filter", f}, {"error", mosquitto_strerror(sub_rc)}});
      }
    }
  }
  c->cv_.notify_all();
  if (rc == 0) c->log_.Debug("MQTT connected", {{"client_id", c->options_.client_id}});
  if (handler) handler(rc == 0);
  for (const auto& h : extra_handlers) h(rc == 0);
}

void MqttClient::OnDisconnect(mosquitto*, void* self, int rc) {
  auto* c = static_cast<MqttClient*>(self);
  ConnectionHandler handler;
  std::vector<ConnectionHandler> extra_handlers;
  {
    std::lock_guard lock(c->mu_);
    c->connected_ = false;
    // A TLS or network failure before CONNACK ends the wait too.
    if (c->connack_rc_ < 0) c->connack_rc_ = rc == 0 ? 255 : 256;
    handler = c->on_connection_;
    extra_handlers = c->extra_connection_handlers_;
  }
  c->cv_.notify_all();
  if (rc != 0) c->log_.Warn("MQTT connection lost", {{"client_id", c->options_.client_id}, {"reason", mosquitto_strerror(rc)}});
  if (handler) handler(false);
  for (const auto& h : extra_handlers) h(false);
}

void MqttClient::OnSubscribe(mosquitto*, void* self, int mid, int count, const int* granted) {
  auto* c = static_cast<MqttClient*>(self);
  {
    std::lock_guard lock(c->mu_);
    c->suback_[mid] = count > 0 ? granted[0] : 0x80;
  }
  c->cv_.notify_all();
}

void MqttClient::OnPublish(mosquitto*, void* self, int mid) {
  auto* c = static_cast<MqttClient*>(self);
  {
    std::lock_guard lock(c->mu_);
    c->puback_[mid] = true;
  }
  c->cv_.notify_all();
}

void MqttClient::OnMessage(mosquitto*, void* self, const mosquitto_message* m) {
  auto* c = static_cast<MqttClient*>(self);
  if (m == nullptr || m->topic == nullptr) return;
  MessageHandler handler;
  {
    std::lock_guard lock(c->mu_);
    handler = c->on_message_;
    for (const auto& [filter, route] : c->routes_) {
      bool match = false;
      if (mosquitto_topic_matches_sub(filter.c_str(), m->topic, &match) == MOSQ_ERR_SUCCESS && match) {
        handler = route;
        break;
      }
    }
  }
  if (!handler) return;
  MqttMessage msg{m->topic, std::string(static_cast<const char*>(m->payload), static_cast<size_t>(m->payloadlen)),
                  m->retain};
  try {
    handler(msg);
  } catch (...) {
    c->log_.Error("MQTT message handler threw; message dropped", {{"topic", msg.topic}});
  }
}

}  // namespace certfleet::shared
