// What certfleetctl's commands share: error and table printing, the operator's name for
// the registry, and remote mode's caller over the operator API (docs/cli.md).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "companion/api_client.h"
#include "shared/core/status.h"

namespace certfleet::companion {

// Prints "certfleetctl: <status>" to stderr; returns 1 (the exit code).
int CtlFail(const shared::Status& st);

// Columns padded to the widest cell, two spaces apart; the first row is the header.
void PrintTable(const std::vector<std::vector<std::string>>& rows);

// "operator:<login name>" (or the uid), recorded as who did it.
std::string OperatorName();

// j[key] as text: strings as they are, other values as JSON, "-" when absent or null.
std::string JsonText(const nlohmann::json& j, const char* key);
// j[key], or null when j is no object or has no such member: never throws, never
// inserts (replies come from a server and may be malformed).
const nlohmann::json& JsonField(const nlohmann::json& j, const char* key);
// The reply's nextToken when it is a non-empty string; "" (the last page) otherwise.
std::string NextToken(const nlohmann::json& reply);

using QueryList = std::vector<std::pair<std::string, std::string>>;

// Remote mode: API calls whose JSON is printed as is (--json) or as a table.
struct RemoteCaller {
  ApiClient client;
  bool as_json = false;

  // The reply's JSON, or nullopt after printing the API's error.
  std::optional<nlohmann::json> Call(const std::string& method, const std::string& path, const QueryList& query,
                                     const nlohmann::json& body = nullptr);
  // Follows nextToken until `limit` rows, printing one table (or one JSON array) of the
  // `member` arrays; `columns` are (title, key) pairs.
  int List(const std::string& path, const char* member, QueryList query, int64_t limit,
           const std::vector<std::pair<std::string, std::string>>& columns);
  // One object: JSON, or its scalar members as a two-column table.
  int Show(const std::string& method, const std::string& path, const nlohmann::json& body = nullptr);
};

}  // namespace certfleet::companion
