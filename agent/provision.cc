#include "agent/provision.h"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "agent/est_commands.h"
#include "agent/failpoint.h"
#include "agent/issuance.h"
#include "shared/core/base64.h"
#include "shared/mqtt/client.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"

namespace certfleet::agent {

using shared::Code;
using shared::Result;
using shared::Status;
namespace sh = shared;
using std::chrono::milliseconds;

namespace {

// Replies, handed over from the MQTT network thread. The handler only enqueues.
class Inbox {
 public:
  void Push(const sh::MqttMessage& m) {
    {
      std::lock_guard lock(mu_);
      messages_.push_back(m);
    }
    cv_.notify_all();
  }
  // The first message on `accepted` or `rejected` within `timeout`; others are dropped.
  std::optional<sh::MqttMessage> Wait(const std::string& accepted, const std::string& rejected, milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::unique_lock lock(mu_);
    while (true) {
      while (!messages_.empty()) {
        sh::MqttMessage m = std::move(messages_.front());
        messages_.pop_front();
        if (m.topic == accepted || m.topic == rejected) return m;
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && messages_.empty()) return std::nullopt;
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<sh::MqttMessage> messages_;
};

struct Topics {
  std::string csr, csr_accepted, csr_rejected;
  std::string register_thing, register_accepted, register_rejected;
};

Result<Topics> MakeTopics(const ProvisionOptions& o, const std::string& claim_subject) {
  Topics t;
  sh::ProvisioningTopic topic{o.dialect, sh::Operation::kCreateCertificateFromCsr, o.client_id, o.template_name,
                              claim_subject};
  CF_ASSIGN_OR_RETURN(t.csr, sh::RequestTopic(topic));
  CF_ASSIGN_OR_RETURN(t.csr_accepted, sh::ReplyTopic(topic, sh::Reply::kAccepted));
  CF_ASSIGN_OR_RETURN(t.csr_rejected, sh::ReplyTopic(topic, sh::Reply::kRejected));
  topic.operation = sh::Operation::kRegisterThing;
  CF_ASSIGN_OR_RETURN(t.register_thing, sh::RequestTopic(topic));
  CF_ASSIGN_OR_RETURN(t.register_accepted, sh::ReplyTopic(topic, sh::Reply::kAccepted));
  CF_ASSIGN_OR_RETURN(t.register_rejected, sh::ReplyTopic(topic, sh::Reply::kRejected));
  return t;
}

bool IsRetryable(const Status& st) { return st.code() == Code::kUnavailable || st.code() == Code::kDeadlineExceeded; }

// Publishes `payload` (QoS 1) and waits for the reply. The accepted payload, or the
// rejection as a Status (kUnavailable for 429/5xx), or kDeadlineExceeded.
Result<std::string> Request(sh::MqttClient& client, Inbox& inbox, sh::Operation op, const std::string& topic,
                            const std::string& accepted, const std::string& rejected, const std::string& payload,
                            milliseconds timeout) {
  std::string name(sh::OperationName(op));
  CF_RETURN_IF_ERROR(client.Publish(topic, payload, 1, false, timeout).WithContext(name));
  auto reply = inbox.Wait(accepted, rejected, timeout);
  if (!reply) {
    return sh::Error(Code::kDeadlineExceeded,
                     name + ": no reply within " + std::to_string(timeout.count()) + " ms on " + accepted);
  }
  if (reply->topic == accepted) return std::move(reply->payload);
  auto rejection = sh::DecodeRejection(reply->payload);
  if (!rejection) return sh::Error(rejection.error().WithContext(name + " rejected with a malformed payload"));
  return sh::Error(sh::RejectionToStatus(*rejection).WithContext(name));
}

struct Claim {
  std::string cert_pem;
  std::unique_ptr<hal::KeyHandle> key;
  std::string subject;  // the claim certificate's CN
};

// What a successful claim session produced.
struct Issued {
  std::unique_ptr<hal::KeyHandle> key;
  std::string cert_pem;  // leaf first, as the companion sent it
  sh::X509Ptr cert;
  std::string certificate_id;
  sh::RegisterThingAccepted registration;
};

sh::MqttOptions BrokerOptions(const ProvisionOptions& o, int port, const std::string& client_id,
                              const std::string& anchor_pem, const std::string& cert_pem, EVP_PKEY* key) {
  sh::MqttOptions m;
  m.host = o.broker_host;
  m.port = port;
  m.client_id = client_id;
  m.trust_anchor_pem = anchor_pem;
  m.client_cert_pem = cert_pem;
  m.client_key = key;
  m.verify_name = o.broker_name;
  return m;
}

// One claim session: CreateCertificateFromCsr, verification, RegisterThing.
// Adds the proof that we hold the key of `previous_id` (certified by the key in
// OtherSlot(o.key_slot)) to `parameters`; without it when that fails (logged): the
// companion's hook then decides on the claim alone.
void AddPreviousCertificateProof(const ProvisionOptions& o, hal::KeyStore& keys, const std::string& previous_id,
                                 const std::string& new_id, sh::StringMap& parameters, sh::Logger& log) {
  if (previous_id.empty()) return;
  auto key = keys.Load(OtherSlot(o.key_slot));
  auto sig = key ? hal::SignSha256(**key, sh::PreviousCertificateProofText(new_id)) : sh::Error(key.error());
  if (!sig) {
    log.Warn("cannot prove possession of the previous identity's key", {{"error", sig.error().ToString()}});
    return;
  }
  parameters[sh::kPreviousCertificateIdParameter] = previous_id;
  parameters[sh::kPreviousCertificateSignatureParameter] = sh::Base64EncodeLine(*sig);
}

Result<Issued> ClaimSession(const ProvisionOptions& o, const Claim& claim, const Topics& topics,
                            const std::string& anchor_pem, hal::KeyStore& keys, const sh::Clock& clock,
                            sh::Logger& log, const std::string& previous_id) {
  CF_ASSIGN_OR_RETURN(auto client, sh::MqttClient::Create(BrokerOptions(o, o.claim_port, o.client_id, anchor_pem,
                                                                        claim.cert_pem, claim.key->pkey()),
                                                          log));
  auto inbox = std::make_shared<Inbox>();
  client->SetMessageHandler([inbox](const sh::MqttMessage& m) { inbox->Push(m); });
  CF_RETURN_IF_ERROR(client->Connect(o.timeout));
  for (const std::string* filter : {&topics.csr_accepted, &topics.csr_rejected, &topics.register_accepted,
                                    &topics.register_rejected}) {
    CF_RETURN_IF_ERROR(client->Subscribe(*filter, 1, o.timeout));
  }

  Issued out;
  CF_ASSIGN_OR_RETURN(out.key, KeyForSlot(keys, o.key_slot, o.key_type, log));
  Failpoint(kFpClaimKeyGenerated);
  sh::CsrRequest req;
  req.common_name = o.common_name;
  CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsr(out.key->pkey(), req));
  CF_ASSIGN_OR_RETURN(std::string csr_payload, sh::Encode(sh::CreateCertificateFromCsrRequest{sh::CsrToPem(csr.get())}));
  CF_ASSIGN_OR_RETURN(std::string created_payload,
                      Request(*client, *inbox, sh::Operation::kCreateCertificateFromCsr, topics.csr,
                              topics.csr_accepted, topics.csr_rejected, csr_payload, o.timeout));
  CF_ASSIGN_OR_RETURN(sh::CreateCertificateFromCsrAccepted created,
                      sh::DecodeCreateCertificateFromCsrAccepted(created_payload));

  auto chain = sh::CertsFromPem(created.certificate_pem);
  if (!chain) return sh::Error(chain.error().WithContext("CreateCertificateFromCsr: certificatePem"));
  out.cert = std::move(chain->front());
  chain->erase(chain->begin());
  CF_RETURN_IF_ERROR(VerifyIssued(out.cert.get(), out.key->pkey(), anchor_pem, *chain, clock.Now()));
  if (sh::NameCommonName(X509_get_subject_name(out.cert.get())) != o.common_name) {
    return sh::Error(Code::kDataLoss, "the issued certificate's common name is not '" + o.common_name + "'");
  }
  Failpoint(kFpClaimCertReceived);
  out.cert_pem = created.certificate_pem;
  out.certificate_id = created.certificate_id;
  log.Info("certificate issued, registering", {{"certificate_id", out.certificate_id},
                                               {"serial", sh::DescribeCert(out.cert.get()).serial}});

  sh::StringMap parameters = o.parameters;
  AddPreviousCertificateProof(o, keys, previous_id, out.certificate_id, parameters, log);
  CF_ASSIGN_OR_RETURN(std::string register_payload,
                      sh::Encode(sh::RegisterThingRequest{created.certificate_ownership_token, parameters}));
  CF_ASSIGN_OR_RETURN(std::string registered_payload,
                      Request(*client, *inbox, sh::Operation::kRegisterThing, topics.register_thing,
                              topics.register_accepted, topics.register_rejected, register_payload, o.timeout));
  CF_ASSIGN_OR_RETURN(out.registration, sh::DecodeRegisterThingAccepted(registered_payload));
  Failpoint(kFpClaimRegistered);
  client->Disconnect();
  return out;
}

// Connects with the new identity and publishes the retained status message.
Status Prove(const ProvisionOptions& o, const Issued& issued, const std::string& anchor_pem, sh::Logger& log) {
  const std::string& thing = issued.registration.thing_name;
  CF_ASSIGN_OR_RETURN(std::string topic, sh::ThingTopic(thing, "status"));
  nlohmann::json status = {{"state", "provisioned"}, {"certificateId", issued.certificate_id}};
  CF_ASSIGN_OR_RETURN(auto client, sh::MqttClient::Create(BrokerOptions(o, o.things_port, thing, anchor_pem,
                                                                        issued.cert_pem, issued.key->pkey()),
                                                          log));
  CF_RETURN_IF_ERROR(client->Connect(o.timeout).WithContext("connecting with the new identity"));
  CF_RETURN_IF_ERROR(client->Publish(topic, status.dump(), 1, true, o.timeout));
  client->Disconnect();
  return Status::Ok();
}

// Runs `step` until it succeeds, fails for good, or max_attempts are used up.
Status WithRetries(const ProvisionOptions& o, std::string_view what, std::mt19937_64& rng, const Sleeper& sleeper,
                   sh::Logger& log, const std::function<Status()>& step) {
  for (int attempt = 1;; ++attempt) {
    Status st = step();
    if (st.ok()) return st;
    if (!IsRetryable(st)) return st;
    if (attempt >= o.max_attempts) {
      return st.WithContext(std::string(what) + ": giving up after " + std::to_string(attempt) + " attempts");
    }
    milliseconds delay = BackoffDelay(attempt, rng);
    log.Warn("provisioning step failed; retrying",
             {{"step", std::string(what)}, {"attempt", std::to_string(attempt)}, {"error", st.ToString()},
              {"retry_in_ms", std::to_string(delay.count())}});
    sleeper(delay);
  }
}

Result<std::string> ReadAnchor(const std::string& path, sh::Filesystem& fs) {
  CF_ASSIGN_OR_RETURN(std::string pem, fs.ReadFile(path, 1 << 20));
  auto certs = sh::CertsFromPem(pem);
  if (!certs) return sh::Error(certs.error().WithContext(path));
  return pem;
}

Status CheckOptions(const ProvisionOptions& o) {
  auto missing = [](const std::string& what) { return Status(Code::kInvalidArgument, "provisioning needs " + what); };
  if (o.common_name.empty()) return missing("identity.common_name");
  if (o.template_name.empty()) return missing("provisioning.template");
  if (o.cert_file.empty()) return missing("identity.cert_file");
  if (o.claim_cert_file.empty()) return missing("provisioning.claim_cert_file");
  if (o.trust_anchor_file.empty()) return missing("provisioning.trust_anchor_file (or est.trust_anchor_file)");
  if (o.state_file.empty()) return missing("provisioning.state_file");
  if (o.claim_key_slot.empty()) return missing("provisioning.claim_key_slot");
  if (o.max_attempts < 1) return Status(Code::kInvalidArgument, "provisioning.max_attempts must be at least 1");
  if (o.key_slot == o.claim_key_slot || OtherSlot(o.key_slot) == o.claim_key_slot) {
    return Status(Code::kInvalidArgument, "identity.key_slot '" + o.key_slot + "' and provisioning.claim_key_slot '" +
                                              o.claim_key_slot + "' must not share a slot (or an A/B pair)");
  }
  CF_RETURN_IF_ERROR(sh::ValidateTemplateName(o.template_name));
  CF_RETURN_IF_ERROR(sh::ValidateClientId(o.client_id).WithContext("provisioning.client_id"));
  return Status::Ok();
}

std::string Dirname(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

Result<ProvisionOptions> ProvisionOptionsFromConfig(const AgentConfig& c) {
  const auto& p = c.provisioning;
  ProvisionOptions o;
  o.broker_host = p.broker_host;
  o.claim_port = p.claim_port;
  o.things_port = p.things_port;
  o.broker_name = p.broker_name.empty() ? p.broker_host : p.broker_name;
  o.trust_anchor_file = p.trust_anchor_file.empty() ? c.est.trust_anchor_file : p.trust_anchor_file;
  o.claim_cert_file = p.claim_cert_file;
  o.claim_key_slot = p.claim_key_slot;
  o.template_name = p.template_name;
  o.client_id = p.client_id.empty() ? c.identity.common_name : p.client_id;
  CF_ASSIGN_OR_RETURN(o.dialect, sh::ParseDialect(p.dialect));
  o.parameters = p.parameters;
  o.state_file = p.state_file;
  o.timeout = std::chrono::duration_cast<milliseconds>(p.timeout);
  o.max_attempts = p.max_attempts;
  o.common_name = c.identity.common_name;
  CF_ASSIGN_OR_RETURN(o.key_type, sh::ParseKeyType(c.identity.key_type));
  o.key_slot = c.identity.key_slot;
  o.cert_file = c.identity.cert_file;
  o.keystore = c.keystore;
  CF_RETURN_IF_ERROR(CheckOptions(o));
  return o;
}

milliseconds BackoffDelay(int attempt, std::mt19937_64& random, milliseconds base, milliseconds cap) {
  int64_t ceiling = base.count();
  for (int i = 1; i < attempt && ceiling < cap.count(); ++i) ceiling *= 2;
  ceiling = std::min(ceiling, cap.count());
  if (ceiling <= 0) return milliseconds(0);
  return milliseconds(static_cast<int64_t>(random() % static_cast<uint64_t>(ceiling + 1)));
}

Result<ProvisionOutcome> RunProvision(const ProvisionOptions& o, sh::Filesystem& fs, const sh::Clock& clock,
                                      sh::Logger& log, const Sleeper& sleeper) {
  CF_RETURN_IF_ERROR(CheckOptions(o));
  CF_ASSIGN_OR_RETURN(std::string anchor_pem, ReadAnchor(o.trust_anchor_file, fs));
  CF_ASSIGN_OR_RETURN(auto keys, hal::OpenKeyStore(o.keystore, fs));

  std::vector<std::string> taken = {o.key_slot};
  if (!o.replace_identity) taken.push_back(OtherSlot(o.key_slot));
  std::string certified = SlotCertifiedBy(fs, *keys, o.cert_file, taken);
  if (!certified.empty()) {
    return sh::Error(Code::kAlreadyExists, "already provisioned: " + o.cert_file +
                                               " holds a certificate for the key in slot '" + certified + "'");
  }

  // Recovery: the identity being replaced, whose key proves who we were.
  std::string previous_id;
  if (o.replace_identity && SlotCertifiedBy(fs, *keys, o.cert_file, {OtherSlot(o.key_slot)}) == OtherSlot(o.key_slot)) {
    auto pem = fs.ReadFile(o.cert_file, 1 << 20);
    auto prev = pem ? sh::CertFromPem(*pem) : sh::Error(pem.error());
    if (prev) previous_id = sh::CertFingerprint(prev->get());
  }

  Claim claim;
  CF_ASSIGN_OR_RETURN(claim.cert_pem, fs.ReadFile(o.claim_cert_file, 1 << 20));
  auto claim_cert = sh::CertFromPem(claim.cert_pem);
  if (!claim_cert) return sh::Error(claim_cert.error().WithContext(o.claim_cert_file));
  claim.subject = sh::NameCommonName(X509_get_subject_name(claim_cert->get()));
  auto claim_key = keys->Load(o.claim_key_slot);
  if (!claim_key) return sh::Error(claim_key.error().WithContext("the claim key (slot '" + o.claim_key_slot + "')"));
  claim.key = std::move(*claim_key);
  if (!sh::SamePublicKey(X509_get0_pubkey(claim_cert->get()), claim.key->pkey())) {
    return sh::Error(Code::kInvalidArgument, o.claim_cert_file + " does not match the key in slot '" +
                                                 o.claim_key_slot + "'");
  }
  if (o.dialect == sh::Dialect::kCertfleet && claim.subject.empty()) {
    return sh::Error(Code::kInvalidArgument, o.claim_cert_file + " has no common name (the certfleet dialect needs it)");
  }
  CF_ASSIGN_OR_RETURN(Topics topics, MakeTopics(o, claim.subject));

  std::mt19937_64 rng(o.jitter_seed != 0 ? o.jitter_seed : std::random_device{}());
  log.Info("provisioning by claim", {{"claim", claim.subject}, {"client_id", o.client_id},
                                     {"template", o.template_name}, {"dialect", std::string(sh::DialectName(o.dialect))}});

  std::optional<Issued> issued;
  Status st = WithRetries(o, "provisioning", rng, sleeper, log, [&]() -> Status {
    auto r = ClaimSession(o, claim, topics, anchor_pem, *keys, clock, log, previous_id);
    if (!r) return r.error();
    issued = std::move(*r);
    return Status::Ok();
  });
  if (!st.ok()) return sh::Error(st);

  // Commit: the state first, then the certificate, which makes the identity current
  // (a crash in between leaves a state file that the next run overwrites).
  sh::CertInfo info = sh::DescribeCert(issued->cert.get());
  nlohmann::json state = {{"thingName", issued->registration.thing_name},
                          {"deviceConfiguration", issued->registration.device_configuration},
                          {"certificateId", issued->certificate_id},
                          {"provisionedAt", sh::FormatRfc3339(clock.Now())}};
  std::string state_dir = Dirname(o.state_file);
  if (!fs.Exists(state_dir)) CF_RETURN_IF_ERROR(fs.MakeDirs(state_dir, 0700));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(o.state_file, state.dump(2) + "\n", 0600));
  Failpoint(kFpClaimStateFileWritten);
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(o.cert_file, issued->cert_pem, 0644));
  Failpoint(kFpClaimCertFileWritten);
  log.Info("provisioned", {{"thing", issued->registration.thing_name}, {"certificate_id", issued->certificate_id},
                           {"serial", info.serial}, {"not_after", sh::FormatRfc3339(info.not_after)},
                           {"key", issued->key->uri()}});

  st = WithRetries(o, "proving the new identity", rng, sleeper, log, [&] { return Prove(o, *issued, anchor_pem, log); });
  if (!st.ok()) {
    return sh::Error(st.WithContext("provisioned as '" + issued->registration.thing_name +
                                    "' but the new identity could not be proven"));
  }
  return ProvisionOutcome{issued->registration.thing_name, issued->certificate_id, info.not_after,
                          issued->key->slot(), issued->registration.device_configuration};
}

}  // namespace certfleet::agent
