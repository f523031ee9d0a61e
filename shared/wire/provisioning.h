// Payloads of the AWS IoT fleet provisioning MQTT API (REFERENCE.md section 2), field for
// field, as JSON. Both topic dialects (topics.h) carry these payloads; the agent encodes
// requests and decodes replies, the companion the other way round.
//
// Decoders parse outside input. They never throw and:
// - reject a payload over kMaxProvisioningPayload bytes with kResourceExhausted, before
//   parsing it;
// - give kInvalidArgument, with a message naming the message and the field, for anything
//   else that is wrong: not JSON (RFC 8259, no comments, nothing after the value), not an
//   object, a required field missing, a field of the wrong type (numbers are never
//   accepted for strings, nor strings for numbers), a string containing NUL, a value
//   outside its limit (below), a map value that is not a string;
// - ignore fields they do not know (AWS may add fields; certfleet peers of a later
//   version may too). If a key appears twice, the last one wins.
// Required strings must also be non-empty.
//
// Encoders check the same limits, so whatever certfleet encodes its peer decodes:
// kInvalidArgument if a field is invalid, kResourceExhausted if the whole payload would
// exceed kMaxProvisioningPayload. Output is compact JSON with keys in lexicographic
// order; optional maps are always written (possibly as {}).
//
// Everything here is a pure function: thread-safe, no I/O.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::shared {

// ---- Limits (bytes of UTF-8) ----
inline constexpr size_t kMaxProvisioningPayload = 64 * 1024;
// certificatePem, privateKey, certificateSigningRequest. The PEM text itself is not
// parsed here; callers parse it with shared/x509.
inline constexpr size_t kMaxPemFieldLength = 16 * 1024;
inline constexpr size_t kMaxOwnershipTokenLength = 4096;
// parameters and deviceConfiguration: at most 64 entries, keys 1-128 bytes, values 0-1024
// bytes. Note that 64 maximal entries exceed kMaxProvisioningPayload: the total applies too.
inline constexpr size_t kMaxMapEntries = 64;
inline constexpr size_t kMaxMapKeyLength = 128;
inline constexpr size_t kMaxMapValueLength = 1024;
inline constexpr size_t kMaxErrorCodeLength = 128;
inline constexpr size_t kMaxErrorMessageLength = 4096;
// certificateId is exactly 64 hex digits (SHA-256 of the DER, lower case as certfleet
// writes it; upper case accepted and kept as sent).
inline constexpr size_t kCertificateIdLength = 64;

// ---- Proof of possession of a previous identity (expired-certificate recovery) ----
// Optional RegisterThing parameters, taken out before the template sees the parameters:
// the id of the certificate being replaced, and base64 of a SHA-256 signature with its
// key over PreviousCertificateProofText(id of the certificate being registered).
inline constexpr char kPreviousCertificateIdParameter[] = "certfleet:previousCertificateId";
inline constexpr char kPreviousCertificateSignatureParameter[] = "certfleet:previousCertificateSignature";
inline std::string PreviousCertificateProofText(std::string_view new_certificate_id) {
  return "certfleet previous-certificate proof v1\n" + std::string(new_certificate_id) + "\n";
}
// Rejection statusCode: an HTTP error status.
inline constexpr int kMinRejectionStatus = 400;
inline constexpr int kMaxRejectionStatus = 599;

using StringMap = std::map<std::string, std::string>;

// ---- CreateKeysAndCertificate ----

// The request has no fields. Decoding accepts an empty payload (or only whitespace), or
// any JSON object (its fields are ignored, as in every decoder); anything else (`[]`,
// `null`, `"x"`, not JSON) is kInvalidArgument. Encodes as "{}".
struct CreateKeysAndCertificateRequest {
  bool operator==(const CreateKeysAndCertificateRequest&) const = default;
};

struct CreateKeysAndCertificateAccepted {
  std::string certificate_id;               // certificateId
  std::string certificate_pem;              // certificatePem
  std::string private_key;                  // privateKey (PEM); key material: never log it
  std::string certificate_ownership_token;  // certificateOwnershipToken

  bool operator==(const CreateKeysAndCertificateAccepted&) const = default;
};

// ---- CreateCertificateFromCsr ----

struct CreateCertificateFromCsrRequest {
  std::string certificate_signing_request;  // certificateSigningRequest (PEM), required

  bool operator==(const CreateCertificateFromCsrRequest&) const = default;
};

struct CreateCertificateFromCsrAccepted {
  std::string certificate_id;               // certificateId
  std::string certificate_pem;              // certificatePem
  std::string certificate_ownership_token;  // certificateOwnershipToken

  bool operator==(const CreateCertificateFromCsrAccepted&) const = default;
};

// ---- RegisterThing ----

struct RegisterThingRequest {
  std::string certificate_ownership_token;  // certificateOwnershipToken, required
  StringMap parameters;                     // parameters, optional (absent = empty)

  bool operator==(const RegisterThingRequest&) const = default;
};

struct RegisterThingAccepted {
  std::string thing_name;          // thingName, required; ValidateThingName's rule
  StringMap device_configuration;  // deviceConfiguration, optional (absent = empty)

  bool operator==(const RegisterThingAccepted&) const = default;
};

// ---- Rejections (every operation's .../rejected reply) ----

struct Rejection {
  int status_code = 0;        // statusCode, required, kMinRejectionStatus..kMaxRejectionStatus
  std::string error_code;     // errorCode, required, 1-128 bytes
  std::string error_message;  // errorMessage, optional (absent = "")

  bool operator==(const Rejection&) const = default;
};

// ---- Codecs ----

Result<std::string> Encode(const CreateKeysAndCertificateRequest& message);
Result<std::string> Encode(const CreateKeysAndCertificateAccepted& message);
Result<std::string> Encode(const CreateCertificateFromCsrRequest& message);
Result<std::string> Encode(const CreateCertificateFromCsrAccepted& message);
Result<std::string> Encode(const RegisterThingRequest& message);
Result<std::string> Encode(const RegisterThingAccepted& message);
Result<std::string> Encode(const Rejection& message);

Result<CreateKeysAndCertificateRequest> DecodeCreateKeysAndCertificateRequest(std::string_view payload);
Result<CreateKeysAndCertificateAccepted> DecodeCreateKeysAndCertificateAccepted(std::string_view payload);
Result<CreateCertificateFromCsrRequest> DecodeCreateCertificateFromCsrRequest(std::string_view payload);
Result<CreateCertificateFromCsrAccepted> DecodeCreateCertificateFromCsrAccepted(std::string_view payload);
Result<RegisterThingRequest> DecodeRegisterThingRequest(std::string_view payload);
Result<RegisterThingAccepted> DecodeRegisterThingAccepted(std::string_view payload);
Result<Rejection> DecodeRejection(std::string_view payload);

// ---- Rejection codes certfleet sends ----
//
// AWS documents no complete list; certfleet uses AWS's names where the field has shown
// them (InvalidCertificateOwnershipToken) and names of the same shape elsewhere. Clients
// must treat unknown codes by their status code (IsPermanentRejection).
struct RejectionCode {
  std::string_view error_code;
  int status_code;
};

// The payload is not JSON, not an object, or a field has the wrong type or is missing.
inline constexpr RejectionCode kInvalidPayload{"InvalidPayload", 400};
// The ownership token is unknown, expired (1 hour), already used, or not this client's.
// Start again with CreateCertificateFromCsr.
inline constexpr RejectionCode kInvalidCertificateOwnershipToken{"InvalidCertificateOwnershipToken", 400};
// The CSR does not parse, its signature does not verify, or its key or name breaks policy.
inline constexpr RejectionCode kInvalidCsr{"InvalidCsr", 400};
// The template's parameters are missing, mistyped or fail their constraints.
inline constexpr RejectionCode kInvalidParameters{"InvalidParameters", 400};
// The pre-provisioning hook denied (or timed out), or the claim may not use this template.
inline constexpr RejectionCode kAccessDenied{"AccessDenied", 403};
// CreateKeysAndCertificate is disabled by companion policy: use CreateCertificateFromCsr.
inline constexpr RejectionCode kNotAllowed{"CreateKeysAndCertificateNotAllowed", 403};
// No provisioning template of that name.
inline constexpr RejectionCode kTemplateNotFound{"TemplateNotFound", 404};
// The thing already has an active certificate and the template does not allow replacing it.
inline constexpr RejectionCode kThingAlreadyProvisioned{"ThingAlreadyProvisioned", 409};
// Too many requests from this client or overall; retry with backoff.
inline constexpr RejectionCode kThrottled{"Throttled", 429};
// A companion bug or a failure of its own (registry, CA); retry with backoff.
inline constexpr RejectionCode kInternalFailure{"InternalFailure", 500};
// The companion cannot serve now (registry or CA unreachable, shutting down); retry.
inline constexpr RejectionCode kServiceUnavailable{"ServiceUnavailable", 503};

// All of the above, in the order listed.
std::span<const RejectionCode> KnownRejectionCodes();

// A rejection with `code`'s status and name. The message is made encodable: cut to
// kMaxErrorMessageLength bytes at a character boundary, NUL and ill-formed UTF-8 bytes
// replaced by '?'. So Encode(MakeRejection(known code, anything)) always succeeds.
Rejection MakeRejection(const RejectionCode& code, std::string_view message);

// True when resending the same request cannot succeed: any status other than 429 and
// 5xx. A permanent rejection is not a reason to stop provisioning: the client changes
// something first (a new CSR, a new ownership token, its configuration) or waits for an
// operator, with backoff.
bool IsPermanentRejection(const Rejection& rejection);

// The rejection as a Status for callers up the stack: 429 and 5xx -> kUnavailable,
// 401 -> kUnauthenticated, 403 -> kPermissionDenied, 404 -> kNotFound, 409 ->
// kAlreadyExists, other 4xx -> kInvalidArgument. The message reads
// "rejected: <statusCode> <errorCode>: <errorMessage>".
Status RejectionToStatus(const Rejection& rejection);

}  // namespace certfleet::shared
