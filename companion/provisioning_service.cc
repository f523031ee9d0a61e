#include "companion/provisioning_service.h"

#include <openssl/crypto.h>

#include "companion/ca.h"
#include "companion/est_service.h"
#include "shared/core/base64.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

constexpr auto kPublishTimeout = std::chrono::seconds(10);
constexpr size_t kMaxQueue = 10000;

std::string Who(const sh::ProvisioningTopic& t) {
  return t.claim_subject.empty() ? t.client_id : t.claim_subject + "/" + t.client_id;
}

}  // namespace

ProvisioningService::ProvisioningService(CompanionState& state, ProvisioningOptions options, HookRunner& hooks,
                                         const sh::Clock& clock, sh::Logger& log)
    : state_(state), options_(std::move(options)), hooks_(hooks), clock_(clock), log_(log) {
  for (const auto& name : state_.config.profile.key_types) {
    if (auto t = sh::ParseKeyType(name)) allowed_keys_.push_back(*t);
  }
}

ProvisioningService::~ProvisioningService() { Stop(); }

ProvisioningReply ProvisioningService::Reply(const sh::ProvisioningTopic& topic, const Result<std::string>& accepted,
                                             const std::optional<Failure>& failure) {
  ProvisioningReply out;
  if (observer_) observer_(sh::OperationName(topic.operation), accepted && !failure);
  if (accepted && !failure) {
    out.topic = sh::ReplyTopic(topic, sh::Reply::kAccepted).value_or("");
    out.payload = *accepted;
    return out;
  }
  Failure f = failure.value_or(Failure{sh::kInternalFailure, "internal error"});
  if (!failure) {
    log_.Error("provisioning request failed", {{"who", Who(topic)}, {"error", accepted.error().ToString()}});
  }
  out.topic = sh::ReplyTopic(topic, sh::Reply::kRejected).value_or("");
  sh::Rejection r = sh::MakeRejection(f.code, f.message);
  out.payload = sh::Encode(r).value_or("{}");
  if (f.code.status_code < 500) {
    SecurityEvent ev{0, clock_.Now(), std::string(f.code.error_code), Who(topic),
                     std::string(sh::OperationName(topic.operation)) + ": " + f.message};
    Status st = state_.registry->RecordSecurityEvent(ev);
    if (!st.ok()) log_.Error("recording security event failed", {{"error", st.ToString()}});
    log_.Warn("provisioning request rejected", {{"who", Who(topic)}, {"code", std::string(f.code.error_code)},
                                                {"reason", f.message}});
  }
  return out;
}

std::optional<ProvisioningReply> ProvisioningService::Handle(const sh::MqttMessage& message) {
  auto topic = sh::ParseRequestTopic(message.topic);
  if (!topic) return std::nullopt;
  if (topic->dialect != options_.dialect) return std::nullopt;
  std::optional<Failure> failure;
  Result<std::string> accepted = sh::Error(Code::kInternal, "unhandled");
  switch (topic->operation) {
    case sh::Operation::kCreateCertificateFromCsr: accepted = CreateFromCsr(*topic, message.payload, failure); break;
    case sh::Operation::kCreateKeysAndCertificate: accepted = CreateKeys(*topic, message.payload, failure); break;
    case sh::Operation::kRegisterThing: accepted = Register(*topic, message.payload, failure); break;
  }
  return Reply(*topic, accepted, failure);
}

Result<ProvisioningService::Pending> ProvisioningService::IssuePending(const sh::ProvisioningTopic& topic,
                                                                        EVP_PKEY* pub, const std::string& cn) {
  const sh::WallTime now = clock_.Now();
  CertTemplate tmpl;
  CF_ASSIGN_OR_RETURN(tmpl.subject, NameFromCommonName(cn));
  tmpl.public_key = pub;
  tmpl.validity = state_.config.profile.validity;
  tmpl.backdate = state_.config.profile.backdate;
  CF_ASSIGN_OR_RETURN(sh::X509Ptr cert, state_.issuer->Issue(tmpl, now));
  sh::CertInfo info = sh::DescribeCert(cert.get());
  CF_ASSIGN_OR_RETURN(std::string token, NewToken());
  PendingCert p{info.id, info.serial, info.subject, info.not_before, info.not_after, now, sh::CertToPem(cert.get()),
                topic.claim_subject, topic.client_id, now + options_.ownership_token_ttl};
  CF_RETURN_IF_ERROR(state_.registry->RecordPending(p, TokenHash(token)));
  log_.Info("pending certificate issued", {{"who", Who(topic)}, {"serial", info.serial}, {"fingerprint", info.id},
                                           {"common_name", cn}});
  // The reply carries the certificate followed by the intermediate CA(s), so that a
  // device holding only the root as trust anchor can verify it; the root is left out.
  return Pending{p.pem + state_.issuer->IntermediatesPem(), p.id, std::move(token)};
}

Result<std::string> ProvisioningService::CreateFromCsr(const sh::ProvisioningTopic& topic, std::string_view payload,
                                                       std::optional<Failure>& failure) {
  auto req = sh::DecodeCreateCertificateFromCsrRequest(payload);
  if (!req) {
    failure = Failure{sh::kInvalidPayload, req.error().message()};
    return sh::Error(req.error());
  }
  auto csr = sh::CsrFromPem(req->certificate_signing_request);
  Status st = csr ? sh::VerifyCsrSignature(csr->get()) : csr.error();
  if (st.ok()) st = CheckKeyPolicy(X509_REQ_get0_pubkey(csr->get()), allowed_keys_);
  std::string cn = csr ? sh::NameCommonName(X509_REQ_get_subject_name(csr->get())) : "";
  if (st.ok() && !IsValidThingName(cn)) st = Status(Code::kInvalidArgument, "the CSR's common name is not a valid thing name");
  if (!st.ok()) {
    failure = Failure{sh::kInvalidCsr, st.message()};
    return sh::Error(st);
  }
  auto pending = IssuePending(topic, X509_REQ_get0_pubkey(csr->get()), cn);
  if (!pending) return sh::Error(pending.error());
  sh::CreateCertificateFromCsrAccepted out{pending->id, pending->pem, pending->token};
  auto encoded = sh::Encode(out);
  OPENSSL_cleanse(pending->token.data(), pending->token.size());
  return encoded;
}

Result<std::string> ProvisioningService::CreateKeys(const sh::ProvisioningTopic& topic, std::string_view payload,
                                                    std::optional<Failure>& failure) {
  auto req = sh::DecodeCreateKeysAndCertificateRequest(payload);
  if (!req) {
    failure = Failure{sh::kInvalidPayload, req.error().message()};
    return sh::Error(req.error());
  }
  if (!options_.allow_create_keys) {
    failure = Failure{sh::kNotAllowed, "server-generated keys are disabled; send CreateCertificateFromCsr"};
    return sh::Error(Code::kPermissionDenied, failure->message);
  }
  if (!IsValidThingName(topic.client_id)) {
    failure = Failure{sh::kInvalidParameters, "the client id is not a valid thing name"};
    return sh::Error(Code::kInvalidArgument, failure->message);
  }
  CF_ASSIGN_OR_RETURN(sh::EvpPkeyPtr key, sh::GenerateKeyPair(sh::KeyType::kEcP256));
  CF_ASSIGN_OR_RETURN(Pending pending, IssuePending(topic, key.get(), topic.client_id));
  CF_ASSIGN_OR_RETURN(std::string key_pem, sh::PrivateKeyToPem(key.get()));
  sh::CreateKeysAndCertificateAccepted out{pending.id, pending.pem, key_pem, pending.token};
  auto encoded = sh::Encode(out);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  OPENSSL_cleanse(out.private_key.data(), out.private_key.size());
  return encoded;
}

Result<std::string> ProvisioningService::Register(const sh::ProvisioningTopic& topic, std::string_view payload,
                                                  std::optional<Failure>& failure) {
  auto fail = [&](const sh::RejectionCode& code, std::string message) -> Result<std::string> {
    failure = Failure{code, message};
    return sh::Error(Code::kFailedPrecondition, std::move(message));
  };
  auto it = options_.templates.find(topic.template_name);
  if (it == options_.templates.end()) return fail(sh::kTemplateNotFound, "no provisioning template '" + topic.template_name + "'");
  const ProvisioningTemplate& tmpl = it->second;
  // The aws dialect carries no claim subject: a template restricted to some claim
  // subjects is then closed to everyone.
  if (!ClaimSubjectAllowed(tmpl, topic.claim_subject)) {
    return fail(sh::kAccessDenied, "this claim identity may not use template '" + tmpl.name + "'");
  }
  auto req = sh::DecodeRegisterThingRequest(payload);
  if (!req) return fail(sh::kInvalidPayload, req.error().message());
  const std::string token_hash = TokenHash(req->certificate_ownership_token);
  const sh::WallTime now = clock_.Now();
  auto pending = state_.registry->FindPendingByToken(token_hash, now);
  if (!pending) {
    if (pending.error().code() == Code::kFailedPrecondition) {
      return fail(sh::kInvalidCertificateOwnershipToken, pending.error().message());
    }
    return sh::Error(pending.error());
  }
  if (pending->client_id != topic.client_id || pending->claim_subject != topic.claim_subject) {
    return fail(sh::kInvalidCertificateOwnershipToken, "the ownership token belongs to another client");
  }
  auto cert = sh::CertFromPem(pending->pem);
  if (!cert) return sh::Error(cert.error());
  sh::CertInfo info = sh::DescribeCert(cert->get());
  CertificateFacts facts{info.id, info.common_name, info.serial, ""};
  // The proof of a previous identity is for the companion and the hook, not the template.
  std::map<std::string, std::string> params = req->parameters;
  std::optional<std::pair<std::string, std::string>> previous;
  {
    auto id = params.find(sh::kPreviousCertificateIdParameter);
    auto sig = params.find(sh::kPreviousCertificateSignatureParameter);
    if (id != params.end() && sig != params.end()) previous.emplace(id->second, sig->second);
    if (id != params.end()) params.erase(id);
    if (sig != params.end()) params.erase(sig);
  }

  auto applied = ApplyTemplate(tmpl, params, facts);
  if (!applied) return fail(sh::kInvalidParameters, applied.error().message());
  auto check_name = [&]() -> std::optional<std::string> {
    if (applied->thing_name == info.common_name) return std::nullopt;
    return "the certificate's common name '" + info.common_name + "' differs from the thing name the template assigns ('" +
           applied->thing_name + "')";
  };
  // Checked before the hook runs, so that a hook never acts on a request refused anyway.
  if (auto mismatch = check_name()) return fail(sh::kInvalidParameters, *mismatch);
  std::string previous_error;
  if (previous) {
    previous_error = VerifyPreviousCertificate(previous->first, previous->second, info.id, info.common_name);
    log_.Info("previous certificate proof", {{"thing", info.common_name}, {"who", Who(topic)},
                                             {"previous_certificate_id", previous->first},
                                             {"verified", previous_error.empty() ? "true" : "false"},
                                             {"reason", previous_error}});
  }
  if (options_.pre_provision_hook) {
    PreProvisionHookInput in{"", info.id, pending->pem, "certfleet:provisioning-template/" + tmpl.name,
                             topic.client_id, params};
    nlohmann::json input = BuildPreProvisionHookInput(in);
    input["claimSubject"] = topic.claim_subject;
    if (previous) {
      input["previousCertificateId"] = previous->first;
      input["previousCertificateVerified"] = previous_error.empty();
      if (!previous_error.empty()) input["previousCertificateError"] = previous_error;
    }
    PreProvisionDecision decision = DecidePreProvision(hooks_.Run(*options_.pre_provision_hook, kHookEventPreProvision, input));
    if (!decision.allow) return fail(sh::kAccessDenied, "pre-provisioning hook denied: " + decision.reason);
    if (!decision.parameter_overrides.empty()) {
      applied = ApplyTemplate(tmpl, params, facts, decision.parameter_overrides);
      if (!applied) return fail(sh::kInvalidParameters, applied.error().message());
    }
  }
  if (auto mismatch = check_name()) return fail(sh::kInvalidParameters, *mismatch);
  if (!IsValidThingName(applied->thing_name)) return fail(sh::kInvalidParameters, "the template's thing name is not valid");

  ThingRegistration reg;
  reg.thing_name = applied->thing_name;
  reg.attributes_json = nlohmann::json(applied->attributes).dump();
  reg.groups_json = nlohmann::json(applied->groups).dump();
  reg.thing_type = applied->thing_type;
  reg.policy_name = applied->policy_name;
  reg.certificate_status = applied->certificate_status == "INACTIVE" ? CertStatus::kInactive : CertStatus::kActive;
  reg.allow_reprovisioning = tmpl.certfleet.allow_reprovisioning;
  auto activated = state_.registry->ActivatePending(token_hash, reg, now);
  if (!activated) {
    if (activated.error().code() == Code::kAlreadyExists) return fail(sh::kThingAlreadyProvisioned, activated.error().message());
    if (activated.error().code() == Code::kPermissionDenied) return fail(sh::kAccessDenied, activated.error().message());
    if (activated.error().code() == Code::kFailedPrecondition) {
      return fail(sh::kInvalidCertificateOwnershipToken, activated.error().message());
    }
    return sh::Error(activated.error());
  }
  log_.Info("thing provisioned", {{"thing", reg.thing_name}, {"who", Who(topic)}, {"template", tmpl.name},
                                  {"fingerprint", info.id}, {"serial", info.serial}});
  if (options_.post_provision_hook) {
    nlohmann::json post = {{"thingName", reg.thing_name}, {"certificateId", info.id}, {"templateName", tmpl.name},
                           {"clientId", topic.client_id}, {"claimSubject", topic.claim_subject}};
    hooks_.RunPostHook(*options_.post_provision_hook, kHookEventPostProvision, post);
  }
  sh::RegisterThingAccepted out{reg.thing_name, applied->device_configuration};
  return sh::Encode(out);
}

std::string ProvisioningService::VerifyPreviousCertificate(const std::string& previous_id, const std::string& signature_b64,
                                                           const std::string& new_id, const std::string& thing_name) {
  auto rec = state_.registry->FindCert(previous_id);
  if (!rec) return "registry unavailable";
  if (!*rec) return "the previous certificate is not in the registry";
  if ((*rec)->thing_name != thing_name) return "the previous certificate belongs to another thing";
  auto prev = sh::CertFromPem((*rec)->pem);
  if (!prev) return "the previous certificate does not parse";
  // Issued by us; its validity period is not the point (it is typically expired).
  Status st = state_.device_trust.Verify(prev->get(), nullptr, clock_.Now(), /*ignore_time=*/true);
  if (!st.ok()) return "the previous certificate was not issued by this companion: " + st.message();
  auto sig = sh::Base64Decode(signature_b64);
  if (!sig) return "the signature is not base64";
  st = sh::VerifySha256(X509_get0_pubkey(prev->get()), sh::PreviousCertificateProofText(new_id), *sig);
  if (!st.ok()) return "the signature does not verify with the previous certificate's key";
  return "";
}

void ProvisioningService::Attach(sh::MqttClient& client) {
  client_ = &client;
  auto filters = sh::CompanionSubscriptions(options_.dialect, state_.config.mqtt.share_group);
  if (filters) client.SetStandingSubscriptions(*filters, 1);
  client.SetMessageHandler([this](const sh::MqttMessage& m) {
    std::lock_guard lock(mu_);
    if (queue_.size() >= kMaxQueue) return;  // overload: the client times out and retries
    queue_.push_back(m);
    cv_.notify_one();
  });
  for (int i = 0; i < std::max(1, options_.workers); ++i) workers_.emplace_back([this] { Worker(); });
  workers_.emplace_back([this] { Janitor(); });
}

void ProvisioningService::Janitor() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    janitor_cv_.wait_for(lock, std::chrono::minutes(1), [&] { return stopping_; });
    if (stopping_) return;
    lock.unlock();
    auto deleted = state_.registry->DeleteExpiredPending(clock_.Now());
    if (!deleted) {
      log_.Warn("cleaning up expired pending certificates failed", {{"error", deleted.error().ToString()}});
    } else if (*deleted > 0) {
      log_.Info("deleted pending certificates whose ownership token expired", {{"count", std::to_string(*deleted)}});
    }
    lock.lock();
  }
}

void ProvisioningService::Worker() {
  for (;;) {
    sh::MqttMessage m;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      m = std::move(queue_.front());
      queue_.pop_front();
    }
    auto reply = Handle(m);
    if (!reply || reply->topic.empty() || client_ == nullptr) continue;
    Status st = client_->Publish(reply->topic, reply->payload, 1, false, kPublishTimeout);
    if (!st.ok()) log_.Warn("provisioning reply not delivered", {{"topic", reply->topic}, {"error", st.ToString()}});
  }
}

void ProvisioningService::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  janitor_cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

Result<std::map<std::string, ProvisioningTemplate>> LoadTemplateDir(const std::string& dir, sh::Filesystem& fs) {
  std::map<std::string, ProvisioningTemplate> out;
  CF_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.List(dir));
  for (const auto& file : names) {
    if (file.size() <= 5 || file.compare(file.size() - 5, 5, ".json") != 0 || file.front() == '.') continue;
    std::string name = file.substr(0, file.size() - 5);
    CF_ASSIGN_OR_RETURN(ProvisioningTemplate t, LoadProvisioningTemplate(name, sh::JoinPath(dir, file), fs));
    out.emplace(name, std::move(t));
  }
  return out;
}

}  // namespace certfleet::companion
