#include "companion/rotation_coordinator.h"


#include "companion/broker_config.h"
#include "companion/broker_plugin/quarantine_list.h"
#include "shared/wire/rotation.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

constexpr auto kPublishTimeout = std::chrono::seconds(10);
constexpr size_t kMaxQueuedAcks = 10000;
constexpr int64_t kMaxRequestsPerPass = 100000;
constexpr std::string_view kAckRejected = "rotation_ack_rejected";

}  // namespace

Result<std::string> NewRotationId() { return sh::RandomHex(sh::kRotationIdLength / 2); }

Status MqttRotationPublisher::Publish(const std::string& topic, std::string_view payload, bool retain) {
  return client_.Publish(topic, payload, 1, retain, kPublishTimeout);
}

std::string RotationAckFilter() { return std::string(sh::kThingTopicRoot) + "+/" + std::string(sh::kRotationAckSuffix); }

std::string RotationAckSubscription(const std::string& share_group) {
  if (share_group.empty()) return RotationAckFilter();
  return "$share/" + share_group + "/" + RotationAckFilter();
}

Result<RotationCoordinatorOptions> RotationOptionsFromConfig(const CompanionConfig& c) {
  RotationCoordinatorOptions o;
  o.grace = c.rotation.grace;
  o.revoke_after = c.rotation.revoke_after;
  o.sweep_interval = c.rotation.sweep_interval;
  o.crl_file = c.broker.crl_file;
  o.crl_validity = c.broker.crl_validity;
  o.quarantine_file = c.broker.quarantine_file;
  o.reload.command = c.broker.reload_command;
  o.reload.pid_file = c.broker.pid_file;
  o.reload.timeout = c.broker.reload_timeout;
  o.share_group = c.mqtt.share_group;
  CF_RETURN_IF_ERROR(ValidateBrokerReloadSpec(o.reload));
  return o;
}

RotationCoordinator::RotationCoordinator(CompanionState& state, RotationCoordinatorOptions options,
                                         RotationPublisher& publisher, sh::Filesystem& fs, const sh::Clock& clock,
                                         sh::Logger& log, ReloadFn reload)
    : state_(state),
      options_(std::move(options)),
      publisher_(publisher),
      fs_(fs),
      clock_(clock),
      log_(log),
      reload_(std::move(reload)) {
  if (!reload_ && !options_.reload.empty()) {
    reload_ = [this] { return ReloadBroker(options_.reload, fs_); };
  }
}

RotationCoordinator::~RotationCoordinator() { Stop(); }

AckOutcome RotationCoordinator::Reject(AckOutcome outcome, std::string reason) {
  outcome.accepted = false;
  outcome.reason = std::move(reason);
  SecurityEvent ev{0, clock_.Now(), std::string(kAckRejected), outcome.thing, outcome.reason};
  Status st = state_.registry->RecordSecurityEvent(ev);
  if (!st.ok()) log_.Error("recording security event failed", {{"error", st.ToString()}});
  log_.Warn("rotation ack rejected", {{"thing", outcome.thing}, {"reason", outcome.reason}});
  return outcome;
}

AckOutcome RotationCoordinator::Duplicate(AckOutcome outcome, const RotationRecord& completed) {
  outcome.duplicate = true;
  outcome.rotation_id = completed.id;
  outcome.reason = "rotation " + completed.id + " is already completed with this certificate";
  log_.Info("duplicate rotation ack ignored", {{"thing", outcome.thing}, {"rotation", completed.id}});
  if (!completed.cleared_at) {
    Status st = ClearRequest(completed);
    if (!st.ok()) {
      log_.Warn("clearing the retained rotation request failed; will retry",
                {{"thing", outcome.thing}, {"rotation", completed.id}, {"error", st.ToString()}});
    }
  }
  return outcome;
}

AckOutcome RotationCoordinator::HandleAck(const sh::MqttMessage& message) {
  AckOutcome out;
  auto topic = sh::ParseThingTopic(message.topic);
  if (!topic || topic->suffix != sh::kRotationAckSuffix) {
    out.thing = message.topic.substr(0, 200);
    return Reject(std::move(out), "not a rotation ack topic");
  }
  out.thing = topic->thing_name;
  auto ack = sh::DecodeRotationAck(message.payload);
  if (!ack) return Reject(std::move(out), "malformed ack: " + ack.error().message());
  if (ack->thing_name != topic->thing_name) return Reject(std::move(out), "thingName differs from the topic's thing");

  // The new certificate: known, the thing's, its current ACTIVE one.
  auto cert = state_.registry->FindCert(ack->certificate_id);
  if (!cert) {
    log_.Error("rotation ack: registry lookup failed", {{"error", cert.error().ToString()}});
    out.reason = "registry unavailable";
    return out;
  }
  if (!*cert) return Reject(std::move(out), "unknown certificate " + ack->certificate_id);
  const CertRecord& c = **cert;
  if (c.thing_name != topic->thing_name) return Reject(std::move(out), "certificate " + c.id + " belongs to another thing");
  if (c.status != CertStatus::kActive || c.superseded_by) {
    return Reject(std::move(out), "certificate " + c.id + " is not the thing's current ACTIVE certificate");
  }

  // Possession of the new key.
  auto x509 = sh::CertFromPem(c.pem);
  if (!x509) return Reject(std::move(out), "stored certificate " + c.id + " does not parse");
  Status sig = sh::VerifySha256(X509_get0_pubkey(x509->get()), sh::RotationAckSignedText(*ack), ack->signature);
  if (!sig.ok()) return Reject(std::move(out), "signature does not verify with certificate " + c.id);

  // The certificate it replaces: the thing's, superseded by the new one.
  auto prev = state_.registry->FindCert(ack->previous_certificate_id);
  if (!prev || !*prev || (*prev)->thing_name != topic->thing_name || (*prev)->superseded_by != c.id) {
    return Reject(std::move(out), "previousCertificateId " + ack->previous_certificate_id +
                                      " is not the predecessor of certificate " + c.id);
  }

  if (!ack->rotation_id.empty()) {
    auto rotation = state_.registry->FindRotation(ack->rotation_id);
    if (!rotation || !*rotation || (*rotation)->thing_name != topic->thing_name) {
      return Reject(std::move(out), "unknown rotation " + ack->rotation_id);
    }
    if ((*rotation)->state == RotationState::kCompleted && (*rotation)->new_cert_id == c.id) {
      return Duplicate(std::move(out), **rotation);
    }
    if ((*rotation)->state != RotationState::kPending) {
      return Reject(std::move(out), "rotation " + ack->rotation_id + " is already " +
                                        std::string(RotationStateName((*rotation)->state)));
    }
  }

  RotationProof proof{topic->thing_name, ack->rotation_id, c.id, clock_.Now(), options_.grace};
  auto done = state_.registry->CompleteRotation(proof);
  if (!done) {
    if (done.error().code() == Code::kAlreadyExists && ack->rotation_id.empty()) {
      out.duplicate = true;
      out.reason = "certificate " + c.id + " is already proven";
      (void)state_.registry->MarkThingSeen(out.thing, clock_.Now());
      log_.Info("duplicate rotation ack ignored", {{"thing", out.thing}, {"certificate", c.id}});
      return out;
    }
    if (done.error().code() == Code::kAlreadyExists) {
      return Reject(std::move(out), "replayed ack: certificate " + c.id + " is already proven");
    }
    if (done.error().code() == Code::kFailedPrecondition) return Reject(std::move(out), done.error().message());
    log_.Error("rotation ack: completing failed", {{"thing", out.thing}, {"error", done.error().ToString()}});
    out.reason = "registry unavailable";
    return out;
  }
  out.accepted = true;
  out.rotation_id = done->completed_rotation_id.value_or("");
  // A verified ack is the agent speaking with its proven identity: it was seen now
  // (AGENT_NOT_SEEN_CHECK, docs/audit.md).
  Status seen = state_.registry->MarkThingSeen(out.thing, clock_.Now());
  if (!seen.ok()) log_.Warn("recording last seen failed", {{"thing", out.thing}, {"error", seen.ToString()}});
  log_.Info("certificate proven", {{"thing", out.thing}, {"certificate", c.id}, {"rotation", out.rotation_id},
                                   {"previous", ack->previous_certificate_id}});
  for (const auto& id : done->retiring_cert_ids) {
    log_.Info("certificate in grace window", {{"thing", out.thing}, {"certificate", id}, {"rotation", out.rotation_id},
                                              {"until", sh::FormatRfc3339(proof.now + options_.grace)}});
  }
  if (done->completed_rotation_id) {
    log_.Info("rotation completed", {{"thing", out.thing}, {"rotation", out.rotation_id}, {"certificate", c.id}});
    auto finished = state_.registry->FindRotation(out.rotation_id);
    Status st = !finished ? finished.error() : *finished ? ClearRequest(**finished) : Status::Ok();
    if (!st.ok()) {
      log_.Warn("clearing the retained rotation request failed; will retry",
                {{"thing", out.thing}, {"rotation", out.rotation_id}, {"error", st.ToString()}});
    }
  }
  return out;
}

Status RotationCoordinator::ClearRequest(const RotationRecord& finished) {
  if (!finished.published_at || finished.cleared_at) return Status::Ok();  // nothing on the broker
  CF_ASSIGN_OR_RETURN(std::optional<RotationRecord> newer, state_.registry->FindPendingRotation(finished.thing_name));
  if (!newer) {
    CF_ASSIGN_OR_RETURN(std::string topic, sh::ThingTopic(finished.thing_name, sh::kRotationRequestSuffix));
    CF_RETURN_IF_ERROR(publisher_.Publish(topic, "", true));
    log_.Info("rotation request cleared", {{"thing", finished.thing_name}, {"rotation", finished.id},
                                           {"state", std::string(RotationStateName(finished.state))}});
  }
  return state_.registry->MarkRotationCleared(finished.id, clock_.Now());
}

void RotationCoordinator::Wake() {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

void RotationCoordinator::RepublishAll() {
  {
    std::lock_guard lock(mu_);
    republish_all_ = true;
    wake_ = true;
  }
  cv_.notify_all();
}

Result<PassResult> RotationCoordinator::RunOnce() {
  PassResult out;
  const sh::WallTime now = clock_.Now();
  bool republish_all;
  {
    std::lock_guard lock(mu_);
    republish_all = republish_all_;
    republish_all_ = false;
  }

  // Finished requests still retained on the broker; first, so that a newer request for
  // the same thing, published below, is not wiped.
  CF_ASSIGN_OR_RETURN(std::vector<RotationRecord> finished, state_.registry->ListRotationsToClear(kMaxRequestsPerPass));
  for (const auto& r : finished) {
    Status st = ClearRequest(r);
    if (!st.ok()) {
      log_.Warn("clearing the retained rotation request failed; will retry",
                {{"thing", r.thing_name}, {"rotation", r.id}, {"error", st.ToString()}});
      break;
    }
  }

  // Requests: new ones, or all pending ones after a (re)connect.
  CF_ASSIGN_OR_RETURN(std::vector<RotationRecord> pending,
                      state_.registry->ListRotations({RotationState::kPending, "", std::nullopt}, kMaxRequestsPerPass));
  bool all_published = true;
  for (const auto& r : pending) {
    if (r.published_at && !republish_all) continue;
    sh::RotationRequest req{r.id, r.reason, r.created_at, r.deadline};
    auto payload = sh::EncodeRotationRequest(req);
    auto topic = sh::ThingTopic(r.thing_name, sh::kRotationRequestSuffix);
    if (!payload || !topic) {
      log_.Error("rotation request cannot be encoded", {{"thing", r.thing_name}, {"rotation", r.id},
                                                        {"error", (!payload ? payload.error() : topic.error()).ToString()}});
      continue;
    }
    Status st = publisher_.Publish(*topic, *payload, true);
    if (!st.ok()) {
      all_published = false;
      log_.Warn("publishing rotation request failed; will retry", {{"thing", r.thing_name}, {"rotation", r.id},
                                                                   {"error", st.ToString()}});
      break;  // the broker is probably away: the next pass (or the reconnect) retries
    }
    ++out.published;
    if (!r.published_at) {
      CF_RETURN_IF_ERROR(state_.registry->MarkRotationPublished(r.id, now));
      log_.Info("rotation request published", {{"thing", r.thing_name}, {"rotation", r.id}, {"reason", r.reason},
                                               {"deadline", sh::FormatRfc3339(r.deadline)}});
    }
  }
  if (republish_all && !all_published) {
    std::lock_guard lock(mu_);
    republish_all_ = true;
  }

  // The lifecycle sweep.
  CF_ASSIGN_OR_RETURN(out.transitions, state_.registry->SweepCertificates(now, options_.revoke_after));
  for (const auto& t : out.transitions) {
    log_.Info(t.to == CertStatus::kRevoked ? "certificate revoked" : "certificate deactivated",
              {{"thing", t.thing_name}, {"certificate", t.cert_id}, {"from", std::string(CertStatusName(t.from))},
               {"to", std::string(CertStatusName(t.to))}});
  }

  // The CRL: when the revoked set changed (here or in another process), or half its validity passed.
  if (!options_.crl_file.empty()) {
    CF_ASSIGN_OR_RETURN(int64_t revoked, state_.registry->CountRevokedCerts());
    bool stale = crl_revoked_count_ < 0 || revoked != crl_revoked_count_ ||
                 now >= crl_written_at_ + options_.crl_validity / 2;
    if (stale) {
      auto pem = MakeCrlPem(state_, clock_, options_.crl_validity);
      Status st = pem ? fs_.WriteFileAtomic(options_.crl_file, *pem, 0644) : pem.error();
      if (st.ok()) {
        crl_revoked_count_ = revoked;
        crl_written_at_ = now;
        out.crl_written = true;
        reload_pending_ = true;
        log_.Info("CRL written", {{"file", options_.crl_file}, {"revoked", std::to_string(revoked)}});
      } else {
        log_.Error("writing the CRL failed; will retry", {{"file", options_.crl_file}, {"error", st.ToString()}});
      }
    }
  }
  // The quarantine list: when the set of quarantined things changed (here, by an audit,
  // or by certfleetctl in another process).
  if (!options_.quarantine_file.empty()) {
    CF_ASSIGN_OR_RETURN(std::vector<std::string> names, state_.registry->ListQuarantinedThings());
    std::set<std::string> set(names.begin(), names.end());
    if (!quarantine_written_ || *quarantine_written_ != set) {
      Status st = fs_.WriteFileAtomic(options_.quarantine_file, broker_plugin::QuarantineListToJson(set), 0644);
      if (st.ok()) {
        quarantine_written_ = std::move(set);
        out.quarantine_written = true;
        reload_pending_ = true;
        log_.Info("quarantine list written", {{"file", options_.quarantine_file},
                                              {"things", std::to_string(quarantine_written_->size())}});
      } else {
        log_.Error("writing the quarantine list failed; will retry",
                   {{"file", options_.quarantine_file}, {"error", st.ToString()}});
      }
    }
  }
  if (reload_pending_ && reload_) {
    Status st = reload_();
    if (st.ok()) {
      reload_pending_ = false;
      out.broker_reloaded = true;
      log_.Info("broker reloaded", {{"crl", options_.crl_file}, {"quarantine", options_.quarantine_file}});
    } else {
      log_.Error("broker reload failed; will retry", {{"error", st.ToString()}});
    }
  } else {
    reload_pending_ = false;
  }
  return out;
}

void RotationCoordinator::Attach(sh::MqttClient& client) {
  client.AddStandingSubscriptions({RotationAckSubscription(options_.share_group)}, 1);
  client.AddMessageRoute(RotationAckFilter(), [this](const sh::MqttMessage& m) {
    std::lock_guard lock(mu_);
    if (acks_.size() >= kMaxQueuedAcks) return;  // overload: the agent resends
    acks_.push_back(m);
    cv_.notify_all();
  });
  client.AddConnectionHandler([this](bool connected) {
    if (connected) RepublishAll();
  });
}

void RotationCoordinator::Start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void RotationCoordinator::Loop() {
  auto next_pass = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_until(lock, next_pass, [&] {
      return stopping_ || !acks_.empty() || wake_ || std::chrono::steady_clock::now() >= next_pass;
    });
    if (stopping_) return;
    std::deque<sh::MqttMessage> acks;
    acks.swap(acks_);
    const bool pass_due = wake_ || std::chrono::steady_clock::now() >= next_pass;
    wake_ = false;
    lock.unlock();
    for (const auto& m : acks) HandleAck(m);
    if (pass_due) {
      auto pass = RunOnce();
      if (!pass) log_.Error("rotation pass failed", {{"error", pass.error().ToString()}});
      next_pass = std::chrono::steady_clock::now() + options_.sweep_interval;
    }
    lock.lock();
  }
}

void RotationCoordinator::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace certfleet::companion
