// The rotation coordinator (docs/rotation.md): publishes the rotation requests stored in
// the registry as retained QoS 1 messages on each thing's rotation/request topic, verifies
// the agents' acks, runs the certificate lifecycle sweep (grace window, then INACTIVE, then
// REVOKED) and keeps the broker's CRL file current.
//
// Requests are created by certfleetctl (another process) in the registry; the coordinator
// picks them up by polling, once per sweep_interval. Everything it decides is in
// HandleAck() and RunOnce(), which tests drive directly with a FakeClock and a fake
// publisher. Attach() wires it to the companion's MqttClient: acks are queued by the
// network thread and handled, with the periodic pass, on the coordinator's own thread.
// HandleAck() and RunOnce() are not meant to run concurrently with each other (the
// coordinator's thread serialises them); the other public methods are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "companion/broker_reload.h"
#include "companion/init.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/mqtt/client.h"

namespace certfleet::companion {

// A fresh rotation id: 32 lowercase hex digits from 128 random bits.
Result<std::string> NewRotationId();

// Where requests go. QoS 1: returns once the broker acknowledged.
class RotationPublisher {
 public:
  virtual ~RotationPublisher() = default;
  virtual Status Publish(const std::string& topic, std::string_view payload, bool retain) = 0;
};

// RotationPublisher over the companion's MqttClient (which must outlive it).
class MqttRotationPublisher final : public RotationPublisher {
 public:
  explicit MqttRotationPublisher(shared::MqttClient& client) : client_(client) {}
  Status Publish(const std::string& topic, std::string_view payload, bool retain) override;

 private:
  shared::MqttClient& client_;
};

struct RotationCoordinatorOptions {
  std::chrono::seconds grace = std::chrono::hours(24);  // old certificate stays ACTIVE after the proof
  std::chrono::seconds revoke_after{0};                 // INACTIVE -> REVOKED after this much more
  std::chrono::seconds sweep_interval{60};              // polling period of the loop
  std::string crl_file;                                 // empty: no CRL publishing
  std::chrono::seconds crl_validity = std::chrono::hours(24 * 30);
  std::string quarantine_file;                          // empty: no broker quarantine list
  BrokerReloadSpec reload;                              // run after a new CRL or quarantine list
  std::string share_group = "certfleet";                // "" = plain subscription
};

// The options companion.toml gives ([rotation], [broker], mqtt.share_group); checks the
// reload command (ValidateBrokerReloadSpec).
Result<RotationCoordinatorOptions> RotationOptionsFromConfig(const CompanionConfig& config);

struct AckOutcome {
  bool accepted = false;
  std::string thing;        // from the topic
  std::string rotation_id;  // of the completed request, if any
  std::string reason;       // why it was rejected
  // The ack repeats one already taken (same certificate, already proven): an agent that
  // saw its retained request again before the companion cleared it, or whose first ack
  // may have been lost. Neither accepted nor a security event.
  bool duplicate = false;
};

struct PassResult {
  int published = 0;                        // requests published in this pass
  std::vector<CertTransition> transitions;  // made by the lifecycle sweep
  bool crl_written = false;
  bool quarantine_written = false;
  bool broker_reloaded = false;
};

// The ack subscription filters: "$share/<group>/certfleet/things/+/rotation/ack", or the
// plain filter for an empty group.
std::string RotationAckFilter();
std::string RotationAckSubscription(const std::string& share_group);

class RotationCoordinator {
 public:
  using ReloadFn = std::function<Status()>;

  // `state` (registry, issuer), `publisher`, `fs`, `clock` and `log` must outlive the
  // coordinator. `reload` asks the broker to reload its CRL; the default runs
  // ReloadBroker(options.reload) when that is not empty.
  RotationCoordinator(CompanionState& state, RotationCoordinatorOptions options, RotationPublisher& publisher,
                      shared::Filesystem& fs, const shared::Clock& clock, shared::Logger& log,
                      ReloadFn reload = nullptr);
  ~RotationCoordinator();
  RotationCoordinator(const RotationCoordinator&) = delete;
  RotationCoordinator& operator=(const RotationCoordinator&) = delete;

  // Verifies one message from certfleet/things/<thing>/rotation/ack and, if it holds,
  // completes the rotation in the registry and clears the retained request. A rejected
  // ack is recorded as a security event (kind "rotation_ack_rejected") and changes nothing.
  AckOutcome HandleAck(const shared::MqttMessage& message);

  // One pass: clears the retained requests of rotations completed or cancelled (by
  // certfleetctl) since, publishes unpublished requests (every PENDING one after a
  // (re)connect), runs the lifecycle sweep, and writes the CRL and reloads
  // the broker when the set of revoked certificates changed or the CRL passed half its
  // validity, or when the set of quarantined things changed (quarantine_file). Errors of one step are logged and do not stop the others; an error is
  // returned only if the registry failed.
  Result<PassResult> RunOnce();

  // Every PENDING request is published again on the next pass (retained is idempotent).
  void RepublishAll();
  // A pass now (e.g. after a quarantine changed) rather than at the next sweep interval.
  void Wake();

  // Subscribes (standing, shared subscription), routes ack messages to the queue, and
  // re-publishes on every connect. Call before client.Connect(); then Start().
  void Attach(shared::MqttClient& client);
  // Starts the coordinator thread: a pass now and every sweep_interval, acks as they come.
  void Start();
  // Stops and joins the thread; queued acks are dropped (the agent resends).
  void Stop();

 private:
  AckOutcome Reject(AckOutcome outcome, std::string reason);
  AckOutcome Duplicate(AckOutcome outcome, const RotationRecord& completed);
  // Clears the retained request of a finished rotation, unless the thing has a newer
  // pending request (whose retained message replaced it), and records that.
  Status ClearRequest(const RotationRecord& finished);
  void Loop();

  CompanionState& state_;
  RotationCoordinatorOptions options_;
  RotationPublisher& publisher_;
  shared::Filesystem& fs_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  ReloadFn reload_;

  // Loop state (the coordinator thread, or a test calling RunOnce).
  int64_t crl_revoked_count_ = -1;            // -1: no CRL written yet
  shared::WallTime crl_written_at_{};
  std::optional<std::set<std::string>> quarantine_written_;  // the list last written
  bool reload_pending_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<shared::MqttMessage> acks_;
  bool republish_all_ = true;
  bool wake_ = false;  // RepublishAll asked for a pass now
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace certfleet::companion
