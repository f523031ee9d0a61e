// The daemon's real seams: Broker over shared::MqttClient (libmosquitto, TLS with the hal
// key) and Enroller over EstClient (libcurl, mTLS with the current identity). Thread-
// safety as the classes they wrap; both need the libraries initialised in main.
#pragma once

#include <chrono>
#include <string>

#include "agent/daemon.h"
#include "agent/est_client.h"

namespace certfleet::agent {

struct MqttBrokerOptions {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string verify_name;  // default: host
  std::string trust_anchor_pem;
  int keepalive_seconds = 60;
  std::chrono::milliseconds timeout{30000};  // CONNACK, PUBACK
};

class MqttBroker final : public Broker {
 public:
  MqttBroker(MqttBrokerOptions options, shared::Logger& log) : options_(std::move(options)), log_(log) {}
  shared::Result<std::unique_ptr<Session>> Connect(const ClientIdentity& identity, const shared::MqttWill& will,
                                                   const std::vector<std::string>& subscriptions,
                                                   SessionHandlers handlers) override;

 private:
  MqttBrokerOptions options_;
  shared::Logger& log_;
};

struct EstEnrollerOptions {
  std::string server;
  std::string trust_anchor_pem;
  bool tls12_only = false;
  std::chrono::seconds timeout{60};  // per request (connect and transfer)
};

class EstEnroller final : public Enroller {
 public:
  explicit EstEnroller(EstEnrollerOptions options) : options_(std::move(options)) {}
  shared::Result<Reenrolled> Reenroll(const ClientIdentity& current, X509* current_cert, EVP_PKEY* new_key) override;

 private:
  EstEnrollerOptions options_;
};

}  // namespace certfleet::agent
