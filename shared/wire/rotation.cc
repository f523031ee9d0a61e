#include "shared/wire/rotation.h"

#include <nlohmann/json.hpp>

#include "shared/core/base64.h"
#include "shared/wire/json_payload.h"
#include "shared/wire/topics.h"
#include "shared/wire/utf8.h"

namespace certfleet::shared {
namespace {

using nlohmann::json;

constexpr std::string_view kRequest = "rotation request";
constexpr std::string_view kAck = "rotation ack";
constexpr std::string_view kStatus = "agent status";

Status Invalid(std::string_view what, std::string_view field, std::string_view problem) {
  return Status(Code::kInvalidArgument, std::string(what) + ": " + std::string(field) + ": " + std::string(problem));
}

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status CheckText(std::string_view what, std::string_view field, std::string_view value, size_t min_length,
                 size_t max_length) {
  if (value.size() < min_length) return Invalid(what, field, "is empty");
  if (value.size() > max_length) return Invalid(what, field, "is longer than " + std::to_string(max_length) + " bytes");
  if (value.find('\0') != std::string_view::npos) return Invalid(what, field, "contains a NUL character");
  if (!IsValidUtf8(value)) return Invalid(what, field, "is not valid UTF-8");
  return Status::Ok();
}

Status CheckCertId(std::string_view what, std::string_view field, std::string_view id) {
  if (id.size() != 64 || !IsLowerHex(id)) return Invalid(what, field, "is not 64 lowercase hex digits");
  return Status::Ok();
}

Status CheckThing(std::string_view what, std::string_view name) {
  if (!ValidateThingName(name).ok()) return Invalid(what, "thingName", "is not a valid thing name");
  return Status::Ok();
}

Status CheckRotationId(std::string_view what, std::string_view id, bool allow_empty) {
  if (allow_empty && id.empty()) return Status::Ok();
  if (!ValidateRotationId(id).ok()) return Invalid(what, "rotationId", "is not 32 lowercase hex digits");
  return Status::Ok();
}

Result<json> ParseObject(std::string_view what, std::string_view payload) {
  return ParseJsonPayload(what, payload, kMaxRotationPayload);
}

Result<std::string> GetString(std::string_view what, const json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end()) return Error(Invalid(what, field, "is missing"));
  if (!it->is_string()) return Error(Invalid(what, field, "is not a string"));
  return it->get<std::string>();
}

Result<WallTime> GetTime(std::string_view what, const json& object, const char* field) {
  CF_ASSIGN_OR_RETURN(std::string text, GetString(what, object, field));
  WallTime t;
  if (!ParseRfc3339(text, &t)) return Error(Invalid(what, field, "is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SSZ)"));
  return t;
}

// "" stands for "unknown".
Result<std::optional<WallTime>> GetOptionalTime(std::string_view what, const json& object, const char* field) {
  CF_ASSIGN_OR_RETURN(std::string text, GetString(what, object, field));
  if (text.empty()) return std::optional<WallTime>();
  WallTime t;
  if (!ParseRfc3339(text, &t)) return Error(Invalid(what, field, "is not an RFC 3339 UTC time or \"\""));
  return std::optional<WallTime>(t);
}

std::string Time(WallTime t) { return FormatRfc3339(t); }
std::string OptionalTime(const std::optional<WallTime>& t) { return t ? FormatRfc3339(*t) : std::string(); }

Status CheckTimeRange(std::string_view what, std::string_view field, WallTime t) {
  WallTime parsed;
  if (!ParseRfc3339(FormatRfc3339(t), &parsed)) return Invalid(what, field, "is outside the years 1970-9999");
  return Status::Ok();
}

Result<std::string> Dump(std::string_view what, const json& object) {
  std::string text = object.dump();
  if (text.size() > kMaxRotationPayload) {
    return Error(Code::kResourceExhausted, std::string(what) + ": payload would exceed " +
                                               std::to_string(kMaxRotationPayload) + " bytes");
  }
  return text;
}

// ---- Field checks shared by encoders and decoders ----

Status CheckRequest(const RotationRequest& r) {
  CF_RETURN_IF_ERROR(CheckRotationId(kRequest, r.rotation_id, /*allow_empty=*/false));
  CF_RETURN_IF_ERROR(CheckText(kRequest, "reason", r.reason, 1, kMaxRotationReasonLength));
  CF_RETURN_IF_ERROR(CheckTimeRange(kRequest, "requestedAt", r.requested_at));
  CF_RETURN_IF_ERROR(CheckTimeRange(kRequest, "deadline", r.deadline));
  if (r.deadline < r.requested_at) return Invalid(kRequest, "deadline", "is before requestedAt");
  return Status::Ok();
}

Status CheckAck(const RotationAck& a) {
  CF_RETURN_IF_ERROR(CheckThing(kAck, a.thing_name));
  CF_RETURN_IF_ERROR(CheckRotationId(kAck, a.rotation_id, /*allow_empty=*/true));
  CF_RETURN_IF_ERROR(CheckCertId(kAck, "certificateId", a.certificate_id));
  CF_RETURN_IF_ERROR(CheckCertId(kAck, "previousCertificateId", a.previous_certificate_id));
  if (a.certificate_id == a.previous_certificate_id) {
    return Invalid(kAck, "certificateId", "equals previousCertificateId");
  }
  CF_RETURN_IF_ERROR(CheckTimeRange(kAck, "signedAt", a.signed_at));
  if (a.signature.empty()) return Invalid(kAck, "signature", "is empty");
  if (a.signature.size() > kMaxSignatureLength) return Invalid(kAck, "signature", "is too long");
  return Status::Ok();
}

Status CheckStatus(const AgentStatus& s) {
  CF_RETURN_IF_ERROR(CheckThing(kStatus, s.thing_name));
  CF_RETURN_IF_ERROR(CheckCertId(kStatus, "certificateId", s.certificate_id));
  CF_RETURN_IF_ERROR(CheckTimeRange(kStatus, "notAfter", s.not_after));
  CF_RETURN_IF_ERROR(CheckText(kStatus, "state", s.state, 1, kMaxStatusTextLength));
  CF_RETURN_IF_ERROR(CheckText(kStatus, "lastError", s.last_error, 0, kMaxStatusTextLength));
  CF_RETURN_IF_ERROR(CheckText(kStatus, "agentVersion", s.agent_version, 0, kMaxStatusTextLength));
  if (s.last_rotation) CF_RETURN_IF_ERROR(CheckTimeRange(kStatus, "lastRotation", *s.last_rotation));
  if (s.next_renewal) CF_RETURN_IF_ERROR(CheckTimeRange(kStatus, "nextRenewal", *s.next_renewal));
  CF_RETURN_IF_ERROR(CheckTimeRange(kStatus, "at", s.at));
  return Status::Ok();
}

}  // namespace

Status ValidateRotationId(std::string_view id) {
  if (id.size() != kRotationIdLength || !IsLowerHex(id)) {
    return Status(Code::kInvalidArgument, "a rotation id is 32 lowercase hex digits");
  }
  return Status::Ok();
}

// ---- Rotation request ----

Result<std::string> EncodeRotationRequest(const RotationRequest& r) {
  CF_RETURN_IF_ERROR(CheckRequest(r));
  json object = {{"deadline", Time(r.deadline)},
                 {"reason", r.reason},
                 {"requestedAt", Time(r.requested_at)},
                 {"rotationId", r.rotation_id}};
  return Dump(kRequest, object);
}

Result<RotationRequest> DecodeRotationRequest(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kRequest, payload));
  RotationRequest r;
  CF_ASSIGN_OR_RETURN(r.rotation_id, GetString(kRequest, object, "rotationId"));
  CF_ASSIGN_OR_RETURN(r.reason, GetString(kRequest, object, "reason"));
  CF_ASSIGN_OR_RETURN(r.requested_at, GetTime(kRequest, object, "requestedAt"));
  CF_ASSIGN_OR_RETURN(r.deadline, GetTime(kRequest, object, "deadline"));
  CF_RETURN_IF_ERROR(CheckRequest(r));
  return r;
}

// ---- Rotation ack ----

std::string RotationAckSignedText(const RotationAck& a) {
  std::string text = "certfleet rotation ack v1\n";
  text += a.thing_name + "\n";
  text += a.rotation_id + "\n";
  text += a.certificate_id + "\n";
  text += a.previous_certificate_id + "\n";
  text += FormatRfc3339(a.signed_at) + "\n";
  return text;
}

Result<std::string> EncodeRotationAck(const RotationAck& a) {
  CF_RETURN_IF_ERROR(CheckAck(a));
  json object = {{"certificateId", a.certificate_id},
                 {"previousCertificateId", a.previous_certificate_id},
                 {"rotationId", a.rotation_id},
                 {"signature", Base64EncodeLine(a.signature)},
                 {"signedAt", Time(a.signed_at)},
                 {"thingName", a.thing_name}};
  return Dump(kAck, object);
}

Result<RotationAck> DecodeRotationAck(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kAck, payload));
  RotationAck a;
  CF_ASSIGN_OR_RETURN(a.thing_name, GetString(kAck, object, "thingName"));
  CF_ASSIGN_OR_RETURN(a.rotation_id, GetString(kAck, object, "rotationId"));
  CF_ASSIGN_OR_RETURN(a.certificate_id, GetString(kAck, object, "certificateId"));
  CF_ASSIGN_OR_RETURN(a.previous_certificate_id, GetString(kAck, object, "previousCertificateId"));
  CF_ASSIGN_OR_RETURN(a.signed_at, GetTime(kAck, object, "signedAt"));
  CF_ASSIGN_OR_RETURN(std::string signature, GetString(kAck, object, "signature"));
  if (signature.size() > 2 * kMaxSignatureLength) return Error(Invalid(kAck, "signature", "is too long"));
  auto raw = Base64Decode(signature);
  if (!raw) return Error(Invalid(kAck, "signature", "is not base64"));
  a.signature = std::move(*raw);
  CF_RETURN_IF_ERROR(CheckAck(a));
  return a;
}

// ---- Agent status ----

Result<std::string> EncodeAgentStatus(const AgentStatus& s) {
  CF_RETURN_IF_ERROR(CheckStatus(s));
  json object = {{"agentVersion", s.agent_version},
                 {"at", Time(s.at)},
                 {"certificateId", s.certificate_id},
                 {"lastError", s.last_error},
                 {"lastRotation", OptionalTime(s.last_rotation)},
                 {"nextRenewal", OptionalTime(s.next_renewal)},
                 {"notAfter", Time(s.not_after)},
                 {"state", s.state},
                 {"thingName", s.thing_name}};
  return Dump(kStatus, object);
}

Result<AgentStatus> DecodeAgentStatus(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kStatus, payload));
  AgentStatus s;
  CF_ASSIGN_OR_RETURN(s.thing_name, GetString(kStatus, object, "thingName"));
  CF_ASSIGN_OR_RETURN(s.certificate_id, GetString(kStatus, object, "certificateId"));
  CF_ASSIGN_OR_RETURN(s.not_after, GetTime(kStatus, object, "notAfter"));
  CF_ASSIGN_OR_RETURN(s.state, GetString(kStatus, object, "state"));
  CF_ASSIGN_OR_RETURN(s.last_error, GetString(kStatus, object, "lastError"));
  CF_ASSIGN_OR_RETURN(s.last_rotation, GetOptionalTime(kStatus, object, "lastRotation"));
  CF_ASSIGN_OR_RETURN(s.next_renewal, GetOptionalTime(kStatus, object, "nextRenewal"));
  CF_ASSIGN_OR_RETURN(s.agent_version, GetString(kStatus, object, "agentVersion"));
  CF_ASSIGN_OR_RETURN(s.at, GetTime(kStatus, object, "at"));
  CF_RETURN_IF_ERROR(CheckStatus(s));
  return s;
}

}  // namespace certfleet::shared
