// Rotation messages between the companion's rotation coordinator and the agents, on the
// per-thing topics of topics.h:
//
//   certfleet/things/<thing>/rotation/request  companion -> agent, retained, QoS 1.
//       An empty retained payload clears the request (MQTT's way to delete a retained
//       message); DecodeRotationRequest is not called for it.
//   certfleet/things/<thing>/rotation/ack      agent -> companion, QoS 1, not retained.
//       Sent while connected with the NEW identity, and signed with the new key, so the
//       companion knows the device holds it (the broker only tells who by the CN, which
//       the old and new certificates share).
//   certfleet/things/<thing>/status            agent -> companion, retained, QoS 1.
//
// JSON, compact, keys in lexicographic order. Times are RFC 3339 UTC with second
// precision ("2026-11-23T06:41:52Z"). Decoders parse outside input: they never throw,
// reject payloads over kMaxRotationPayload with kResourceExhausted before parsing, and
// give kInvalidArgument (naming the message and the field, never echoing the input) for
// anything malformed; unknown fields are ignored. Encoders apply the same checks, so what
// one side encodes the other decodes. Pure functions: thread-safe, no I/O.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "shared/core/clock.h"
#include "shared/core/status.h"

namespace certfleet::shared {

inline constexpr size_t kMaxRotationPayload = 16 * 1024;
// A rotation id: 32 lowercase hex digits (128 random bits).
inline constexpr size_t kRotationIdLength = 32;
inline constexpr size_t kMaxRotationReasonLength = 256;
inline constexpr size_t kMaxStatusTextLength = 1024;  // status.lastError, status.state, agentVersion
inline constexpr size_t kMaxSignatureLength = 1024;   // raw bytes (base64 in JSON)

// Topic suffixes for ThingTopic().
inline constexpr std::string_view kRotationRequestSuffix = "rotation/request";
inline constexpr std::string_view kRotationAckSuffix = "rotation/ack";
inline constexpr std::string_view kStatusSuffix = "status";

// 32 lowercase hex digits.
Status ValidateRotationId(std::string_view id);

// {"deadline", "reason", "requestedAt", "rotationId"}
struct RotationRequest {
  std::string rotation_id;
  std::string reason;  // 1-256 bytes of UTF-8, e.g. "operator", "audit:DEVICE_CERTIFICATE_EXPIRING_CHECK"
  WallTime requested_at;
  WallTime deadline;  // not before requested_at
  bool operator==(const RotationRequest&) const = default;
};
Result<std::string> EncodeRotationRequest(const RotationRequest& request);
Result<RotationRequest> DecodeRotationRequest(std::string_view payload);

// {"certificateId", "previousCertificateId", "rotationId", "signature", "signedAt", "thingName"}
// rotationId is "" for a rotation the agent started by itself (its renewal policy): the
// companion still learns that the new certificate is proven.
struct RotationAck {
  std::string thing_name;
  std::string rotation_id;               // "" or a rotation id
  std::string certificate_id;            // the new certificate: SHA-256 of its DER, 64 hex
  std::string previous_certificate_id;   // the one it replaces: 64 hex
  WallTime signed_at;
  std::string signature;                 // raw bytes: SignSha256(new key, RotationAckSignedText(ack))
  bool operator==(const RotationAck&) const = default;
};
Result<std::string> EncodeRotationAck(const RotationAck& ack);
Result<RotationAck> DecodeRotationAck(std::string_view payload);
// The exact bytes the signature covers: a fixed label and every field but the signature,
// one per line.
std::string RotationAckSignedText(const RotationAck& ack);

// {"agentVersion", "at", "certificateId", "lastError", "lastRotation", "nextRenewal",
//  "notAfter", "state", "thingName"}; lastRotation and nextRenewal may be "" (unknown).
struct AgentStatus {
  std::string thing_name;
  std::string certificate_id;
  WallTime not_after;
  std::string state;         // the agent's lifecycle state, e.g. "active", "rotating"
  std::string last_error;    // "" when the last attempt succeeded
  std::optional<WallTime> last_rotation;
  std::optional<WallTime> next_renewal;
  std::string agent_version;
  WallTime at;
  bool operator==(const AgentStatus&) const = default;
};
Result<std::string> EncodeAgentStatus(const AgentStatus& status);
Result<AgentStatus> DecodeAgentStatus(std::string_view payload);

}  // namespace certfleet::shared
