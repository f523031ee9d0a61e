#include "agent/daemon.h"

#include <algorithm>

#include "agent/est_commands.h"
#include "agent/failpoint.h"
#include "agent/issuance.h"
#include "agent/provision.h"
#include "shared/wire/rotation.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"

namespace certfleet::agent {

using shared::Code;
using shared::Status;
using std::chrono::duration_cast;
namespace sh = shared;

namespace {

std::string Text(const Status& st) {
  std::string s = st.ToString();
  if (s.size() > sh::kMaxStatusTextLength) s.resize(sh::kMaxStatusTextLength);
  return s;
}

sh::WallTime Later(sh::WallTime now, std::chrono::milliseconds d) {
  return now + duration_cast<sh::WallTime::duration>(d);
}

}  // namespace

Daemon::Daemon(DaemonOptions options, DaemonDeps deps)
    : options_(std::move(options)),
      deps_(std::move(deps)),
      store_(deps_.fs, options_.state_dir),
      rng_(options_.seed != 0 ? options_.seed : std::random_device{}()) {}

Daemon::~Daemon() { session_.reset(); }

// ---- Journal, time, certificate --------------------------------------------------

TimeTrust Daemon::ClockTrust() const {
  std::optional<bool> synced;
  if (!options_.time_sync_file.empty()) synced = deps_.fs.Exists(options_.time_sync_file);
  return TrustedTime(deps_.clock.Now(), journal_.last_trusted_time, synced);
}

void Daemon::NoteTrustedTime(std::optional<sh::WallTime> t) {
  if (t && (!journal_.last_trusted_time || *t > *journal_.last_trusted_time)) journal_.last_trusted_time = *t;
}

Status Daemon::Save() {
  sh::WallTime now = deps_.clock.Now();
  journal_.updated_at = now;
  if (ClockTrust().trusted) NoteTrustedTime(now);
  Status st = store_.Save(journal_);
  if (!st.ok()) deps_.log.Error("could not write the journal", {{"error", st.ToString()}});
  std::lock_guard lock(mu_);
  snapshot_.journal = journal_;
  return st;
}

void Daemon::RefreshCertInfo() {
  cert_.reset();
  cert_pem_.clear();
  cert_id_.clear();
  auto pem = deps_.fs.ReadFile(options_.cert_file, 1 << 20);
  if (pem) {
    auto cert = sh::CertFromPem(*pem);
    if (cert) {
      cert_ = std::move(*cert);
      cert_pem_ = *pem;
    }
  }
  std::lock_guard lock(mu_);
  if (cert_) {
    sh::CertInfo info = sh::DescribeCert(cert_.get());
    cert_id_ = info.id;
    journal_.next_renewal = NextRenewal(info.not_before, info.not_after, options_.renewal, JitterDraw(info.id));
    snapshot_.certificate_id = info.id;
    snapshot_.serial = info.serial;
    snapshot_.not_after = info.not_after;
  } else {
    journal_.next_renewal.reset();
    snapshot_.certificate_id.clear();
    snapshot_.serial.clear();
    snapshot_.not_after.reset();
  }
}

Status Daemon::DeriveFreshJournal() {
  journal_ = Journal{};
  std::string slot = SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file,
                                     {options_.key_slot, OtherSlot(options_.key_slot)});
  if (!slot.empty()) {
    RefreshCertInfo();
    journal_.state = AgentState::kActive;
    journal_.current_slot = slot;
    journal_.thing_name = sh::NameCommonName(X509_get_subject_name(cert_.get()));
    if (!sh::ValidateThingName(journal_.thing_name).ok()) {
      return Status(Code::kFailedPrecondition, options_.cert_file + ": the certificate's CN is not a valid thing name");
    }
    deps_.log.Info("no journal: starting from the identity on disk",
                   {{"thing", journal_.thing_name}, {"slot", slot}});
  } else {
    deps_.log.Info("no journal and no identity: unprovisioned");
  }
  return Save();
}

// ---- Start and recovery ----------------------------------------------------------

Status Daemon::Start() {
  CF_ASSIGN_OR_RETURN(std::optional<Journal> loaded, store_.Load());
  if (!loaded) {
    CF_RETURN_IF_ERROR(DeriveFreshJournal());
  } else {
    journal_ = std::move(*loaded);
    CF_RETURN_IF_ERROR(Recover());
  }
  {
    std::lock_guard lock(mu_);
    snapshot_.journal = journal_;
  }
  TimeTrust trust = ClockTrust();
  if (!trust.trusted) deps_.log.Warn("clock not trusted", {{"reason", trust.reason}});
  TryBootstrap();
  if (journal_.state == AgentState::kActive && !resume_verifying_) TryConnect();
  return Status::Ok();
}

Status Daemon::Recover() {
  sh::WallTime now = deps_.clock.Now();
  switch (journal_.state) {
    case AgentState::kUnprovisioned:
    case AgentState::kProvisioning: {
      // A provisioning run may have committed its certificate before the crash.
      std::string slot = SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file,
                                         {options_.key_slot, OtherSlot(options_.key_slot)});
      if (!slot.empty()) return DeriveFreshJournal();
      journal_.state = AgentState::kUnprovisioned;
      return Save();
    }
    case AgentState::kRotating:
      // A key may have been generated, no certificate yet: back to the old identity; the
      // key stays in its slot and is reused by the next attempt.
      deps_.log.Warn("rotation interrupted before issuance; rolling back", {{"slot", journal_.pending->slot}});
      journal_.pending.reset();
      journal_.state = AgentState::kActive;
      journal_.last_error = "rotation interrupted (restart) before the certificate was issued";
      journal_.failures++;
      journal_.next_attempt = NextAttemptAfterFailure(now, journal_.failures, options_.renewal, rng_);
      journal_.rotation_requested = true;  // whatever started it, try again after the backoff
      break;
    case AgentState::kVerifying: {
      // Issued, not yet proven: check it again and resume the proof.
      auto key = deps_.keys.Load(journal_.pending->slot);
      auto cert = sh::CertFromPem(journal_.pending->certificate_pem);
      Status ok = !key ? key.error() : !cert ? cert.error() : Status::Ok();
      if (ok.ok()) {
        auto ca = sh::CertsFromPem(journal_.pending->ca_pem);
        std::vector<sh::X509Ptr> ca_certs;
        if (ca) ca_certs = std::move(*ca);
        sh::CertInfo info = sh::DescribeCert(cert->get());
        ok = VerifyIssued(cert->get(), (*key)->pkey(), options_.trust_anchor_pem, ca_certs,
                          ValidityCheckTime(now, ClockTrust().trusted, info.not_before, info.not_after));
      }
      if (!ok.ok()) {
        deps_.log.Warn("pending certificate unusable after restart; rolling back", {{"error", ok.ToString()}});
        journal_.pending.reset();
        journal_.state = AgentState::kActive;
        journal_.last_error = Text(ok.WithContext("pending certificate after restart"));
        journal_.failures++;
        journal_.next_attempt = NextAttemptAfterFailure(now, journal_.failures, options_.renewal, rng_);
      } else {
        deps_.log.Info("resuming the proof of the pending identity after restart");
        resume_verifying_ = true;
      }
      break;
    }
    case AgentState::kCommitting:
      // The broker acknowledged the ack with the new identity: roll forward.
      deps_.log.Info("finishing the commit interrupted by a restart", {{"slot", journal_.pending->slot}});
      CF_RETURN_IF_ERROR(Commit());
      break;
    case AgentState::kRecovering: {
      // The provisioning either committed the certificate file for the new slot or not.
      std::string other = OtherSlot(journal_.current_slot);
      if (SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file, {other}) == other) {
        deps_.log.Info("expired-certificate recovery committed before the restart", {{"slot", other}});
        AdoptRecovered(other);
        return Status::Ok();
      }
      deps_.log.Warn("expired-certificate recovery interrupted by a restart; retrying later");
      journal_.state = AgentState::kActive;
      journal_.last_error = "expired-certificate recovery interrupted (restart)";
      journal_.failures++;
      journal_.next_attempt = NextAttemptAfterFailure(now, journal_.failures, options_.renewal, rng_);
      break;
    }
    case AgentState::kActive:
      break;
  }
  if (journal_.state == AgentState::kActive || journal_.state == AgentState::kVerifying) {
    // The certificate file is the pointer: if it disagrees with the journal, it wins.
    std::string slot = SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file,
                                       {options_.key_slot, OtherSlot(options_.key_slot)});
    if (slot.empty()) {
      deps_.log.Error("the certificate file does not match any identity key; unprovisioned",
                      {{"cert_file", options_.cert_file}});
      auto trusted = journal_.last_trusted_time;
      journal_ = Journal{};
      journal_.last_trusted_time = trusted;
      journal_.last_error = "identity certificate missing or not matching a key";
      return Save();
    }
    if (slot != journal_.current_slot) {
      deps_.log.Warn("certificate file is certified by another slot than journaled; following the file",
                     {{"journal", journal_.current_slot}, {"file", slot}});
      journal_.current_slot = slot;
      if (journal_.pending && journal_.pending->slot == slot) {
        journal_.pending.reset();
        journal_.state = AgentState::kActive;
        resume_verifying_ = false;
      }
      if (journal_.retired_slot == slot) journal_.retired_slot.clear();
    }
  }
  RefreshCertInfo();
  CF_RETURN_IF_ERROR(Save());
  FinishRetirement();
  return Status::Ok();
}

// ---- Bootstrap and connection ------------------------------------------------------

void Daemon::TryBootstrap() {
  if (journal_.state != AgentState::kUnprovisioned) return;
  sh::WallTime now = deps_.clock.Now();
  if (now < next_bootstrap_) return;
  if (!deps_.bootstrap) {
    if (bootstrap_failures_ == 0) deps_.log.Error("no identity and no provisioning configured");
    bootstrap_failures_ = 1;
    next_bootstrap_ = sh::WallTime::max();
    return;
  }
  journal_.state = AgentState::kProvisioning;
  if (!Save().ok()) return;
  Failpoint(kFpProvisioningJournaled);
  deps_.log.Info("provisioning the first identity");
  Status st = deps_.bootstrap();
  std::string slot = SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file,
                                     {options_.key_slot, OtherSlot(options_.key_slot)});
  if (!slot.empty()) {
    bootstrap_failures_ = 0;
    Status derived = DeriveFreshJournal();
    if (!derived.ok()) deps_.log.Error("after provisioning", {{"error", derived.ToString()}});
    if (derived.ok()) Failpoint(kFpProvisionedJournaled);
    return;
  }
  if (st.ok()) st = Status(Code::kInternal, "provisioning reported success but left no usable identity");
  bootstrap_failures_++;
  journal_.state = AgentState::kUnprovisioned;
  journal_.last_error = Text(st);
  next_bootstrap_ = NextAttemptAfterFailure(now, bootstrap_failures_, options_.renewal, rng_);
  deps_.log.Warn("provisioning failed", {{"error", st.ToString()}, {"next", sh::FormatRfc3339(next_bootstrap_)}});
  (void)Save();
}

sh::Result<std::unique_ptr<Session>> Daemon::ConnectWith(const ClientIdentity& identity) {
  CF_ASSIGN_OR_RETURN(std::string status_topic, sh::ThingTopic(journal_.thing_name, sh::kStatusSuffix));
  CF_ASSIGN_OR_RETURN(std::string request_topic, sh::ThingTopic(journal_.thing_name, sh::kRotationRequestSuffix));
  sh::MqttWill will;
  will.topic = status_topic;
  auto cert = sh::CertFromPem(identity.cert_pem);
  if (cert) {
    sh::CertInfo info = sh::DescribeCert(cert->get());
    sh::AgentStatus offline{journal_.thing_name, info.id, info.not_after, "offline", "", journal_.last_rotation,
                            journal_.next_renewal, options_.agent_version, deps_.clock.Now()};
    if (auto payload = sh::EncodeAgentStatus(offline)) will.payload = *payload;
  }
  uint64_t generation = ++generation_;
  SessionHandlers handlers;
  handlers.on_connection = [this, generation](bool up) {
    Event e{Event::kConnection};
    e.generation = generation;
    e.connected = up;
    Post(std::move(e));
  };
  handlers.on_message = [this, generation](const sh::MqttMessage& m) {
    Event e{Event::kMessage};
    e.generation = generation;
    e.message = m;
    Post(std::move(e));
  };
  return deps_.broker.Connect(identity, will, {request_topic}, std::move(handlers));
}

void Daemon::TryConnect() {
  if (session_ || journal_.state != AgentState::kActive) return;
  sh::WallTime now = deps_.clock.Now();
  if (now < next_connect_) return;
  auto key = deps_.keys.Load(journal_.current_slot);
  Status st = key ? Status::Ok() : key.error();
  if (st.ok() && !cert_) st = Status(Code::kNotFound, "no certificate in " + options_.cert_file);
  if (st.ok()) {
    auto session = ConnectWith(ClientIdentity{cert_pem_, (*key)->pkey(), journal_.thing_name});
    if (session) {
      session_ = std::move(*session);
      connect_failures_ = 0;
      deps_.log.Info("connected to the broker", {{"thing", journal_.thing_name}, {"certificate_id", cert_id_}});
      current_key_ = std::move(*key);
      OnConnected();
      return;
    }
    st = session.error();
  }
  connect_failures_++;
  std::chrono::milliseconds delay =
      BackoffDelay(connect_failures_, rng_, duration_cast<std::chrono::milliseconds>(options_.reconnect_base),
                   duration_cast<std::chrono::milliseconds>(options_.reconnect_cap));
  next_connect_ = Later(now, std::max(delay, std::chrono::milliseconds(100)));
  deps_.log.Warn("cannot connect to the broker", {{"error", st.ToString()}, {"retry_in_ms", std::to_string(delay.count())}});
}

void Daemon::OnConnected() {
  // The agent applies its own threshold on every (re)connect, and a failure that was
  // waiting for connectivity is retried at once.
  if (lost_connection_ && journal_.failures > 0 && journal_.next_attempt) {
    journal_.next_attempt.reset();
    (void)Save();
  }
  lost_connection_ = false;
  PublishStatus();
}

void Daemon::PublishStatus() {
  if (!session_ || journal_.thing_name.empty() || !cert_) return;
  auto topic = sh::ThingTopic(journal_.thing_name, sh::kStatusSuffix);
  if (!topic) return;
  sh::CertInfo info = sh::DescribeCert(cert_.get());
  sh::AgentStatus status{journal_.thing_name, info.id,           info.not_after,
                         std::string(StateName(journal_.state)), journal_.last_error,
                         journal_.last_rotation,                 journal_.next_renewal,
                         options_.agent_version,                 deps_.clock.Now()};
  auto payload = sh::EncodeAgentStatus(status);
  if (!payload) {
    deps_.log.Error("cannot encode the status", {{"error", payload.error().ToString()}});
    return;
  }
  Status st = session_->Publish(*topic, *payload, 1, true);
  if (!st.ok()) deps_.log.Warn("could not publish the status", {{"error", st.ToString()}});
}

// ---- Events ------------------------------------------------------------------------

void Daemon::Post(Event event) {
  {
    std::lock_guard lock(mu_);
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

void Daemon::Wake() { cv_.notify_all(); }

void Daemon::RequestRenewal(std::function<void(const std::string&)> done) {
  Event e{Event::kRenew};
  e.done = std::move(done);
  Post(std::move(e));
}

DaemonSnapshot Daemon::Snapshot() const {
  std::lock_guard lock(mu_);
  return snapshot_;
}

void Daemon::HandleEvent(Event& e) {
  switch (e.kind) {
    case Event::kRenew:
      deps_.log.Info("rotation requested locally");
      if (!journal_.rotation_requested) journal_.requested_rotation_id.clear();  // keep a companion's id
      journal_.rotation_requested = true;
      journal_.next_attempt.reset();
      (void)Save();
      if (e.done) renew_waiters_.push_back(std::move(e.done));
      return;
    case Event::kConnection:
      if (e.generation != generation_ || !session_) return;
      if (!e.connected) {
        lost_connection_ = true;
        deps_.log.Warn("connection to the broker lost; the session reconnects");
      } else {
        OnConnected();
      }
      return;
    case Event::kMessage: {
      if (e.generation != generation_) return;
      if (e.message.payload.empty()) return;  // a cleared retained request
      auto request = sh::DecodeRotationRequest(e.message.payload);
      if (!request) {
        deps_.log.Warn("ignoring a malformed rotation request", {{"error", request.error().ToString()}});
        return;
      }
      if (request->rotation_id == journal_.last_rotation_id) {
        // Done already, and the companion has not cleared the request yet: it may never
        // have seen the ack (it was offline, or the ack was lost). Send it again; the
        // companion treats a repeated ack as a no-op.
        ResendLastAck();
        return;
      }
      if (journal_.rotation_requested && request->rotation_id == journal_.requested_rotation_id) {
        return;  // queued
      }
      deps_.log.Info("rotation requested by the companion",
                     {{"rotation_id", request->rotation_id}, {"reason", request->reason}});
      journal_.rotation_requested = true;
      journal_.requested_rotation_id = request->rotation_id;
      journal_.next_attempt.reset();
      (void)Save();
      return;
    }
  }
}

// ---- The loop ------------------------------------------------------------------------

bool Daemon::RotationDue(sh::WallTime now) const {
  if (journal_.state != AgentState::kActive || !cert_) return false;
  if (journal_.next_attempt && now < *journal_.next_attempt) return false;
  if (journal_.rotation_requested) return true;
  return journal_.next_renewal && now >= *journal_.next_renewal && ClockTrust().trusted;
}

void Daemon::Tick() {
  std::deque<Event> events;
  std::optional<RenewalPolicy> renewal;
  {
    std::lock_guard lock(mu_);
    events.swap(events_);
    renewal.swap(pending_renewal_);
  }
  if (renewal) {
    options_.renewal = *renewal;
    // Mid-rotation the policy takes effect at the commit, which recomputes the renewal time.
    if (journal_.state == AgentState::kActive && cert_) {
      RefreshCertInfo();
      (void)Save();  // logged inside; the next Save retries
    }
  }
  for (Event& e : events) HandleEvent(e);

  TryBootstrap();
  RetryCommit();
  if (resume_verifying_) {
    resume_verifying_ = false;
    Status st = ProveAndCommit();
    if (!st.ok()) Rollback(st);
  }
  TryConnect();

  sh::WallTime now = deps_.clock.Now();
  if (RotationDue(now)) {
    bool connected = session_ != nullptr && session_->connected();
    bool expired = cert_ && ClockTrust().trusted && now >= sh::DescribeCert(cert_.get()).not_after;
    if (connected || expired) {
      Status st = Rotate();
      if (!st.ok()) {
        if (expired && deps_.recover && journal_.state == AgentState::kRotating && IsExpiryRefusal(st)) {
          RecoverExpired(st);
        } else {
          Rollback(st);
        }
      }
      TryConnect();
    }
  }
  if (!journal_.rotation_requested && !renew_waiters_.empty()) ReplyRenewals("ok certificate_id=" + cert_id_);
  {
    std::lock_guard lock(mu_);
    snapshot_.journal = journal_;
    snapshot_.connected = session_ != nullptr && session_->connected();
    TimeTrust trust = ClockTrust();
    snapshot_.clock_trusted = trust.trusted;
    snapshot_.clock_reason = trust.reason;
  }
}

sh::WallTime Daemon::NextWakeup() const {
  sh::WallTime next = sh::WallTime::max();
  if (journal_.state == AgentState::kUnprovisioned) next = std::min(next, next_bootstrap_);
  if (journal_.state == AgentState::kCommitting) next = std::min(next, journal_.next_attempt.value_or(deps_.clock.Now()));
  if (!session_ && journal_.state == AgentState::kActive) next = std::min(next, next_connect_);
  if (journal_.state == AgentState::kActive) {
    if (journal_.next_attempt) {
      next = std::min(next, *journal_.next_attempt);
    } else if (journal_.rotation_requested) {
      next = std::min(next, deps_.clock.Now());
    } else if (journal_.next_renewal) {
      next = std::min(next, *journal_.next_renewal);
    }
  }
  return next;
}

void Daemon::SetRenewalPolicy(const RenewalPolicy& policy) {
  {
    std::lock_guard lock(mu_);
    pending_renewal_ = policy;
  }
  Wake();
}

void Daemon::Run(const std::atomic<bool>& stop, const std::function<void()>& after_tick,
                 std::chrono::milliseconds tick_at_least) {
  while (!stop.load()) {
    Tick();
    if (after_tick) after_tick();
    sh::WallTime now = deps_.clock.Now();
    sh::WallTime next = NextWakeup();
    // Re-check at least every minute: wall-clock jumps and a clock becoming trusted.
    auto wait = std::min(tick_at_least, std::chrono::milliseconds(60000));
    if (next < now + wait) wait = std::max(std::chrono::milliseconds(0), duration_cast<std::chrono::milliseconds>(next - now));
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, wait, [&] { return !events_.empty() || pending_renewal_.has_value() || stop.load(); });
  }
  session_.reset();
}

void Daemon::ReplyRenewals(const std::string& result) {
  for (auto& done : renew_waiters_) done(result);
  renew_waiters_.clear();
}

// ---- Rotation -----------------------------------------------------------------------

Status Daemon::Rotate() {
  sh::WallTime now = deps_.clock.Now();
  std::string new_slot = OtherSlot(journal_.current_slot);
  deps_.log.Info("rotation starting", {{"from_slot", journal_.current_slot}, {"to_slot", new_slot},
                                       {"rotation_id", journal_.requested_rotation_id}});
  journal_.state = AgentState::kRotating;
  journal_.pending = PendingRotation{new_slot, journal_.requested_rotation_id, "", ""};
  CF_RETURN_IF_ERROR(Save());
  Failpoint(kFpRotatingJournaled);
  PublishStatus();

  CF_ASSIGN_OR_RETURN(auto current_key, deps_.keys.Load(journal_.current_slot));
  CF_ASSIGN_OR_RETURN(auto new_key, KeyForSlot(deps_.keys, new_slot, options_.key_type, deps_.log));
  Failpoint(kFpRotateKeyGenerated);
  ClientIdentity current{cert_pem_, current_key->pkey(), journal_.thing_name};
  auto issued = deps_.enroller.Reenroll(current, cert_.get(), new_key->pkey());
  if (!issued) return issued.error().WithContext("re-enrollment");
  Failpoint(kFpRotateCertIssued);
  NoteTrustedTime(issued->server_date);

  sh::CertInfo info = sh::DescribeCert(issued->cert.get());
  CF_RETURN_IF_ERROR(VerifyIssued(issued->cert.get(), new_key->pkey(), options_.trust_anchor_pem, issued->ca_certs,
                                  ValidityCheckTime(now, ClockTrust().trusted, info.not_before, info.not_after)));
  if (X509_NAME_cmp(X509_get_subject_name(issued->cert.get()), X509_get_subject_name(cert_.get())) != 0) {
    return Status(Code::kDataLoss, "the re-issued certificate's subject differs from the current one");
  }
  journal_.state = AgentState::kVerifying;
  journal_.pending->certificate_pem = sh::CertToPem(issued->cert.get());
  journal_.pending->ca_pem = sh::CertsToPem(issued->ca_certs);
  CF_RETURN_IF_ERROR(Save());
  Failpoint(kFpVerifyingJournaled);
  deps_.log.Info("new certificate issued and verified", {{"serial", info.serial}, {"certificate_id", info.id},
                                                         {"not_after", sh::FormatRfc3339(info.not_after)}});
  return ProveAndCommit();
}

Status Daemon::ProveAndCommit() {
  const PendingRotation& p = *journal_.pending;
  CF_ASSIGN_OR_RETURN(auto new_key, deps_.keys.Load(p.slot));
  CF_ASSIGN_OR_RETURN(sh::X509Ptr new_cert, sh::CertFromPem(p.certificate_pem));
  // The broker would drop one of two sessions with the same client id: leave first.
  session_.reset();
  current_key_.reset();
  CF_ASSIGN_OR_RETURN(auto session, ConnectWith(ClientIdentity{p.certificate_pem, new_key->pkey(), journal_.thing_name})
                                        .map_error([](Status s) { return s.WithContext("connecting with the new identity"); }));

  sh::RotationAck ack;
  ack.thing_name = journal_.thing_name;
  ack.rotation_id = p.rotation_id;
  ack.certificate_id = sh::CertFingerprint(new_cert.get());
  ack.previous_certificate_id = cert_id_;
  ack.signed_at = deps_.clock.Now();
  CF_ASSIGN_OR_RETURN(ack.signature, hal::SignSha256(*new_key, sh::RotationAckSignedText(ack)));
  CF_ASSIGN_OR_RETURN(std::string payload, sh::EncodeRotationAck(ack));
  CF_ASSIGN_OR_RETURN(std::string topic, sh::ThingTopic(journal_.thing_name, sh::kRotationAckSuffix));
  CF_RETURN_IF_ERROR(session->Publish(topic, payload, 1, false).WithContext("publishing the rotation ack"));
  Failpoint(kFpAckAcknowledged);

  journal_.state = AgentState::kCommitting;
  journal_.last_ack = payload;
  CF_RETURN_IF_ERROR(Save());
  Failpoint(kFpCommittingJournaled);
  session_ = std::move(session);
  current_key_ = std::move(new_key);
  CF_RETURN_IF_ERROR(Commit());
  FinishRetirement();
  OnConnected();
  return Status::Ok();
}

Status Daemon::Commit() {
  const PendingRotation p = *journal_.pending;
  // The flip: one atomic replacement of the certificate file.
  CF_RETURN_IF_ERROR(deps_.fs.WriteFileAtomic(options_.cert_file, p.certificate_pem, 0644)
                         .WithContext("writing " + options_.cert_file));
  Failpoint(kFpRotateCertFileWritten);
  std::string old_slot = journal_.current_slot;
  sh::WallTime now = deps_.clock.Now();
  journal_.state = AgentState::kActive;
  journal_.current_slot = p.slot;
  journal_.retired_slot = old_slot;
  journal_.pending.reset();
  journal_.ca_pem = p.ca_pem;
  journal_.last_rotation = now;
  if (!p.rotation_id.empty()) journal_.last_rotation_id = p.rotation_id;
  if (journal_.requested_rotation_id == p.rotation_id) {
    journal_.rotation_requested = false;
    journal_.requested_rotation_id.clear();
  }
  journal_.failures = 0;
  journal_.last_error.clear();
  journal_.next_attempt.reset();
  RefreshCertInfo();
  CF_RETURN_IF_ERROR(Save());
  Failpoint(kFpActiveJournaled);
  deps_.log.Info("rotation committed", {{"certificate_id", cert_id_}, {"slot", p.slot}});
  if (deps_.post_rotation) {
    auto key = deps_.keys.Load(p.slot);
    deps_.post_rotation(CommittedIdentity{journal_.thing_name, cert_id_, options_.cert_file, p.certificate_pem,
                                          p.ca_pem, key ? (*key)->uri() : ""});
  }
  return Status::Ok();
}

void Daemon::RetryCommit() {
  if (journal_.state != AgentState::kCommitting) return;
  if (journal_.next_attempt && deps_.clock.Now() < *journal_.next_attempt) return;
  Status st = Commit();
  if (!st.ok()) {
    Rollback(st);
    return;
  }
  FinishRetirement();
  OnConnected();
}

void Daemon::ResendLastAck() {
  if (journal_.last_ack.empty() || !session_) return;
  auto topic = sh::ThingTopic(journal_.thing_name, sh::kRotationAckSuffix);
  if (!topic) return;
  Status st = session_->Publish(*topic, journal_.last_ack, 1, false);
  if (st.ok()) {
    deps_.log.Info("rotation ack sent again", {{"rotation_id", journal_.last_rotation_id}});
  } else {
    deps_.log.Warn("sending the rotation ack again failed", {{"error", st.ToString()}});
  }
}

void Daemon::FinishRetirement() {
  if (journal_.retired_slot.empty()) return;
  SafeDelete(journal_.retired_slot);
  Failpoint(kFpOldKeyDeleted);
  journal_.retired_slot.clear();
  (void)Save();
}

void Daemon::SafeDelete(const std::string& slot) {
  // Never the key that certifies the certificate file, whatever the journal says.
  if (SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file, {slot}) == slot) {
    deps_.log.Error("refusing to delete the key of the current certificate", {{"slot", slot}});
    return;
  }
  Status st = deps_.keys.Delete(slot);
  if (st.ok()) {
    deps_.log.Info("old key deleted", {{"slot", slot}});
  } else if (st.code() != Code::kNotFound) {
    deps_.log.Warn("could not delete the old key", {{"slot", slot}, {"error", st.ToString()}});
  }
}

bool IsExpiryRefusal(const Status& status) {
  const std::string& m = status.message();
  if (status.code() == Code::kPermissionDenied && m.find("expired_certificate") != std::string::npos) return true;
  // A server that checks validity in the TLS handshake answers with a certificate_expired alert.
  return m.find("certificate expired") != std::string::npos || m.find("CERTIFICATE_EXPIRED") != std::string::npos;
}

void Daemon::RecoverExpired(const Status& why) {
  sh::WallTime now = deps_.clock.Now();
  const std::string new_slot = OtherSlot(journal_.current_slot);
  const std::string old_id = cert_id_;
  // The old key stays in current_slot until the new identity is committed.
  journal_.state = AgentState::kRecovering;
  journal_.pending.reset();
  journal_.last_error = Text(why);
  if (!Save().ok()) {
    journal_.state = AgentState::kRotating;
    journal_.pending = PendingRotation{new_slot, journal_.requested_rotation_id, "", ""};
    Rollback(Status(Code::kUnavailable, "could not journal the recovery"));
    return;
  }
  deps_.log.Warn("certificate expired and re-enrollment refused; recovering through claim provisioning",
                 {{"certificate_id", old_id}, {"not_after", cert_ ? sh::FormatRfc3339(sh::DescribeCert(cert_.get()).not_after) : ""},
                  {"refusal", why.ToString()}, {"new_slot", new_slot}});
  // Provisioning connects with the thing name as client id: leave the old session first.
  session_.reset();
  current_key_.reset();
  Status st = deps_.recover(new_slot);
  if (SlotCertifiedBy(deps_.fs, deps_.keys, options_.cert_file, {new_slot}) == new_slot) {
    AdoptRecovered(new_slot);
    deps_.log.Info("expired-certificate recovery committed",
                   {{"previous_certificate_id", old_id}, {"certificate_id", cert_id_}, {"thing", journal_.thing_name}});
    next_connect_ = now;
    ReplyRenewals("ok certificate_id=" + cert_id_);
    return;
  }
  if (st.ok()) st = Status(Code::kInternal, "recovery reported success but left no identity for slot " + new_slot);
  st = st.WithContext("expired-certificate recovery");
  journal_.state = AgentState::kActive;
  journal_.failures++;
  journal_.last_error = Text(st);
  journal_.next_attempt = NextAttemptAfterFailure(now, journal_.failures, options_.renewal, rng_);
  deps_.log.Warn("expired-certificate recovery failed; keeping the expired identity",
                 {{"error", st.ToString()}, {"failures", std::to_string(journal_.failures)},
                  {"next_attempt", sh::FormatRfc3339(*journal_.next_attempt)}});
  (void)Save();
  next_connect_ = now;
  ReplyRenewals("error " + Text(st));
}

void Daemon::AdoptRecovered(const std::string& slot) {
  sh::WallTime now = deps_.clock.Now();
  journal_.retired_slot = journal_.current_slot;
  journal_.current_slot = slot;
  journal_.state = AgentState::kActive;
  journal_.pending.reset();
  journal_.ca_pem.clear();
  journal_.last_rotation = now;
  journal_.rotation_requested = false;
  journal_.requested_rotation_id.clear();
  journal_.failures = 0;
  journal_.last_error.clear();
  journal_.next_attempt.reset();
  RefreshCertInfo();
  if (cert_) {
    std::string cn = sh::NameCommonName(X509_get_subject_name(cert_.get()));
    if (sh::ValidateThingName(cn).ok()) journal_.thing_name = cn;
  }
  (void)Save();
  if (deps_.post_rotation) {
    auto key = deps_.keys.Load(slot);
    deps_.post_rotation(CommittedIdentity{journal_.thing_name, cert_id_, options_.cert_file, cert_pem_, "",
                                          key ? (*key)->uri() : ""});
  }
  FinishRetirement();
}

void Daemon::Rollback(const Status& why) {
  sh::WallTime now = deps_.clock.Now();
  if (journal_.state == AgentState::kCommitting) {
    // Past the point of no return (only a failed file write, e.g. a full disk, gets
    // here): the old certificate file and key stay as they are; the roll-forward is
    // retried after backoff (RetryCommit) and on the next start.
    journal_.failures++;
    journal_.last_error = Text(why);
    journal_.next_attempt = NextAttemptAfterFailure(now, journal_.failures, options_.renewal, rng_);
    deps_.log.Error("commit failed; retrying the roll-forward",
                    {{"error", why.ToString()}, {"next_attempt", sh::FormatRfc3339(*journal_.next_attempt)}});
    return;
  }
  // session_ is the old identity's session, or null when ProveAndCommit had left it:
  // TryConnect brings the old identity back.
  journal_.state = AgentState::kActive;
  journal_.pending.reset();
  journal_.failures++;
  journal_.last_error = Text(why);
  journal_.next_attempt = NextAttemptAfterFailure(now, journal_.failures, options_.renewal, rng_);
  deps_.log.Warn("rotation failed; back to the current identity",
                 {{"error", why.ToString()}, {"failures", std::to_string(journal_.failures)},
                  {"next_attempt", sh::FormatRfc3339(*journal_.next_attempt)}});
  (void)Save();
  next_connect_ = now;
  ReplyRenewals("error " + Text(why));
}

}  // namespace certfleet::agent
