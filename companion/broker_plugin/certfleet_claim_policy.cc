// certfleet_mosquitto_claim.so: a mosquitto 2.0 plugin (plugin API v5) that enforces, on
// the listener it is loaded for, the claim policy (claim_policy.h; claim listener) and/or
// the quarantine list (quarantine_list.h; things listener). At least one option is set.
//
//   listener 8884 127.0.0.1
//   ...
//   acl_file /etc/certfleet/broker/claim.acl
//   plugin /usr/lib/x86_64-linux-gnu/certfleet/certfleet_mosquitto_claim.so
//   plugin_opt_policy_file /etc/certfleet/broker/claim-policy.json
//
//   listener 8883 127.0.0.1
//   ...
//   plugin /usr/lib/x86_64-linux-gnu/certfleet/certfleet_mosquitto_claim.so
//   plugin_opt_quarantine_file /var/lib/certfleet-companion/broker/quarantine.json
//
// A client whose username (the certificate CN) is quarantined is denied every access;
// otherwise, with a claim policy, the policy decides; without one, the plugin defers.
//
// How mosquitto 2.0.11 combines it with acl_file, found by running the broker (a throwaway
// plugin that always allowed, and this one; tests/integration/claim_policy_test.sh keeps
// the parts this plugin relies on):
// - With `per_listener_settings true`, `plugin` and the `plugin_opt_*` lines after it
//   belong to the listener they follow: clients of the other listeners never reach the
//   plugin. mosquitto_plugin_init runs once per `plugin` line, with that line's options.
// - The broker asks the listener's ACL_CHECK callbacks in order and stops at the first
//   answer that is not MOSQ_ERR_PLUGIN_DEFER; plugins come before the listener's acl_file.
//   A plugin answering MOSQ_ERR_SUCCESS bypasses acl_file (the always-allow plugin let a
//   claim client publish to certfleet/things/x, which claim.acl refuses). So this plugin
//   never allows: it answers MOSQ_ERR_ACL_DENIED or MOSQ_ERR_PLUGIN_DEFER, and acl_file
//   decides whatever it defers: an access is granted only if both allow it. (If every
//   callback defers, the broker denies: mosquitto_plugin.h.)
// - A non-zero return from mosquitto_plugin_init stops the broker at start
//   ("Error: Plugin returned 3 when initialising."), after our own log line.
// - On SIGHUP the broker sends MOSQ_EVT_RELOAD with the plugin's options; the plugin
//   re-reads its files then and keeps the old policy or list if a new one is invalid.
//   ACL checks also run for deliveries to connected clients (MOSQ_ACL_READ), so a
//   quarantine cuts off a connected thing at the reload, not only at its next connect.
//
// The broker is single-threaded: callbacks never run concurrently. No exception leaves
// a callback: each one catches everything and then denies (or keeps the old policy).
#include <exception>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "companion/broker_plugin/claim_policy.h"
#include "companion/broker_plugin/quarantine_list.h"
#include "shared/core/filesystem.h"
#include "shared/x509/cert.h"

namespace {

namespace bp = certfleet::broker_plugin;
namespace sh = certfleet::shared;

constexpr std::string_view kPolicyOption = "policy_file";
constexpr std::string_view kQuarantineOption = "quarantine_file";
// Matching a certificate against a CA rule verifies a signature (measured: ~60 us for a
// P-256 CA, per rule); the fingerprint (one SHA-256 of the DER, ~1 us) identifies the
// certificate exactly, so the match is cached by it rather than by connection. Bounded: cleared when full, and on every policy reload.
constexpr size_t kMaxCachedCertificates = 4096;

struct PluginState {
  mosquitto_plugin_id_t* id = nullptr;
  std::string policy_file;      // "" : no claim policy on this listener
  std::string quarantine_file;  // "" : no quarantine list on this listener
  std::unique_ptr<const bp::ClaimPolicy> policy;
  std::unique_ptr<const bp::QuarantineList> quarantine;
  std::unordered_map<std::string, std::vector<size_t>> matches;  // fingerprint -> rule indices
};

std::string Option(const mosquitto_opt* options, int count, std::string_view name) {
  for (int i = 0; i < count; ++i) {
    if (options[i].key != nullptr && options[i].value != nullptr && options[i].key == name) {
      return options[i].value;
    }
  }
  return "";
}

sh::Result<std::unique_ptr<const bp::QuarantineList>> LoadQuarantine(const std::string& path) {
  sh::PosixFilesystem fs;
  auto text = fs.ReadFile(path, bp::kMaxQuarantineListBytes + 1);
  if (!text) return sh::Error(text.error().WithContext(path));
  auto list = bp::ParseQuarantineList(*text);
  if (!list) return sh::Error(list.error().WithContext(path));
  return std::make_unique<const bp::QuarantineList>(std::move(*list));
}

sh::Result<std::unique_ptr<const bp::ClaimPolicy>> LoadPolicy(const std::string& path) {
  sh::PosixFilesystem fs;
  auto text = fs.ReadFile(path, bp::kMaxClaimPolicyBytes + 1);
  if (!text) return sh::Error(text.error().WithContext(path));
  auto policy = bp::ParseClaimPolicy(*text);
  if (!policy) return sh::Error(policy.error().WithContext(path));
  return std::make_unique<const bp::ClaimPolicy>(std::move(*policy));
}

const char* AccessName(int access) {
  switch (access) {
    case MOSQ_ACL_READ: return "read";
    case MOSQ_ACL_WRITE: return "write";
    case MOSQ_ACL_SUBSCRIBE: return "subscribe";
    case MOSQ_ACL_UNSUBSCRIBE: return "unsubscribe";
    default: return "unknown";
  }
}

int CheckAcl(PluginState& state, const mosquitto_evt_acl_check& ev) {
  bp::ClaimAccess access;
  switch (ev.access) {
    case MOSQ_ACL_READ: access = bp::ClaimAccess::kRead; break;
    case MOSQ_ACL_WRITE: access = bp::ClaimAccess::kWrite; break;
    case MOSQ_ACL_SUBSCRIBE: access = bp::ClaimAccess::kSubscribe; break;
    case MOSQ_ACL_UNSUBSCRIBE: access = bp::ClaimAccess::kUnsubscribe; break;
    default: return MOSQ_ERR_ACL_DENIED;
  }
  const char* client_id = mosquitto_client_id(ev.client);
  if (state.quarantine) {
    const char* username = mosquitto_client_username(ev.client);
    if (username != nullptr && state.quarantine->Contains(username)) {
      mosquitto_log_printf(MOSQ_LOG_NOTICE, "certfleet quarantine: denied %s of '%s' to quarantined thing '%s'",
                           AccessName(ev.access), ev.topic ? ev.topic : "", username);
      return MOSQ_ERR_ACL_DENIED;
    }
  }
  if (!state.policy) return MOSQ_ERR_PLUGIN_DEFER;
  sh::X509Ptr cert(static_cast<X509*>(mosquitto_client_certificate(ev.client)));  // owned reference
  std::string fingerprint = cert ? sh::CertFingerprint(cert.get()) : "";
  bp::ClaimDecision decision{bp::ClaimVerdict::kDeny, "no client certificate"};
  if (cert && state.policy) {
    auto cached = state.matches.find(fingerprint);
    if (cached == state.matches.end()) {
      if (state.matches.size() >= kMaxCachedCertificates) state.matches.clear();
      cached = state.matches.emplace(fingerprint, bp::MatchingRules(*state.policy, cert.get(), fingerprint)).first;
    }
    decision = bp::DecideClaimAccess(*state.policy, cached->second, ev.topic ? ev.topic : "", access);
  }
  if (decision.verdict == bp::ClaimVerdict::kDefer) return MOSQ_ERR_PLUGIN_DEFER;
  mosquitto_log_printf(MOSQ_LOG_NOTICE, "certfleet claim policy: denied %s of '%s' to client '%s' (certificate %s): %s",
                       AccessName(ev.access), ev.topic ? ev.topic : "", client_id ? client_id : "",
                       fingerprint.empty() ? "none" : fingerprint.c_str(), decision.reason);
  return MOSQ_ERR_ACL_DENIED;
}

int OnAclCheck(int /*event*/, void* event_data, void* userdata) {
  try {
    return CheckAcl(*static_cast<PluginState*>(userdata), *static_cast<const mosquitto_evt_acl_check*>(event_data));
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet claim policy: internal error in an ACL check; denied");
    return MOSQ_ERR_ACL_DENIED;
  }
}

int OnReload(int /*event*/, void* event_data, void* userdata) {
  try {
    auto& state = *static_cast<PluginState*>(userdata);
    const auto& ev = *static_cast<const mosquitto_evt_reload*>(event_data);
    std::string path = Option(ev.options, ev.option_count, kPolicyOption);
    if (path.empty()) path = state.policy_file;
    if (!path.empty()) {
      auto policy = LoadPolicy(path);
      if (!policy) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet claim policy: reload failed, keeping the previous policy: %s",
                             policy.error().ToString().c_str());
      } else {
        state.policy_file = path;
        state.policy = std::move(*policy);
        state.matches.clear();
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "certfleet claim policy: reloaded %s (%zu rules)", path.c_str(),
                             state.policy->rules.size());
      }
    }
    std::string qpath = Option(ev.options, ev.option_count, kQuarantineOption);
    if (qpath.empty()) qpath = state.quarantine_file;
    if (!qpath.empty()) {
      auto list = LoadQuarantine(qpath);
      if (!list) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet quarantine: reload failed, keeping the previous list: %s",
                             list.error().ToString().c_str());
      } else {
        state.quarantine_file = qpath;
        state.quarantine = std::move(*list);
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "certfleet quarantine: reloaded %s: %zu quarantined", qpath.c_str(),
                             state.quarantine->things.size());
      }
    }
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet claim policy: internal error on reload, keeping the previous policy");
  }
  return MOSQ_ERR_SUCCESS;
}

}  // namespace

int mosquitto_plugin_version(int supported_version_count, const int* supported_versions) {
  for (int i = 0; i < supported_version_count; ++i) {
    if (supported_versions[i] == 5) return 5;
  }
  return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t* identifier, void** userdata, mosquitto_opt* options,
                          int option_count) {
  try {
    auto state = std::make_unique<PluginState>();
    state->id = identifier;
    state->policy_file = Option(options, option_count, kPolicyOption);
    state->quarantine_file = Option(options, option_count, kQuarantineOption);
    if (state->policy_file.empty() && state->quarantine_file.empty()) {
      mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet plugin: set plugin_opt_policy_file and/or plugin_opt_quarantine_file");
      return MOSQ_ERR_INVAL;
    }
    if (!state->policy_file.empty()) {
      auto policy = LoadPolicy(state->policy_file);
      if (!policy) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet claim policy: cannot load the policy: %s",
                             policy.error().ToString().c_str());
        return MOSQ_ERR_INVAL;
      }
      state->policy = std::move(*policy);
    }
    if (!state->quarantine_file.empty()) {
      auto list = LoadQuarantine(state->quarantine_file);
      if (!list) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet quarantine: cannot load the list: %s",
                             list.error().ToString().c_str());
        return MOSQ_ERR_INVAL;
      }
      state->quarantine = std::move(*list);
    }
    int rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, OnAclCheck, nullptr, state.get());
    if (rc != MOSQ_ERR_SUCCESS) return rc;
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, OnReload, nullptr, state.get());
    if (rc != MOSQ_ERR_SUCCESS) {
      mosquitto_callback_unregister(identifier, MOSQ_EVT_ACL_CHECK, OnAclCheck, nullptr);
      return rc;
    }
    if (state->policy) {
      mosquitto_log_printf(MOSQ_LOG_NOTICE, "certfleet claim policy: loaded %s (%zu rules)",
                           state->policy_file.c_str(), state->policy->rules.size());
    }
    if (state->quarantine) {
      mosquitto_log_printf(MOSQ_LOG_NOTICE, "certfleet quarantine: loaded %s: %zu quarantined",
                           state->quarantine_file.c_str(), state->quarantine->things.size());
    }
    *userdata = state.release();
    return MOSQ_ERR_SUCCESS;
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "certfleet claim policy: internal error at init");
    return MOSQ_ERR_UNKNOWN;
  }
}

int mosquitto_plugin_cleanup(void* userdata, mosquitto_opt* /*options*/, int /*option_count*/) {
  auto* state = static_cast<PluginState*>(userdata);
  if (state == nullptr) return MOSQ_ERR_SUCCESS;
  mosquitto_callback_unregister(state->id, MOSQ_EVT_ACL_CHECK, OnAclCheck, nullptr);
  mosquitto_callback_unregister(state->id, MOSQ_EVT_RELOAD, OnReload, nullptr);
  delete state;
  return MOSQ_ERR_SUCCESS;
}
