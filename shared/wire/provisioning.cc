#include "shared/wire/provisioning.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "shared/wire/json_payload.h"
#include "shared/wire/topics.h"
#include "shared/wire/utf8.h"

namespace certfleet::shared {
namespace {

using nlohmann::json;

constexpr std::string_view kCreateKeysRequest = "CreateKeysAndCertificate request";
constexpr std::string_view kCreateKeysAccepted = "CreateKeysAndCertificate accepted";
constexpr std::string_view kFromCsrRequest = "CreateCertificateFromCsr request";
constexpr std::string_view kFromCsrAccepted = "CreateCertificateFromCsr accepted";
constexpr std::string_view kRegisterRequest = "RegisterThing request";
constexpr std::string_view kRegisterAccepted = "RegisterThing accepted";
constexpr std::string_view kRejection = "provisioning rejection";

constexpr std::array<RejectionCode, 11> kKnownCodes = {
    kInvalidPayload, kInvalidCertificateOwnershipToken, kInvalidCsr,       kInvalidParameters,
    kAccessDenied,   kNotAllowed,                       kTemplateNotFound, kThingAlreadyProvisioned,
    kThrottled,      kInternalFailure,                  kServiceUnavailable,
};

bool IsJsonSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

bool IsHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

Status Invalid(std::string_view what, std::string_view field, std::string_view problem) {
  std::string message(what);
  message += ": ";
  message += field;
  message += ": ";
  message += problem;
  return Status(Code::kInvalidArgument, std::move(message));
}

// ---- Content checks, shared by encoders and decoders ----

Status CheckText(std::string_view what, std::string_view field, std::string_view value, size_t min_length,
                 size_t max_length) {
  if (value.size() < min_length) return Invalid(what, field, value.empty() ? "is empty" : "is too short");
  if (value.size() > max_length) {
    return Invalid(what, field, "is longer than " + std::to_string(max_length) + " bytes");
  }
  if (value.find('\0') != std::string_view::npos) return Invalid(what, field, "contains a NUL character");
  if (!IsValidUtf8(value)) return Invalid(what, field, "is not valid UTF-8");
  return Status::Ok();
}

Status CheckCertificateId(std::string_view what, std::string_view id) {
  if (id.size() != kCertificateIdLength) {
    return Invalid(what, "certificateId", "is not " + std::to_string(kCertificateIdLength) + " hex digits");
  }
  for (char c : id) {
    if (!IsHex(c)) return Invalid(what, "certificateId", "has a character that is not a hex digit");
  }
  return Status::Ok();
}

// Names a map entry in error messages: `parameters["key"]` for a key that is itself
// printable within limits (escaped as JSON), otherwise just `parameters`.
std::string EntryName(std::string_view map_name, std::string_view key) {
  std::string name(map_name);
  if (!key.empty() && key.size() <= kMaxMapKeyLength && IsValidUtf8(key)) {
    name += '[';
    name += json(std::string(key)).dump(-1, ' ', false, json::error_handler_t::replace);
    name += ']';
  }
  return name;
}

Status CheckMap(std::string_view what, std::string_view field, const StringMap& map) {
  if (map.size() > kMaxMapEntries) {
    return Invalid(what, field,
                   "has " + std::to_string(map.size()) + " entries, more than " + std::to_string(kMaxMapEntries));
  }
  for (const auto& [key, value] : map) {
    std::string entry = EntryName(field, key);
    if (key.empty()) return Invalid(what, entry, "has an empty key");
    if (key.size() > kMaxMapKeyLength) {
      return Invalid(what, entry, "has a key longer than " + std::to_string(kMaxMapKeyLength) + " bytes");
    }
    if (key.find('\0') != std::string::npos) return Invalid(what, entry, "has a key containing a NUL character");
    if (!IsValidUtf8(key)) return Invalid(what, entry, "has a key that is not valid UTF-8");
    CF_RETURN_IF_ERROR(CheckText(what, entry, value, 0, kMaxMapValueLength));
  }
  return Status::Ok();
}

Status CheckToken(std::string_view what, std::string_view token) {
  return CheckText(what, "certificateOwnershipToken", token, 1, kMaxOwnershipTokenLength);
}

Status CheckPem(std::string_view what, std::string_view field, std::string_view pem) {
  return CheckText(what, field, pem, 1, kMaxPemFieldLength);
}

Status Validate(const CreateKeysAndCertificateAccepted& m) {
  CF_RETURN_IF_ERROR(CheckCertificateId(kCreateKeysAccepted, m.certificate_id));
  CF_RETURN_IF_ERROR(CheckPem(kCreateKeysAccepted, "certificatePem", m.certificate_pem));
  CF_RETURN_IF_ERROR(CheckPem(kCreateKeysAccepted, "privateKey", m.private_key));
  return CheckToken(kCreateKeysAccepted, m.certificate_ownership_token);
}

Status Validate(const CreateCertificateFromCsrRequest& m) {
  return CheckPem(kFromCsrRequest, "certificateSigningRequest", m.certificate_signing_request);
}

Status Validate(const CreateCertificateFromCsrAccepted& m) {
  CF_RETURN_IF_ERROR(CheckCertificateId(kFromCsrAccepted, m.certificate_id));
  CF_RETURN_IF_ERROR(CheckPem(kFromCsrAccepted, "certificatePem", m.certificate_pem));
  return CheckToken(kFromCsrAccepted, m.certificate_ownership_token);
}

Status Validate(const RegisterThingRequest& m) {
  CF_RETURN_IF_ERROR(CheckToken(kRegisterRequest, m.certificate_ownership_token));
  return CheckMap(kRegisterRequest, "parameters", m.parameters);
}

Status Validate(const RegisterThingAccepted& m) {
  if (Status s = ValidateThingName(m.thing_name); !s.ok()) return Invalid(kRegisterAccepted, "thingName", s.message());
  return CheckMap(kRegisterAccepted, "deviceConfiguration", m.device_configuration);
}

Status Validate(const Rejection& m) {
  if (m.status_code < kMinRejectionStatus || m.status_code > kMaxRejectionStatus) {
    return Invalid(kRejection, "statusCode",
                   "is not in " + std::to_string(kMinRejectionStatus) + ".." + std::to_string(kMaxRejectionStatus));
  }
  CF_RETURN_IF_ERROR(CheckText(kRejection, "errorCode", m.error_code, 1, kMaxErrorCodeLength));
  return CheckText(kRejection, "errorMessage", m.error_message, 0, kMaxErrorMessageLength);
}

// ---- Decoding ----

Result<json> ParseObject(std::string_view what, std::string_view payload) {
  return ParseJsonPayload(what, payload, kMaxProvisioningPayload);
}

// Typed, non-throwing access to the fields of one JSON object. An optional field that is
// absent or null keeps its default.
class Fields {
 public:
  Fields(std::string_view what, const json& object) : what_(what), object_(object) {}

  Status String(const char* key, bool required, std::string* out) const {
    const json* value = Find(key);
    if (value == nullptr || (!required && value->is_null())) {
      return required ? Invalid(what_, key, "is missing") : Status::Ok();
    }
    const auto* text = value->get_ptr<const json::string_t*>();
    if (text == nullptr) return Invalid(what_, key, std::string("must be a string, not ") + value->type_name());
    *out = *text;
    return Status::Ok();
  }

  Status Map(const char* key, StringMap* out) const {
    const json* value = Find(key);
    if (value == nullptr || value->is_null()) return Status::Ok();
    if (!value->is_object()) {
      return Invalid(what_, key, std::string("must be an object, not ") + value->type_name());
    }
    // Checked before copying anything, so that a huge map costs no allocations.
    if (value->size() > kMaxMapEntries) {
      return Invalid(what_, key,
                     "has " + std::to_string(value->size()) + " entries, more than " + std::to_string(kMaxMapEntries));
    }
    StringMap map;
    for (auto it = value->begin(); it != value->end(); ++it) {
      const auto* text = it.value().get_ptr<const json::string_t*>();
      if (text == nullptr) {
        return Invalid(what_, EntryName(key, it.key()),
                       std::string("must be a string, not ") + it.value().type_name());
      }
      map.emplace(it.key(), *text);
    }
    *out = std::move(map);
    return Status::Ok();
  }

  Status Int(const char* key, int min, int max, int* out) const {
    const json* value = Find(key);
    if (value == nullptr) return Invalid(what_, key, "is missing");
    std::string range = "is not an integer in " + std::to_string(min) + ".." + std::to_string(max);
    if (const auto* u = value->get_ptr<const json::number_unsigned_t*>()) {
      if (*u > static_cast<uint64_t>(max) || (min >= 0 && *u < static_cast<uint64_t>(min))) {
        return Invalid(what_, key, range);
      }
      *out = static_cast<int>(*u);
      return Status::Ok();
    }
    if (const auto* i = value->get_ptr<const json::number_integer_t*>()) {
      if (*i < min || *i > max) return Invalid(what_, key, range);
      *out = static_cast<int>(*i);
      return Status::Ok();
    }
    return Invalid(what_, key, std::string("must be an integer, not ") + value->type_name());
  }

 private:
  const json* Find(const char* key) const {
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  std::string_view what_;
  const json& object_;
};

constexpr bool kRequired = true;
constexpr bool kOptional = false;

// ---- Encoding ----

json MapToJson(const StringMap& map) {
  json object = json::object();
  for (const auto& [key, value] : map) object[key] = value;
  return object;
}

Result<std::string> Dump(std::string_view what, const json& value) {
  // Every string was checked to be UTF-8, so the replace handler never fires; it only
  // guarantees that dump() cannot throw.
  std::string out = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (out.size() > kMaxProvisioningPayload) {
    return Error(Code::kResourceExhausted, std::string(what) + ": encoded payload of " + std::to_string(out.size()) +
                                               " bytes is larger than " + std::to_string(kMaxProvisioningPayload));
  }
  return out;
}

}  // namespace

// ---- CreateKeysAndCertificate ----

Result<std::string> Encode(const CreateKeysAndCertificateRequest& /*message*/) { return std::string("{}"); }

Result<CreateKeysAndCertificateRequest> DecodeCreateKeysAndCertificateRequest(std::string_view payload) {
  bool blank = true;
  for (char c : payload) {
    if (!IsJsonSpace(c)) {
      blank = false;
      break;
    }
  }
  if (blank && payload.size() <= kMaxProvisioningPayload) return CreateKeysAndCertificateRequest{};
  // Any object will do: the request has no fields.
  if (auto object = ParseObject(kCreateKeysRequest, payload); !object) return Error(std::move(object).error());
  return CreateKeysAndCertificateRequest{};
}

Result<std::string> Encode(const CreateKeysAndCertificateAccepted& m) {
  CF_RETURN_IF_ERROR(Validate(m));
  json out = json::object();
  out["certificateId"] = m.certificate_id;
  out["certificatePem"] = m.certificate_pem;
  out["privateKey"] = m.private_key;
  out["certificateOwnershipToken"] = m.certificate_ownership_token;
  return Dump(kCreateKeysAccepted, out);
}

Result<CreateKeysAndCertificateAccepted> DecodeCreateKeysAndCertificateAccepted(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kCreateKeysAccepted, payload));
  Fields fields(kCreateKeysAccepted, object);
  CreateKeysAndCertificateAccepted m;
  CF_RETURN_IF_ERROR(fields.String("certificateId", kRequired, &m.certificate_id));
  CF_RETURN_IF_ERROR(fields.String("certificatePem", kRequired, &m.certificate_pem));
  CF_RETURN_IF_ERROR(fields.String("privateKey", kRequired, &m.private_key));
  CF_RETURN_IF_ERROR(fields.String("certificateOwnershipToken", kRequired, &m.certificate_ownership_token));
  CF_RETURN_IF_ERROR(Validate(m));
  return m;
}

// ---- CreateCertificateFromCsr ----

Result<std::string> Encode(const CreateCertificateFromCsrRequest& m) {
  CF_RETURN_IF_ERROR(Validate(m));
  json out = json::object();
  out["certificateSigningRequest"] = m.certificate_signing_request;
  return Dump(kFromCsrRequest, out);
}

Result<CreateCertificateFromCsrRequest> DecodeCreateCertificateFromCsrRequest(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kFromCsrRequest, payload));
  Fields fields(kFromCsrRequest, object);
  CreateCertificateFromCsrRequest m;
  CF_RETURN_IF_ERROR(fields.String("certificateSigningRequest", kRequired, &m.certificate_signing_request));
  CF_RETURN_IF_ERROR(Validate(m));
  return m;
}

Result<std::string> Encode(const CreateCertificateFromCsrAccepted& m) {
  CF_RETURN_IF_ERROR(Validate(m));
  json out = json::object();
  out["certificateId"] = m.certificate_id;
  out["certificatePem"] = m.certificate_pem;
  out["certificateOwnershipToken"] = m.certificate_ownership_token;
  return Dump(kFromCsrAccepted, out);
}

Result<CreateCertificateFromCsrAccepted> DecodeCreateCertificateFromCsrAccepted(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kFromCsrAccepted, payload));
  Fields fields(kFromCsrAccepted, object);
  CreateCertificateFromCsrAccepted m;
  CF_RETURN_IF_ERROR(fields.String("certificateId", kRequired, &m.certificate_id));
  CF_RETURN_IF_ERROR(fields.String("certificatePem", kRequired, &m.certificate_pem));
  CF_RETURN_IF_ERROR(fields.String("certificateOwnershipToken", kRequired, &m.certificate_ownership_token));
  CF_RETURN_IF_ERROR(Validate(m));
  return m;
}

// ---- RegisterThing ----

Result<std::string> Encode(const RegisterThingRequest& m) {
  CF_RETURN_IF_ERROR(Validate(m));
  json out = json::object();
  out["certificateOwnershipToken"] = m.certificate_ownership_token;
  out["parameters"] = MapToJson(m.parameters);
  return Dump(kRegisterRequest, out);
}

Result<RegisterThingRequest> DecodeRegisterThingRequest(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kRegisterRequest, payload));
  Fields fields(kRegisterRequest, object);
  RegisterThingRequest m;
  CF_RETURN_IF_ERROR(fields.String("certificateOwnershipToken", kRequired, &m.certificate_ownership_token));
  CF_RETURN_IF_ERROR(fields.Map("parameters", &m.parameters));
  CF_RETURN_IF_ERROR(Validate(m));
  return m;
}

Result<std::string> Encode(const RegisterThingAccepted& m) {
  CF_RETURN_IF_ERROR(Validate(m));
  json out = json::object();
  out["thingName"] = m.thing_name;
  out["deviceConfiguration"] = MapToJson(m.device_configuration);
  return Dump(kRegisterAccepted, out);
}

Result<RegisterThingAccepted> DecodeRegisterThingAccepted(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kRegisterAccepted, payload));
  Fields fields(kRegisterAccepted, object);
  RegisterThingAccepted m;
  CF_RETURN_IF_ERROR(fields.String("thingName", kRequired, &m.thing_name));
  CF_RETURN_IF_ERROR(fields.Map("deviceConfiguration", &m.device_configuration));
  CF_RETURN_IF_ERROR(Validate(m));
  return m;
}

// ---- Rejection ----

Result<std::string> Encode(const Rejection& m) {
  CF_RETURN_IF_ERROR(Validate(m));
  json out = json::object();
  out["statusCode"] = m.status_code;
  out["errorCode"] = m.error_code;
  out["errorMessage"] = m.error_message;
  return Dump(kRejection, out);
}

Result<Rejection> DecodeRejection(std::string_view payload) {
  CF_ASSIGN_OR_RETURN(json object, ParseObject(kRejection, payload));
  Fields fields(kRejection, object);
  Rejection m;
  CF_RETURN_IF_ERROR(fields.Int("statusCode", kMinRejectionStatus, kMaxRejectionStatus, &m.status_code));
  CF_RETURN_IF_ERROR(fields.String("errorCode", kRequired, &m.error_code));
  CF_RETURN_IF_ERROR(fields.String("errorMessage", kOptional, &m.error_message));
  CF_RETURN_IF_ERROR(Validate(m));
  return m;
}

std::span<const RejectionCode> KnownRejectionCodes() { return kKnownCodes; }

Rejection MakeRejection(const RejectionCode& code, std::string_view message) {
  Rejection out;
  out.status_code = code.status_code;
  out.error_code = code.error_code;
  std::string& text = out.error_message;
  text.reserve(std::min(message.size(), kMaxErrorMessageLength));
  for (size_t pos = 0; pos < message.size();) {
    size_t len = message[pos] == '\0' ? 0 : Utf8SequenceLength(message, pos);
    size_t take = len == 0 ? 1 : len;
    if (text.size() + take > kMaxErrorMessageLength) break;
    if (len == 0) {
      text += '?';
    } else {
      text.append(message, pos, len);
    }
    pos += take;
  }
  return out;
}

bool IsPermanentRejection(const Rejection& rejection) {
  int s = rejection.status_code;
  return !(s == 429 || (s >= 500 && s <= 599));
}

Status RejectionToStatus(const Rejection& rejection) {
  Code code = Code::kInvalidArgument;
  switch (rejection.status_code) {
    case 401: code = Code::kUnauthenticated; break;
    case 403: code = Code::kPermissionDenied; break;
    case 404: code = Code::kNotFound; break;
    case 409: code = Code::kAlreadyExists; break;
    default:
      if (!IsPermanentRejection(rejection)) code = Code::kUnavailable;
      break;
  }
  std::string message = "rejected: " + std::to_string(rejection.status_code) + " " + rejection.error_code;
  if (!rejection.error_message.empty()) {
    message += ": ";
    message += rejection.error_message;
  }
  return Status(code, std::move(message));
}

}  // namespace certfleet::shared
