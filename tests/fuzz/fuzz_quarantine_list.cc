// Fuzzes the quarantine list parser the mosquitto plugin runs on every broker reload
// (companion/broker_plugin/quarantine_list.h). A list that parses re-serialises to a text
// that parses to the same set.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string_view>

#include "companion/broker_plugin/quarantine_list.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace bp = certfleet::broker_plugin;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto list = bp::ParseQuarantineList(text);
  if (!list) {
    if (list.error().code() != certfleet::shared::Code::kInvalidArgument) std::abort();
    return 0;
  }
  const std::set<std::string> names(list->things.begin(), list->things.end());
  auto again = bp::ParseQuarantineList(bp::QuarantineListToJson(names));
  if (!again || again->things != list->things) std::abort();
  return 0;
}
