// An MQTT client over libmosquitto with TLS from an SSL_CTX that we build: the
// client key is any EVP_PKEY (software, PKCS#11, TPM), handed to OpenSSL directly,
// so keys that cannot be exported work. Explicit trust anchor, server name checked.
//
// The network loop runs on libmosquitto's thread (mosquitto_loop_start); handlers
// are called there and must not block or throw: in particular they must not call
// Subscribe or Publish with QoS > 0, which wait for the network thread. Hand the
// work to another thread. The public methods are thread-safe. mosquitto_lib_init
// must have run (MqttLibrary in main).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shared/core/handles.h"
#include "shared/core/log.h"
#include "shared/core/status.h"

struct mosquitto;
struct mosquitto_message;

namespace certfleet::shared {

struct MqttWill {
  std::string topic;
  std::string payload;
  int qos = 1;
  bool retain = true;
};

struct MqttOptions {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string client_id;
  int keepalive_seconds = 30;
  std::string trust_anchor_pem;  // CA(s) that sign the broker's certificate
  std::string client_cert_pem;   // leaf first, then intermediates
  EVP_PKEY* client_key = nullptr;  // borrowed; must outlive the client
  std::string verify_name;         // name the broker certificate must carry; default `host`
  std::optional<MqttWill> will;
  bool clean_session = true;
};

struct MqttMessage {
  std::string topic;
  std::string payload;
  bool retained = false;
};

class MqttClient {
 public:
  using MessageHandler = std::function<void(const MqttMessage&)>;
  using ConnectionHandler = std::function<void(bool connected)>;

  // Builds the TLS context and the libmosquitto handle; does not connect.
  static Result<std::unique_ptr<MqttClient>> Create(const MqttOptions& options, Logger& log);
  ~MqttClient();
  MqttClient(const MqttClient&) = delete;
  MqttClient& operator=(const MqttClient&) = delete;

  // Set before Connect.
  void SetMessageHandler(MessageHandler handler);
  // Filters subscribed on every (re)connect without waiting for SUBACK: for services
  // that must keep their subscriptions across broker restarts.
  void SetStandingSubscriptions(std::vector<std::string> filters, int qos);
  void SetConnectionHandler(ConnectionHandler handler);

  // For several services sharing one client (set before Connect):
  // Appends standing subscriptions to those of SetStandingSubscriptions.
  void AddStandingSubscriptions(std::vector<std::string> filters, int qos);
  // Messages whose topic matches `filter` (a plain filter, without "$share/<group>/") go
  // to `handler` instead of the SetMessageHandler one; the first matching route wins.
  void AddMessageRoute(std::string filter, MessageHandler handler);
  // Called after the SetConnectionHandler one, in the order added.
  void AddConnectionHandler(ConnectionHandler handler);

  // Connects and starts the network thread; waits for CONNACK until `timeout`.
  // kUnavailable (network, TLS, refused) or kPermissionDenied (broker said not authorized).
  // After a connection is lost the loop reconnects by itself with capped backoff.
  Status Connect(std::chrono::milliseconds timeout);
  // Waits for SUBACK. kPermissionDenied when the broker refuses the filter.
  Status Subscribe(const std::string& filter, int qos, std::chrono::milliseconds timeout);
  // QoS 1/2: waits until the broker acknowledged the message.
  Status Publish(const std::string& topic, std::string_view payload, int qos, bool retain,
                 std::chrono::milliseconds timeout);
  // Clean DISCONNECT (no will) and stops the network thread.
  void Disconnect();

  bool connected() const;

 private:
  explicit MqttClient(Logger& log) : log_(log) {}
  static void OnConnect(mosquitto*, void* self, int rc);
  static void OnDisconnect(mosquitto*, void* self, int rc);
  static void OnSubscribe(mosquitto*, void* self, int mid, int count, const int* granted);
  static void OnPublish(mosquitto*, void* self, int mid);
  static void OnMessage(mosquitto*, void* self, const mosquitto_message* message);

  // Waits until `done()` or the deadline. Caller holds `lock`.
  bool WaitFor(std::unique_lock<std::mutex>& lock, std::chrono::milliseconds timeout, const std::function<bool()>& done);

  Logger& log_;
  MqttOptions options_;
  SslCtxPtr ssl_ctx_;
  mosquitto* mosq_ = nullptr;
  bool loop_started_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool connected_ = false;
  int connack_rc_ = -1;
  std::map<int, int> suback_;  // mid -> first granted qos
  std::map<int, bool> puback_;  // mid -> acknowledged
  MessageHandler on_message_;
  std::vector<std::string> standing_filters_;
  int standing_qos_ = 1;
  ConnectionHandler on_connection_;
  std::vector<std::pair<std::string, int>> extra_filters_;  // filter, qos
  std::vector<std::pair<std::string, MessageHandler>> routes_;
  std::vector<ConnectionHandler> extra_connection_handlers_;
};

// mosquitto_lib_init / cleanup for main().
class MqttLibrary {
 public:
  MqttLibrary();
  ~MqttLibrary();
};

}  // namespace certfleet::shared
