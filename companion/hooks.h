// Hooks: operator-supplied programs or HTTPS endpoints that the companion consults before a
// flow step (pre-hooks: allow or deny, optionally with overrides) or notifies after it
// (post-hooks). One mechanism serves every flow: provisioning, enrollment, re-enrollment and,
// later, audit notifications. docs/hooks.md is the operator's and the receiver's view.
//
// Two kinds:
//   exec     an executable, started without a shell (posix_spawn) in its own process group,
//            working directory "/", environment PATH=/usr/bin:/bin, LANG=C.UTF-8 and
//            CERTFLEET_HOOK_EVENT=<event> only. The input JSON is written to its stdin; it must
//            print one JSON object on stdout and exit 0 within the timeout. On timeout the whole
//            process group is killed (SIGKILL) and reaped. stderr is captured (capped) and
//            logged at debug level.
//   webhook  an HTTPS POST of the input JSON (libcurl, TLS verified, redirects not followed)
//            signed with HMAC-SHA256 (see HookSignature); it must answer 2xx with a JSON
//            object body within the timeout.
//
// Failure semantics: a hook that fails, times out or answers garbage is an error value from
// HookRunner::Run. DecidePreProvision turns any error into a deny; ReportPostHook logs it.
#pragma once

#include <chrono>
#include <functional>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/status.h"

namespace certfleet::companion {

// Event names: CERTFLEET_HOOK_EVENT for exec hooks, X-Certfleet-Event for webhooks.
// An event name is 1 to 64 characters of [a-z0-9._-].
inline constexpr std::string_view kHookEventPreProvision = "pre-provision";
inline constexpr std::string_view kHookEventPostProvision = "post-provision";
inline constexpr std::string_view kHookEventPreEnroll = "pre-enroll";
inline constexpr std::string_view kHookEventPostEnroll = "post-enroll";
inline constexpr std::string_view kHookEventPreReenroll = "pre-reenroll";
inline constexpr std::string_view kHookEventPostReenroll = "post-reenroll";
inline constexpr std::string_view kHookEventPostAudit = "post-audit";

inline constexpr std::chrono::milliseconds kDefaultHookTimeout{5000};
inline constexpr size_t kDefaultHookMaxOutputBytes = 64 * 1024;

// A validated hook. Build it with ParseHookSpec, which checks the executable and loads the
// webhook secret; Run checks the executable again (it may have changed since).
struct HookSpec {
  enum Kind { kExec, kWebhook };
  Kind kind = kExec;

  // kExec: argv[0] is the absolute path of the executable, the rest its arguments, passed
  // as they are (no shell, no expansion).
  std::vector<std::string> argv;

  // kWebhook: an https:// URL. http:// is accepted only for a loopback host (127.0.0.1,
  // ::1, localhost) and only with allow_insecure_loopback (tests, local relays).
  std::string url;
  bool allow_insecure_loopback = false;
  // The file the HMAC secret came from (mode 0600 or stricter); kept for messages.
  std::string hmac_secret_file;
  // The secret itself, loaded by ParseHookSpec. Never logged.
  std::string hmac_secret;
  // PEM trust anchors for the webhook's TLS server certificate; empty = the system CAs.
  std::string trust_anchor_file;

  // Wall-clock limit for one run: spawn to exit, or connect to the last response byte.
  std::chrono::milliseconds timeout = kDefaultHookTimeout;
  // Cap on stdout (exec) or the response body (webhook); more is an error.
  size_t max_output_bytes = kDefaultHookMaxOutputBytes;
};

// The config values of one hook, as a config loader reads them (a table such as
// [hooks.pre_provision] with either `command` or `url`).
struct HookConfig {
  std::vector<std::string> command;  // exec: absolute path, then arguments
  std::string url;                   // webhook
  std::string secret_file;           // webhook: required
  std::string trust_anchor_file;     // webhook: optional
  bool allow_insecure_loopback = false;
  std::chrono::milliseconds timeout = kDefaultHookTimeout;  // 1 ms to 10 min
  int64_t max_output_bytes = static_cast<int64_t>(kDefaultHookMaxOutputBytes);  // 2 B to 16 MiB
};

// The checks of ParseHookSpec that need no file: exactly one of command and url, the
// timeout and output ranges, an absolute executable path, the URL rule, secret_file set for
// a webhook, absolute secret and trust anchor paths, no webhook keys on an exec hook.
// Config loaders call it so that a bad table fails at load. kInvalidArgument.
shared::Status CheckHookConfig(const HookConfig& config);

// Validates `config` and builds a HookSpec. Exactly one of command and url must be set.
// Exec: the executable must be an absolute path to a regular file with an execute bit, not
// writable by group or others, owned by root or by this process's user. Webhook: the URL
// rule above; the secret file must be a regular file, not accessible to group or others,
// owned by root or this user, holding 16 to 4096 bytes (surrounding whitespace stripped);
// the trust anchor file, if set, must hold at least one PEM certificate.
// Errors: kInvalidArgument (malformed or inconsistent), kNotFound (a file is missing),
// kPermissionDenied (a file's mode or owner is unsafe).
shared::Result<HookSpec> ParseHookSpec(const HookConfig& config);

// What one run did, for logs and (later) metrics.
struct HookRunInfo {
  std::chrono::microseconds duration{0};
  shared::Code outcome = shared::Code::kOk;
  int exit_code = -1;    // exec: the exit status, or -1 if it did not exit normally
  int term_signal = 0;   // exec: the signal that ended it (SIGKILL after a timeout)
  long http_status = 0;  // webhook: the response status, 0 if there was none
};

// Runs hooks. Thread-safe: any number of runs may proceed at once; each owns its child
// process or HTTP transfer. `logger` and `clock` must outlive the runner.
//
// The clock gives the webhook timestamp (wall time). Deadlines and durations are measured on
// the real monotonic clock (std::chrono::steady_clock), because they bound real processes
// and sockets that a fake clock cannot speed up.
//
// Preconditions: libcurl is initialised (curl_global_init, once in main) before a webhook
// runs; nothing else in the process reaps arbitrary children (waitpid(-1, ...)) or sets
// SIGCHLD to SIG_IGN, which would take the hook's exit status away.
class HookRunner {
 public:
  HookRunner(shared::Logger& logger, const shared::Clock& clock);
  HookRunner(const HookRunner&) = delete;
  HookRunner& operator=(const HookRunner&) = delete;

  // Runs `spec` for `event` with `input` (serialised as JSON, invalid UTF-8 replaced) and
  // returns the JSON object the hook answered. Blocks for at most spec.timeout plus the
  // time to kill and reap a process. Logs one line per run (event, kind, target, outcome,
  // duration_ms). Never throws. Errors:
  //   kInvalidArgument    bad spec or event; output that is not one JSON object
  //   kNotFound           the executable is missing
  //   kPermissionDenied   the executable is unsafe (mode, owner); HTTP 401/403
  //   kDeadlineExceeded   the timeout passed (the process group was killed)
  //   kResourceExhausted  output above spec.max_output_bytes
  //   kUnauthenticated    the webhook's TLS certificate did not verify
  //   kUnavailable        connection failure, HTTP 429/5xx
  //   kFailedPrecondition webhook redirect (not followed) or no secret loaded
  //   kInternal           non-zero exit, death by signal, other HTTP statuses, system errors
  shared::Result<nlohmann::json> Run(const HookSpec& spec, std::string_view event, const nlohmann::json& input,
                                     HookRunInfo* info = nullptr);

  // Called after every run with the event, its duration and whether it succeeded
  // (metrics). Set before the first Run; must be thread-safe.
  void SetObserver(std::function<void(std::string_view event, std::chrono::microseconds duration, bool ok)> observer) {
    observer_ = std::move(observer);
  }

  // Runs a post-hook: the outcome is logged (ReportPostHook), never returned.
  void RunPostHook(const HookSpec& spec, std::string_view event, const nlohmann::json& input);

 private:
  std::function<void(std::string_view, std::chrono::microseconds, bool)> observer_;
  shared::Result<nlohmann::json> RunExec(const HookSpec& spec, std::string_view event, const std::string& body,
                                         HookRunInfo& info);
  shared::Result<nlohmann::json> RunWebhook(const HookSpec& spec, std::string_view event, const std::string& body,
                                            HookRunInfo& info);

  shared::Logger& logger_;
  const shared::Clock& clock_;
};

// ---- Webhook signature ----
//
// X-Certfleet-Timestamp: <unix seconds>
// X-Certfleet-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, timestamp + "." + body)>
// A receiver recomputes the HMAC over the raw body bytes, compares in constant time, and
// rejects timestamps too far from its own clock (replay protection).

// "sha256=<hex>" for `body` sent at `unix_seconds`.
std::string HookSignature(std::string_view secret, int64_t unix_seconds, std::string_view body);

// Checks the two headers against `body` as a receiver does. kUnauthenticated if the signature
// is malformed or wrong, or the timestamp is malformed or more than `max_skew` away from `now`.
shared::Status VerifyHookSignature(std::string_view secret, std::string_view timestamp_header,
                                   std::string_view signature_header, std::string_view body, shared::WallTime now,
                                   std::chrono::seconds max_skew = std::chrono::seconds(300));

// ---- Pre-provisioning (the AWS IoT fleet provisioning hook contract) ----

struct PreProvisionHookInput {
  std::string claim_certificate_id;  // 64 hex characters
  std::string certificate_id;
  std::string certificate_pem;
  std::string template_arn;
  std::string client_id;
  std::map<std::string, std::string> parameters;
};

// {claimCertificateId, certificateId, certificatePem, templateArn, clientId, parameters{}}.
nlohmann::json BuildPreProvisionHookInput(const PreProvisionHookInput& in);

struct PreProvisionDecision {
  bool allow = false;
  std::map<std::string, std::string> parameter_overrides;  // empty unless allowed
  std::string reason;                                      // for logs and the rejection
};

// The decision for a pre-provisioning hook's result. Allows only for a JSON object with
// boolean allowProvisioning == true and, if present, parameterOverrides an object of strings.
// A failed run, timeout, garbage, a missing or non-boolean allowProvisioning or a non-string
// override value denies, with a reason.
PreProvisionDecision DecidePreProvision(const shared::Result<nlohmann::json>& hook_output);

// ---- Enrollment (pre/post-enroll, pre/post-reenroll) ----

// How a certificate was asked for: the `method` field of the enrollment hook inputs.
inline constexpr std::string_view kEnrollMethodClaim = "claim-certificate";
inline constexpr std::string_view kEnrollMethodToken = "token";
inline constexpr std::string_view kEnrollMethodReenroll = "reenroll";
inline constexpr std::string_view kEnrollMethodCvm = "cvm";

struct EnrollHookInput {
  std::string event;                  // kHookEventPreEnroll or kHookEventPreReenroll
  std::string method;                 // kEnrollMethod*
  std::string thing_name;             // the thing the certificate is for (its CN)
  std::string csr_subject;            // RFC 2253 one-line form
  std::string csr_public_key_type;    // "ec-p256", "ec-p384", "rsa-2048", "rsa-3072"
  std::string client_certificate_id;  // SHA-256 hex of the authenticating client certificate; "" = none
  std::string remote_address;         // "ip:port"
  std::vector<std::string> labels;    // the EST label of the request path; empty without one
};

// {event, method, thingName, csrSubject, csrPublicKeyType, remoteAddress, labels[],
//  clientCertificateId (only when there is one)}.
nlohmann::json BuildEnrollHookInput(const EnrollHookInput& in);

struct IssuedHookInput {
  std::string event;  // kHookEventPostEnroll or kHookEventPostReenroll
  std::string method;
  std::string thing_name;
  std::string certificate_id;           // SHA-256 hex of the new certificate
  std::string serial;                   // its serial number, upper-case hex
  shared::WallTime not_after;
  std::string previous_certificate_id;  // re-enrollment: the replaced certificate; "" = none
};

// {event, method, thingName, certificateId, serial, notAfter (RFC 3339),
//  previousCertificateId (only when there is one)}.
nlohmann::json BuildIssuedHookInput(const IssuedHookInput& in);

struct HookDecision {
  bool allow = false;
  std::string reason;  // for logs and security events; includes the hook's own reason
};

// The decision for an allow/deny pre-hook (pre-enroll, pre-reenroll): allows only for a
// JSON object with boolean allow == true and, if present, a string reason (kept, cut to
// 256 bytes). A failed run, timeout, garbage, a missing or non-boolean allow or a
// non-string reason denies, with a reason. Other members are ignored.
HookDecision DecideAllow(const shared::Result<nlohmann::json>& hook_output);

// Logs a post-hook's result: an error record on failure, a debug record otherwise.
void ReportPostHook(shared::Logger& logger, std::string_view event, const shared::Result<nlohmann::json>& result);

}  // namespace certfleet::companion
