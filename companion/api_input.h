// Parsers of the operator API's outside input: query values, pagination cursors and
// JSON request bodies. Pure functions (no registry, no I/O), so that the fuzzer can
// run them alone. Every failure is kInvalidArgument with a message fit for the caller.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/status.h"

namespace certfleet::companion {

inline constexpr int64_t kApiDefaultPageSize = 100;
inline constexpr int64_t kApiMaxPageSize = 500;
inline constexpr size_t kApiMaxCursorChars = 200;

// "limit": absent -> kApiDefaultPageSize; else a decimal 1..kApiMaxPageSize.
shared::Result<int64_t> ParseApiLimit(const std::optional<std::string>& text);

// Pagination cursors (nextToken) are opaque to clients: base64url of "<kind>:<key>".
// The kind ties a cursor to its list, so that one list's cursor is refused by another.
std::string EncodeCursor(std::string_view kind, std::string_view key);
// The key; kInvalidArgument for a malformed cursor or one of another kind.
shared::Result<std::string> DecodeCursor(std::string_view kind, std::string_view cursor);
// A cursor whose key is a positive decimal integer (a row id).
shared::Result<int64_t> DecodeIntCursor(std::string_view kind, std::string_view cursor);
// The key of a newest-first list's cursor, "<unix seconds>.<rest>": 1-18 digits (so the
// number fits int64_t), a dot, a non-empty rest. kInvalidArgument otherwise.
struct PositionKey {
  int64_t seconds = 0;
  std::string rest;
};
shared::Result<PositionKey> SplitPositionKey(std::string_view key);

// `len` lowercase hex digits.
bool IsLowerHex(std::string_view s, size_t len);

// An RFC 3339 UTC time ("2026-01-02T03:04:05Z").
shared::Result<shared::WallTime> ParseApiTime(std::string_view name, std::string_view text);

// POST /rotations: {"thingName": "...", "reason": "...", "deadline": "7d"}.
struct CreateRotationBody {
  std::string thing_name;
  std::string reason;  // may be empty: the caller picks a default
  std::optional<std::chrono::seconds> deadline;
};
shared::Result<CreateRotationBody> ParseCreateRotationBody(std::string_view body);

// POST /enrollment-tokens: {"serial": "...", "ttl": "24h"}.
struct CreateEnrollmentTokenBody {
  std::string serial;
  std::optional<std::chrono::seconds> ttl;
};
shared::Result<CreateEnrollmentTokenBody> ParseCreateEnrollmentTokenBody(std::string_view body);

// POST /certificates/{id}/revoke and /deactivate: an empty body, or {"reason": "..."}
// (at most 256 bytes). Returns the reason ("" if none).
shared::Result<std::string> ParseStatusChangeBody(std::string_view body);

// POST /start-audit: an empty body (every enabled check) or {"targetCheckNames": [...]}
// with 1-32 distinct names of at most 64 bytes each (whether a name is a known check is
// the audit engine's to say).
shared::Result<std::vector<std::string>> ParseStartAuditBody(std::string_view body);

// POST /audit-suppressions: {"checkName", "resourceId", "expirationDate"?, "duration"?,
// "description"?}: exactly one of expirationDate (RFC 3339) and duration ("30d");
// description at most 1000 bytes. POST /audit-suppressions/delete: {"checkName",
// "resourceId"}. Names 1-64 bytes, resource ids 1-256.
struct SuppressionBody {
  std::string check_name;
  std::string resource_id;
  std::optional<shared::WallTime> expires_at;
  std::optional<std::chrono::seconds> duration;
  std::string description;
};
shared::Result<SuppressionBody> ParseSuppressionBody(std::string_view body);
shared::Result<SuppressionBody> ParseSuppressionDeleteBody(std::string_view body);

}  // namespace certfleet::companion
