// The quarantine list the certfleet mosquitto plugin enforces on the things listener: the
// things whose every publish, subscription and delivery the broker refuses
// (docs/audit.md, "Quarantine").
//
// quarantine.json (written by the companion from the registry, atomically):
//   {"version": 1, "things": ["gw-0042", "gw-0107"]}
// Names are thing names (shared::IsValidThingName, the registry's rule), matched against the MQTT username,
// which the things listener takes from the client certificate's CN
// (use_identity_as_username).
//
// Pure and thread-compatible; nothing throws (JSON errors become kInvalidArgument).
#pragma once

#include <cstddef>
#include <set>
#include <string>
#include <string_view>
#include <unordered_set>

#include "shared/core/status.h"

namespace certfleet::broker_plugin {

inline constexpr size_t kMaxQuarantinedThings = 1000000;
inline constexpr size_t kMaxQuarantineListBytes = 80 << 20;

struct QuarantineList {
  std::unordered_set<std::string> things;

  bool Contains(std::string_view thing) const { return things.count(std::string(thing)) != 0; }
};

// Parses quarantine.json. kInvalidArgument for anything malformed: not JSON, unknown or
// missing keys, wrong types, version other than 1, a name that is not a thing name, a
// repeated name, more than kMaxQuarantinedThings names or kMaxQuarantineListBytes bytes.
shared::Result<QuarantineList> ParseQuarantineList(std::string_view json);

// The JSON text ParseQuarantineList reads back to the same set (names sorted).
std::string QuarantineListToJson(const std::set<std::string>& things);

}  // namespace certfleet::broker_plugin
