// The fleet provisioning service: CreateCertificateFromCsr, CreateKeysAndCertificate and
// RegisterThing over MQTT, with the payloads of the AWS IoT fleet provisioning API
// (shared/wire) on the certfleet topic dialect.
//
// Handle() is the whole decision for one request message and returns the reply to
// publish; it needs no broker, so tests drive it directly. Attach() connects it to an
// MqttClient: messages are queued by the network thread and handled by worker threads,
// which publish the replies. Handle() is thread-safe.
#pragma once

#include <functional>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "companion/hooks.h"
#include "companion/init.h"
#include "companion/provisioning_template.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/mqtt/client.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"

namespace certfleet::companion {

struct ProvisioningOptions {
  std::map<std::string, ProvisioningTemplate> templates;  // by name
  std::optional<HookSpec> pre_provision_hook;              // none: allow
  std::optional<HookSpec> post_provision_hook;
  bool allow_create_keys = false;  // CreateKeysAndCertificate (server-generated keys): off by default
  std::chrono::seconds ownership_token_ttl = std::chrono::hours(1);
  shared::Dialect dialect = shared::Dialect::kCertfleet;
  int workers = 2;
};

struct ProvisioningReply {
  std::string topic;
  std::string payload;
};

class ProvisioningService {
 public:
  // `state` (registry, issuer), `hooks`, `clock` and `log` must outlive the service.
  ProvisioningService(CompanionState& state, ProvisioningOptions options, HookRunner& hooks,
                      const shared::Clock& clock, shared::Logger& log);
  ~ProvisioningService();

  // The reply for one request; nullopt when the topic is not a request topic at all.
  std::optional<ProvisioningReply> Handle(const shared::MqttMessage& message);

  // Subscribes `client` (standing subscriptions, restored on reconnect) and starts the
  // workers. Call before client.Connect().
  void Attach(shared::MqttClient& client);
  // Stops the workers; queued requests are dropped (their clients time out and retry).
  void Stop();
  // Called once per answered request with the operation name and whether it was
  // accepted (metrics). Set before Attach; must be thread-safe.
  void SetObserver(std::function<void(std::string_view operation, bool accepted)> observer) {
    observer_ = std::move(observer);
  }

 private:
  struct Failure {
    shared::RejectionCode code;
    std::string message;
  };
  std::function<void(std::string_view, bool)> observer_;
  ProvisioningReply Reply(const shared::ProvisioningTopic& topic, const Result<std::string>& accepted,
                          const std::optional<Failure>& failure);
  // Checks a RegisterThing proof of a previous identity (docs/agent.md, "Expired
  // certificate recovery"): "" when `previous_id` is in the registry, belongs to
  // `thing_name`, was issued by us and its key signed PreviousCertificateProofText(new_id);
  // otherwise why not.
  std::string VerifyPreviousCertificate(const std::string& previous_id, const std::string& signature_b64,
                                        const std::string& new_id, const std::string& thing_name);
  Result<std::string> CreateFromCsr(const shared::ProvisioningTopic& topic, std::string_view payload,
                                    std::optional<Failure>& failure);
  Result<std::string> CreateKeys(const shared::ProvisioningTopic& topic, std::string_view payload,
                                 std::optional<Failure>& failure);
  Result<std::string> Register(const shared::ProvisioningTopic& topic, std::string_view payload,
                               std::optional<Failure>& failure);
  // Issues a pending certificate for `pub` with CN `cn` and stores it with a fresh
  // ownership token. Returns (certificate PEM followed by the intermediate CAs, id, token).
  struct Pending {
    std::string pem;
    std::string id;
    std::string token;
  };
  Result<Pending> IssuePending(const shared::ProvisioningTopic& topic, EVP_PKEY* pub, const std::string& cn);
  void Worker();
  // Deletes pending certificates whose ownership token expired, once a minute.
  void Janitor();

  CompanionState& state_;
  ProvisioningOptions options_;
  HookRunner& hooks_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  std::vector<shared::KeyType> allowed_keys_;

  shared::MqttClient* client_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;          // workers: a request was queued
  std::condition_variable janitor_cv_;  // janitor: stop
  std::deque<shared::MqttMessage> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// Loads every *.json file in `dir` as a template named after the file (without .json).
Result<std::map<std::string, ProvisioningTemplate>> LoadTemplateDir(const std::string& dir, shared::Filesystem& fs);

}  // namespace certfleet::companion
