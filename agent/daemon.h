// `certfleet-agent run`: the lifecycle state machine of the gateway's identity.
//
//   unprovisioned -> provisioning -> active -> rotating -> verifying -> committing -> active
//                                              rotating -> recovering -> active
//
// Every transition is journaled (journal.h) before it takes effect; Start() resumes or
// rolls back whatever a crash interrupted (docs/agent.md, "Crash points"). The identity
// is identity.cert_file plus the key in one of the A/B slots (identity.key_slot and
// OtherSlot of it). A rotation puts a new key in the other slot, re-enrolls over EST with
// the current identity, checks the certificate, reconnects to the broker with it and
// publishes a signed ack; only once the broker acknowledged that is the certificate file
// replaced (atomically) and the old key deleted. Any failure before that returns to the
// old identity and retries later with backoff; the uncertified new key is reused.
//
// The network is behind two seams (Broker, Enroller) so that tests drive the machine
// with fakes, a FakeClock, an in-memory filesystem and key store, and never sleep.
//
// Threading: Start, Tick and Run belong to one thread (the daemon thread). Post,
// RequestRenewal and Snapshot are thread-safe: they are what the MQTT network thread
// and the control socket call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "agent/journal.h"
#include "agent/renewal.h"
#include "hal/keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/handles.h"
#include "shared/core/log.h"
#include "shared/core/status.h"
#include "shared/mqtt/client.h"

namespace certfleet::agent {

// A TLS client identity: certificate chain PEM (leaf first) and its key (borrowed).
struct ClientIdentity {
  std::string cert_pem;
  EVP_PKEY* key = nullptr;
  std::string client_id;  // MQTT client id: the thing name
};

struct SessionHandlers {
  // Called from the session's network thread; must not block.
  std::function<void(const shared::MqttMessage&)> on_message;
  std::function<void(bool connected)> on_connection;
};

// One MQTT connection. The destructor disconnects cleanly (no will).
class Session {
 public:
  virtual ~Session() = default;
  // QoS 1 waits for PUBACK. kUnavailable / kDeadlineExceeded when not acknowledged.
  virtual shared::Status Publish(const std::string& topic, std::string_view payload, int qos, bool retain) = 0;
  virtual bool connected() const = 0;
};

class Broker {
 public:
  virtual ~Broker() = default;
  // Connects with `identity` and waits for CONNACK; `subscriptions` are (re)subscribed
  // on every reconnect; the session reconnects by itself after a loss.
  virtual shared::Result<std::unique_ptr<Session>> Connect(const ClientIdentity& identity,
                                                           const shared::MqttWill& will,
                                                           const std::vector<std::string>& subscriptions,
                                                           SessionHandlers handlers) = 0;
};

struct Reenrolled {
  shared::X509Ptr cert;
  std::vector<shared::X509Ptr> ca_certs;  // what the server published (untrusted)
  std::optional<shared::WallTime> server_date;
};

class Enroller {
 public:
  virtual ~Enroller() = default;
  // EST simplereenroll over mTLS with `current`, for `new_key`, same subject and SANs as
  // `current_cert`. The result is not verified yet.
  virtual shared::Result<Reenrolled> Reenroll(const ClientIdentity& current, X509* current_cert,
                                              EVP_PKEY* new_key) = 0;
};

// What a commit hands to the post-rotation step (hooks, exports).
struct CommittedIdentity {
  std::string thing_name;
  std::string certificate_id;
  std::string cert_file;
  std::string cert_pem;
  std::string ca_pem;
  std::string key_uri;
};

struct DaemonOptions {
  std::string cert_file;
  std::string key_slot = "identity-a";  // the A slot; B is OtherSlot(key_slot)
  shared::KeyType key_type = shared::KeyType::kEcP256;
  std::string trust_anchor_pem;  // the CA(s) issued certificates must chain to
  std::string state_dir;
  RenewalPolicy renewal;
  std::string time_sync_file;  // exists when the clock is synchronised; "" = not checked
  std::string agent_version;
  std::chrono::seconds reconnect_base{1};
  std::chrono::seconds reconnect_cap{300};
  uint64_t seed = 0;  // backoff jitter; 0 = std::random_device
};

struct DaemonDeps {
  shared::Filesystem& fs;
  hal::KeyStore& keys;
  const shared::Clock& clock;
  shared::Logger& log;
  Broker& broker;
  Enroller& enroller;
  // Obtains the first identity (claim provisioning or EST enroll); null = not configured.
  std::function<shared::Status()> bootstrap;
  // Runs after each commit; its failures are logged, never undo the commit.
  std::function<void(const CommittedIdentity&)> post_rotation;
  // Expired-certificate recovery (docs/agent.md): obtains a new identity by claim
  // provisioning with its key in `new_slot` and commits it by replacing the certificate
  // file atomically; must not touch any other key slot. Called only when the current
  // certificate is expired on a trusted clock and the companion refused re-enrollment
  // because of it. null = not configured (the daemon keeps retrying re-enrollment).
  std::function<shared::Status(const std::string& new_slot)> recover;
};

// Whether a failed re-enrollment was refused because the client certificate expired:
// the companion's 403 "expired_certificate", or a TLS alert saying so.
bool IsExpiryRefusal(const shared::Status& status);

// A copy of the state for `status` and the control socket.
struct DaemonSnapshot {
  Journal journal;
  bool connected = false;
  bool clock_trusted = false;
  std::string clock_reason;
  std::string certificate_id;
  std::string serial;
  std::optional<shared::WallTime> not_after;
};

class Daemon {
 public:
  Daemon(DaemonOptions options, DaemonDeps deps);
  ~Daemon();

  // Loads the journal (kDataLoss if corrupt: the daemon must not start), finishes or
  // rolls back an interrupted step, and makes a first attempt to provision and connect.
  // Failures of the network are not errors here: Tick retries them.
  shared::Status Start();
  // Handles queued events and whatever is due at the clock's now. Never sleeps beyond
  // the seams' own timeouts.
  void Tick();
  // When Tick has something to do next, absent events.
  shared::WallTime NextWakeup() const;
  // Tick until `stop`, waiting for events or NextWakeup in between (real time).
  // `after_tick` (optional) runs on the daemon thread after every Tick, and at least
  // every `tick_at_least` while idle: the service watchdog and status line hang on it.
  void Run(const std::atomic<bool>& stop, const std::function<void()>& after_tick = {},
           std::chrono::milliseconds tick_at_least = std::chrono::milliseconds(60000));
  // Thread-safe: the renewal policy a configuration reload swapped in; applied by the
  // next Tick (the next renewal time is recomputed from it).
  void SetRenewalPolicy(const RenewalPolicy& policy);
  // Wakes Run.
  void Wake();

  // Thread-safe. `done` gets a one-line result once the rotation ran (or could not).
  void RequestRenewal(std::function<void(const std::string&)> done);
  DaemonSnapshot Snapshot() const;

  // For tests.
  const Journal& journal() const { return journal_; }
  bool connected() const { return session_ != nullptr && session_->connected(); }

 private:
  struct Event {
    enum Kind { kConnection, kMessage, kRenew };
    explicit Event(Kind k) : kind(k) {}
    Kind kind;
    uint64_t generation = 0;
    bool connected = false;
    shared::MqttMessage message;
    std::function<void(const std::string&)> done;
  };

  void Post(Event event);
  shared::Status Save();
  shared::Status Recover();
  shared::Status DeriveFreshJournal();
  void RefreshCertInfo();
  TimeTrust ClockTrust() const;
  void NoteTrustedTime(std::optional<shared::WallTime> t);

  void TryBootstrap();
  void TryConnect();
  shared::Result<std::unique_ptr<Session>> ConnectWith(const ClientIdentity& identity);
  void HandleEvent(Event& event);
  void OnConnected();
  void PublishStatus();
  bool RotationDue(shared::WallTime now) const;

  // The rotation, in steps; each returns a failure that Rollback handles.
  shared::Status Rotate();
  shared::Status ProveAndCommit();
  shared::Status Commit();
  void Rollback(const shared::Status& why);
  // The re-enrollment of an expired certificate was refused (`why`): claim provisioning
  // through deps_.recover, journaled as kRecovering; back to kActive either way.
  void RecoverExpired(const shared::Status& why);
  // Adopts the identity the recovery committed in `slot`; the old slot is retired.
  void AdoptRecovered(const std::string& slot);
  // After a failed Commit (kCommitting kept): the roll-forward again once the backoff passed.
  void RetryCommit();
  void FinishRetirement();
  // Publishes journal_.last_ack again on the current session, if there is one.
  void ResendLastAck();
  void SafeDelete(const std::string& slot);
  void ReplyRenewals(const std::string& result);

  DaemonOptions options_;
  DaemonDeps deps_;
  JournalStore store_;
  Journal journal_;
  std::mt19937_64 rng_;

  // The current certificate (parsed from cert_file).
  shared::X509Ptr cert_;
  std::string cert_pem_;
  std::string cert_id_;

  // The key of the main session; declared before it so that it outlives it.
  std::unique_ptr<hal::KeyHandle> current_key_;
  std::unique_ptr<Session> session_;
  uint64_t generation_ = 0;
  shared::WallTime next_connect_{};
  int connect_failures_ = 0;
  bool lost_connection_ = false;
  shared::WallTime next_bootstrap_{};
  int bootstrap_failures_ = 0;
  bool resume_verifying_ = false;
  std::vector<std::function<void(const std::string&)>> renew_waiters_;

  std::optional<RenewalPolicy> pending_renewal_;  // guarded by mu_

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  DaemonSnapshot snapshot_;
};

}  // namespace certfleet::agent
