#include "companion/broker_plugin/quarantine_list.h"

#include <nlohmann/json.hpp>

#include "shared/wire/topics.h"

namespace certfleet::broker_plugin {

using nlohmann::json;
using shared::Code;
using shared::Error;

shared::Result<QuarantineList> ParseQuarantineList(std::string_view text) {
  if (text.size() > kMaxQuarantineListBytes) return Error(Code::kInvalidArgument, "quarantine list too large");
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error(Code::kInvalidArgument, "quarantine list: not a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (key != "version" && key != "things") {
      return Error(Code::kInvalidArgument, "quarantine list: unknown key '" + key.substr(0, 64) + "'");
    }
  }
  auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != 1) {
    return Error(Code::kInvalidArgument, "quarantine list: version must be 1");
  }
  auto things = j.find("things");
  if (things == j.end() || !things->is_array()) {
    return Error(Code::kInvalidArgument, "quarantine list: things must be an array");
  }
  if (things->size() > kMaxQuarantinedThings) {
    return Error(Code::kInvalidArgument, "quarantine list: more than " + std::to_string(kMaxQuarantinedThings) +
                                             " things");
  }
  QuarantineList out;
  out.things.reserve(things->size());
  for (size_t i = 0; i < things->size(); ++i) {
    const json& v = (*things)[i];
    if (!v.is_string() || !shared::IsValidThingName(v.get_ref<const std::string&>())) {
      return Error(Code::kInvalidArgument, "quarantine list: things[" + std::to_string(i) + "] is not a thing name");
    }
    if (!out.things.insert(v.get<std::string>()).second) {
      return Error(Code::kInvalidArgument, "quarantine list: things[" + std::to_string(i) + "] is repeated");
    }
  }
  return out;
}

std::string QuarantineListToJson(const std::set<std::string>& things) {
  json j = {{"version", 1}, {"things", json::array()}};
  for (const std::string& t : things) j["things"].push_back(t);
  return j.dump() + "\n";
}

}  // namespace certfleet::broker_plugin
