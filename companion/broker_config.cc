#include "companion/broker_config.h"

#include <set>

#include <openssl/pem.h>

#include "companion/broker_plugin/claim_policy.h"
#include "companion/broker_plugin/quarantine_list.h"
#include "shared/core/config.h"
#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
namespace sh = shared;

namespace {

constexpr auto kIdentityValidity = std::chrono::hours(24 * 365);

std::string ListenerBlock(const std::string& what, const std::string& address, int port, const std::string& dir,
                          const std::string& cafile, bool with_crl, const std::string& acl,
                          const std::string& extra = "") {
  std::string out;
  out += "# " + what + "\n";
  out += "listener " + std::to_string(port) + " " + address + "\n";
  out += "protocol mqtt\n";
  out += "certfile " + sh::JoinPath(dir, "broker.pem") + "\n";
  out += "keyfile " + sh::JoinPath(dir, "broker.key") + "\n";
  out += "cafile " + sh::JoinPath(dir, cafile) + "\n";
  if (with_crl) out += "crlfile " + sh::JoinPath(dir, "crl.pem") + "\n";
  out += "tls_version tlsv1.2\n";
  out += "require_certificate true\n";
  out += "use_identity_as_username true\n";
  out += "allow_anonymous false\n";
  out += "acl_file " + sh::JoinPath(dir, acl) + "\n";
  out += extra + "\n";
  return out;
}

}  // namespace

std::string DefaultClaimPluginPath() { return CERTFLEET_CLAIM_PLUGIN_PATH; }

Result<std::string> ClaimPolicyJson(const std::vector<ClaimConfig>& claims, sh::Filesystem& fs) {
  broker_plugin::ClaimPolicy policy;
  for (const ClaimConfig& c : claims) {
    std::string pem;
    if (!c.ca_file.empty()) {
      CF_ASSIGN_OR_RETURN(pem, fs.ReadFile(c.ca_file, 1 << 20).map_error([&](const Status& st) {
        return st.WithContext("claim '" + c.name + "' ca_file");
      }));
    }
    CF_ASSIGN_OR_RETURN(broker_plugin::ClaimRule rule,
                        broker_plugin::MakeClaimRule(c.name, pem, c.fingerprints, c.templates));
    policy.rules.push_back(std::move(rule));
  }
  return broker_plugin::ClaimPolicyToJson(policy);
}

std::string ThingsAcl(const std::string& companion_client_id) {
  // mosquitto 2.0's acl_file grants are a union (the first line that matches the topic
  // and grants the access wins) and "deny" refuses every access, read included. So a
  // "readwrite .../%u/#" line cannot coexist with a read-only rotation/request: the
  // thing's own levels are granted one by one instead, and nothing deeper than one level
  // outside rotation/ is granted.
  return "# Things (username = certificate CN = thing name): their own subtree only.\n"
         "# The rotation request is the companion's to set and clear: read only.\n"
         "pattern read certfleet/things/%u/rotation/request\n"
         "pattern write certfleet/things/%u/rotation/ack\n"
         "# status and any other single-level topic of its own.\n"
         "pattern readwrite certfleet/things/%u/+\n\n"
         "# The companion.\n"
         "user " + companion_client_id + "\n"
         "topic readwrite certfleet/#\n";
}

std::string ClaimAcl() {
  // %u is the claim certificate's CN (use_identity_as_username), %c the client id: the
  // companion learns from the topic who asked, and replies reach only the asker.
  return "# Claim identities: their own provisioning requests and replies, nothing else.\n"
         "pattern write certfleet/provisioning/%u/%c/certificates/create-from-csr/json\n"
         "pattern write certfleet/provisioning/%u/%c/certificates/create/json\n"
         "pattern write certfleet/provisioning/%u/%c/provisioning-templates/+/provision/json\n"
         "pattern read certfleet/provisioning/%u/%c/#\n";
}

Result<std::string> MakeCrlPem(CompanionState& state, const sh::Clock& clock, std::chrono::seconds validity) {
  // Only the revoked rows, a page at a time: the fleet's other certificates never leave
  // the database.
  std::vector<Issuer::Revoked> revoked;
  CertFilter only_revoked;
  only_revoked.status = CertStatus::kRevoked;
  for (;;) {
    CF_ASSIGN_OR_RETURN(CertPage page, state.registry->ListCertsPage(only_revoked, 1000));
    for (const auto& c : page.items) revoked.push_back({c.serial, c.status_changed_at});
    if (!page.next) break;
    only_revoked.after = *page.next;
  }
  CF_ASSIGN_OR_RETURN(sh::X509CrlPtr crl, state.issuer->MakeCrl(revoked, clock.Now(), validity));
  sh::BioPtr bio(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_X509_CRL(bio.get(), crl.get()) != 1) {
    return sh::Error(sh::OpenSslStatus(Code::kInternal, "encoding CRL"));
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Status WriteBrokerConfig(const BrokerConfigOptions& o, CompanionState& state, sh::Filesystem& fs,
                         const sh::Clock& clock, sh::Logger& log) {
  CF_RETURN_IF_ERROR(sh::CheckAbsolutePath(o.out_dir).WithContext("--out"));
  if (state.config.est.bootstrap_trust_file.empty()) {
    return Status(Code::kFailedPrecondition,
                  "est.bootstrap_trust_file is not set: the claim listener would have no CA to trust");
  }
  const MqttConfig& mqtt = state.config.mqtt;
  const sh::WallTime now = clock.Now();
  CF_RETURN_IF_ERROR(fs.MakeDirs(o.out_dir, 0750));

  // The broker's server identity: a software key file, since mosquitto reads its key from disk.
  CF_ASSIGN_OR_RETURN(sh::EvpPkeyPtr broker_key, sh::GenerateKeyPair(sh::KeyType::kEcP256));
  CF_ASSIGN_OR_RETURN(sh::X509Ptr broker_cert, IssueServiceCert(*state.issuer, broker_key.get(), o.hostnames.front(),
                                                                Usage::kServerAuth, o.hostnames, kIdentityValidity, now));
  CF_ASSIGN_OR_RETURN(std::string broker_key_pem, sh::PrivateKeyToPem(broker_key.get()));
  Status st = fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "broker.key"), broker_key_pem, 0600);
  OPENSSL_cleanse(broker_key_pem.data(), broker_key_pem.size());
  CF_RETURN_IF_ERROR(st);
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "broker.pem"),
                                        sh::CertToPem(broker_cert.get()) + state.issuer->IntermediatesPem(), 0644));

  // Trust for each listener, and the CRL.
  std::string things_ca;
  for (X509* c : state.issuer->Chain()) things_ca += sh::CertToPem(c);
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "things-ca.pem"), things_ca, 0644));
  CF_ASSIGN_OR_RETURN(std::string claim_ca, fs.ReadFile(state.config.est.bootstrap_trust_file, 1 << 20));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "claim-ca.pem"), claim_ca, 0644));
  CF_ASSIGN_OR_RETURN(std::string crl, MakeCrlPem(state, clock, o.crl_validity));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "crl.pem"), crl, 0644));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "things.acl"), ThingsAcl(mqtt.client_id), 0644));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "claim.acl"), ClaimAcl(), 0644));

  std::string conf = "# Fleet broker configuration written by certfleetctl broker-config.\n"
                     "# Include it from mosquitto.conf (include_dir) or run mosquitto -c on it.\n"
                     "# per_listener_settings applies to every listener of the broker.\n"
                     "per_listener_settings true\n"
                     "# Small request/reply messages: do not wait for delayed ACKs.\n"
                     "set_tcp_nodelay true\n\n";
  // Quarantine: with broker.quarantine_file set, the plugin on the things listener denies
  // every access of the things the companion lists there (it keeps the file current).
  std::string things_plugin;
  const std::string& quarantine_file = state.config.broker.quarantine_file;
  if (!quarantine_file.empty()) {
    CF_RETURN_IF_ERROR(sh::CheckAbsolutePath(o.claim_plugin_path).WithContext("--claim-plugin"));
    CF_ASSIGN_OR_RETURN(std::vector<std::string> names, state.registry->ListQuarantinedThings());
    CF_RETURN_IF_ERROR(fs.MakeDirs(sh::DirName(quarantine_file), 0755));
    CF_RETURN_IF_ERROR(fs.WriteFileAtomic(
        quarantine_file, broker_plugin::QuarantineListToJson(std::set<std::string>(names.begin(), names.end())), 0644));
    things_plugin = "# Quarantined things (broker.quarantine_file in companion.toml): denied everything.\n"
                    "plugin " + o.claim_plugin_path + "\n"
                    "plugin_opt_quarantine_file " + quarantine_file + "\n";
  }
  conf += ListenerBlock("Things: production identities issued by the companion's CA.", o.listen_address,
                        o.things_port, o.out_dir, "things-ca.pem", true, "things.acl", things_plugin);
  // Claim rules: the plugin denies what the rules do not allow and defers the rest to
  // claim.acl, so a request passes only if both allow it.
  std::string claim_plugin;
  if (!state.config.claims.empty()) {
    CF_RETURN_IF_ERROR(sh::CheckAbsolutePath(o.claim_plugin_path).WithContext("--claim-plugin"));
    CF_ASSIGN_OR_RETURN(std::string policy, ClaimPolicyJson(state.config.claims, fs));
    const std::string policy_path = sh::JoinPath(o.out_dir, "claim-policy.json");
    CF_RETURN_IF_ERROR(fs.WriteFileAtomic(policy_path, policy, 0644));
    claim_plugin = "# Claim rules ([[claims]] in companion.toml): which claim certificates may call which templates.\n"
                   "plugin " + o.claim_plugin_path + "\n"
                   "plugin_opt_policy_file " + policy_path + "\n";
  } else {
    log.Warn("no [[claims]] in the companion config: every certificate of the claim CAs may call every template",
             {{"config", "claims"}});
  }
  conf += ListenerBlock("Claim identities: provisioning only.", o.listen_address, o.claim_port, o.out_dir,
                        "claim-ca.pem", false, "claim.acl", claim_plugin);
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(sh::JoinPath(o.out_dir, "mosquitto.conf"), conf, 0644));

  // The companion's own MQTT identity: key kept across re-runs, certificate renewed.
  auto key = state.keys->Load(mqtt.client_key_slot);
  if (!key && key.error().code() == Code::kNotFound) key = state.keys->Generate(mqtt.client_key_slot, sh::KeyType::kEcP256);
  if (!key) return key.error().WithContext("companion MQTT key");
  CF_ASSIGN_OR_RETURN(sh::X509Ptr client_cert, IssueServiceCert(*state.issuer, (*key)->pkey(), mqtt.client_id,
                                                                Usage::kClientAuth, {}, kIdentityValidity, now));
  CF_RETURN_IF_ERROR(fs.MakeDirs(sh::DirName(mqtt.client_cert_file), 0755));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(mqtt.client_cert_file,
                                        sh::CertToPem(client_cert.get()) + state.issuer->IntermediatesPem(), 0644));
  log.Info("wrote broker configuration", {{"dir", o.out_dir},
                                          {"things_port", std::to_string(o.things_port)},
                                          {"claim_port", std::to_string(o.claim_port)},
                                          {"claim_rules", std::to_string(state.config.claims.size())}});
  return Status::Ok();
}

}  // namespace certfleet::companion
