#include "companion/api_input.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "shared/core/base64.h"
#include "shared/core/duration.h"

namespace certfleet::companion {

using shared::Code;
using shared::Error;
using nlohmann::json;

namespace {

constexpr size_t kMaxReasonBytes = 256;

shared::Result<json> ParseObject(std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error(Code::kInvalidArgument, "request body is not valid JSON");
  if (!j.is_object()) return Error(Code::kInvalidArgument, "request body must be a JSON object");
  return j;
}

// Refuses members outside `known`: a misspelt field is an error, not silently ignored.
shared::Status OnlyKnown(const json& j, std::initializer_list<std::string_view> known) {
  for (const auto& [k, v] : j.items()) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      return shared::Status(Code::kInvalidArgument, "unknown field '" + k.substr(0, 64) + "'");
    }
  }
  return shared::Status::Ok();
}

shared::Result<std::optional<std::string>> OptString(const json& j, const char* name, size_t max_bytes) {
  auto it = j.find(name);
  if (it == j.end()) return std::optional<std::string>();
  if (!it->is_string()) return Error(Code::kInvalidArgument, std::string(name) + " must be a string");
  std::string s = it->get<std::string>();
  if (s.size() > max_bytes) {
    return Error(Code::kInvalidArgument, std::string(name) + " is longer than " + std::to_string(max_bytes) + " bytes");
  }
  return std::optional<std::string>(std::move(s));
}

shared::Result<std::optional<std::chrono::seconds>> OptDuration(const json& j, const char* name) {
  CF_ASSIGN_OR_RETURN(std::optional<std::string> text, OptString(j, name, 32));
  if (!text) return std::optional<std::chrono::seconds>();
  auto d = shared::ParseDuration(*text);
  if (!d) return Error(Code::kInvalidArgument, std::string(name) + ": " + d.error().message());
  if (d->count() <= 0) return Error(Code::kInvalidArgument, std::string(name) + " must be positive");
  return std::optional<std::chrono::seconds>(*d);
}

}  // namespace

shared::Result<int64_t> ParseApiLimit(const std::optional<std::string>& text) {
  if (!text) return kApiDefaultPageSize;
  if (text->empty() || text->size() > 4 ||
      !std::all_of(text->begin(), text->end(), [](unsigned char c) { return std::isdigit(c); })) {
    return Error(Code::kInvalidArgument, "limit must be a number from 1 to " + std::to_string(kApiMaxPageSize));
  }
  int64_t n = std::stoll(*text);
  if (n < 1 || n > kApiMaxPageSize) {
    return Error(Code::kInvalidArgument, "limit must be a number from 1 to " + std::to_string(kApiMaxPageSize));
  }
  return n;
}

std::string EncodeCursor(std::string_view kind, std::string_view key) {
  return shared::Base64UrlEncode(std::string(kind) + ":" + std::string(key));
}

shared::Result<std::string> DecodeCursor(std::string_view kind, std::string_view cursor) {
  auto bad = [] { return Error(Code::kInvalidArgument, "nextToken is not valid for this list"); };
  if (cursor.empty() || cursor.size() > kApiMaxCursorChars) return bad();
  std::string b64;
  b64.reserve(cursor.size());
  for (char c : cursor) {
    if (c == '-') {
      b64 += '+';
    } else if (c == '_') {
      b64 += '/';
    } else if (std::isalnum(static_cast<unsigned char>(c))) {
      b64 += c;
    } else {
      return bad();
    }
  }
  auto plain = shared::Base64Decode(b64);
  if (!plain) return bad();
  std::string prefix = std::string(kind) + ":";
  if (plain->size() <= prefix.size() || plain->compare(0, prefix.size(), prefix) != 0) return bad();
  return plain->substr(prefix.size());
}

shared::Result<PositionKey> SplitPositionKey(std::string_view key) {
  const size_t dot = key.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 18 || dot + 1 == key.size() ||
      !std::all_of(key.begin(), key.begin() + static_cast<std::ptrdiff_t>(dot),
                   [](unsigned char c) { return std::isdigit(c); })) {
    return Error(Code::kInvalidArgument, "malformed nextToken");
  }
  PositionKey out;
  for (size_t i = 0; i < dot; ++i) out.seconds = out.seconds * 10 + (key[i] - '0');
  out.rest = std::string(key.substr(dot + 1));
  return out;
}

shared::Result<int64_t> DecodeIntCursor(std::string_view kind, std::string_view cursor) {
  CF_ASSIGN_OR_RETURN(std::string key, DecodeCursor(kind, cursor));
  if (key.empty() || key.size() > 18 || key[0] == '0' ||
      !std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return Error(Code::kInvalidArgument, "nextToken is not valid for this list");
  }
  return std::stoll(key);
}

bool IsLowerHex(std::string_view s, size_t len) {
  return s.size() == len &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

shared::Result<shared::WallTime> ParseApiTime(std::string_view name, std::string_view text) {
  shared::WallTime t;
  if (text.size() > 32 || !shared::ParseRfc3339(text, &t)) {
    return Error(Code::kInvalidArgument, std::string(name) + " must be an RFC 3339 UTC time like 2026-01-02T03:04:05Z");
  }
  return t;
}

shared::Result<CreateRotationBody> ParseCreateRotationBody(std::string_view body) {
  CF_ASSIGN_OR_RETURN(json j, ParseObject(body));
  CF_RETURN_IF_ERROR(OnlyKnown(j, {"thingName", "reason", "deadline"}));
  CreateRotationBody out;
  CF_ASSIGN_OR_RETURN(std::optional<std::string> thing, OptString(j, "thingName", 64));
  if (!thing) return Error(Code::kInvalidArgument, "thingName is required");
  out.thing_name = std::move(*thing);
  CF_ASSIGN_OR_RETURN(std::optional<std::string> reason, OptString(j, "reason", kMaxReasonBytes));
  if (reason) {
    if (reason->empty()) return Error(Code::kInvalidArgument, "reason must not be empty");
    out.reason = std::move(*reason);
  }
  CF_ASSIGN_OR_RETURN(out.deadline, OptDuration(j, "deadline"));
  return out;
}

shared::Result<CreateEnrollmentTokenBody> ParseCreateEnrollmentTokenBody(std::string_view body) {
  CF_ASSIGN_OR_RETURN(json j, ParseObject(body));
  CF_RETURN_IF_ERROR(OnlyKnown(j, {"serial", "ttl"}));
  CreateEnrollmentTokenBody out;
  CF_ASSIGN_OR_RETURN(std::optional<std::string> serial, OptString(j, "serial", 64));
  if (!serial) return Error(Code::kInvalidArgument, "serial is required");
  out.serial = std::move(*serial);
  CF_ASSIGN_OR_RETURN(out.ttl, OptDuration(j, "ttl"));
  return out;
}

shared::Result<std::string> ParseStatusChangeBody(std::string_view body) {
  if (body.empty()) return std::string();
  CF_ASSIGN_OR_RETURN(json j, ParseObject(body));
  CF_RETURN_IF_ERROR(OnlyKnown(j, {"reason"}));
  CF_ASSIGN_OR_RETURN(std::optional<std::string> reason, OptString(j, "reason", kMaxReasonBytes));
  return reason.value_or("");
}

shared::Result<std::vector<std::string>> ParseStartAuditBody(std::string_view body) {
  std::vector<std::string> out;
  if (body.empty()) return out;
  CF_ASSIGN_OR_RETURN(json j, ParseObject(body));
  CF_RETURN_IF_ERROR(OnlyKnown(j, {"targetCheckNames"}));
  auto it = j.find("targetCheckNames");
  if (it == j.end()) return out;
  if (!it->is_array()) return Error(Code::kInvalidArgument, "targetCheckNames must be an array of check names");
  if (it->empty() || it->size() > 32) return Error(Code::kInvalidArgument, "targetCheckNames holds 1-32 names");
  for (const json& v : *it) {
    if (!v.is_string()) return Error(Code::kInvalidArgument, "targetCheckNames must be an array of check names");
    const std::string& name = v.get_ref<const std::string&>();
    if (name.empty() || name.size() > 64) return Error(Code::kInvalidArgument, "a check name is 1-64 bytes");
    if (std::find(out.begin(), out.end(), name) != out.end()) {
      return Error(Code::kInvalidArgument, "targetCheckNames repeats a name");
    }
    out.push_back(name);
  }
  return out;
}

namespace {

shared::Result<SuppressionBody> SuppressionKey(const json& j) {
  SuppressionBody out;
  CF_ASSIGN_OR_RETURN(std::optional<std::string> check, OptString(j, "checkName", 64));
  CF_ASSIGN_OR_RETURN(std::optional<std::string> resource, OptString(j, "resourceId", 256));
  if (!check || check->empty()) return Error(Code::kInvalidArgument, "checkName is required");
  if (!resource || resource->empty()) return Error(Code::kInvalidArgument, "resourceId is required");
  out.check_name = std::move(*check);
  out.resource_id = std::move(*resource);
  return out;
}

}  // namespace

shared::Result<SuppressionBody> ParseSuppressionBody(std::string_view body) {
  CF_ASSIGN_OR_RETURN(json j, ParseObject(body));
  CF_RETURN_IF_ERROR(OnlyKnown(j, {"checkName", "resourceId", "expirationDate", "duration", "description"}));
  CF_ASSIGN_OR_RETURN(SuppressionBody out, SuppressionKey(j));
  CF_ASSIGN_OR_RETURN(std::optional<std::string> until, OptString(j, "expirationDate", 32));
  if (until) {
    CF_ASSIGN_OR_RETURN(shared::WallTime t, ParseApiTime("expirationDate", *until));
    out.expires_at = t;
  }
  CF_ASSIGN_OR_RETURN(out.duration, OptDuration(j, "duration"));
  if (out.expires_at.has_value() == out.duration.has_value()) {
    return Error(Code::kInvalidArgument, "give one of expirationDate and duration");
  }
  CF_ASSIGN_OR_RETURN(std::optional<std::string> description, OptString(j, "description", 1000));
  out.description = description.value_or("");
  return out;
}

shared::Result<SuppressionBody> ParseSuppressionDeleteBody(std::string_view body) {
  CF_ASSIGN_OR_RETURN(json j, ParseObject(body));
  CF_RETURN_IF_ERROR(OnlyKnown(j, {"checkName", "resourceId"}));
  return SuppressionKey(j);
}

}  // namespace certfleet::companion
