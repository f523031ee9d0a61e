// Fuzzes the TOML config loader through a schema with every kind of value.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/config.h"

namespace {

using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer only

struct FuzzConfig {
  std::string name;
  std::string listen;
  int64_t count = 0;
  int port = 0;
  bool enabled = false;
  std::chrono::seconds interval{0};
  std::vector<std::string> hosts;
  std::string path;
};

const ConfigSchema<FuzzConfig>& Schema() {
  static const ConfigSchema<FuzzConfig> schema = [] {
    ConfigSchema<FuzzConfig> s;
    s.Add("name", StringValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.name; }))
        .Add("count", IntValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.count; }, -1000, 1000))
        .Add("enabled", BoolValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.enabled; }))
        .Add("interval", DurationValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.interval; },
                                                   std::chrono::seconds(0), std::chrono::seconds(86400 * 365)))
        .Add("hosts", StringListValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.hosts; }))
        .Add("server.listen",
             StringValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.listen; }, CheckHostPort))
        .Add("server.port", IntValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.port; }, 1, 65535))
        .Add("a.b.path", StringValue<FuzzConfig>([](FuzzConfig& c) -> auto& { return c.path; }, CheckAbsolutePath));
    return s;
  }();
  return schema;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto cfg = Schema().Parse(input, "fuzz.toml", FuzzConfig{});
  if (!cfg) {
    // Every error names the source.
    if (cfg.error().message().rfind("fuzz.toml:", 0) != 0) std::abort();
    return 0;
  }
  // Values that were accepted respect their schema, and strings written back with
  // TomlQuote read back unchanged.
  if (cfg->count < -1000 || cfg->count > 1000) std::abort();
  if (cfg->interval < std::chrono::seconds(0)) std::abort();
  auto again = Schema().Parse("name = " + TomlQuote(cfg->name) + "\n", "fuzz.toml", FuzzConfig{});
  if (!again || again->name != cfg->name) std::abort();
  return 0;
}
