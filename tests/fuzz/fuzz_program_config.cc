// Fuzzes the two programs' configuration parsers (agent.toml and companion.toml) with the
// same input: every schema, table list and cross-key check behind them. An accepted
// config must satisfy the invariants the programs rely on; a refused one must say which
// file it came from.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/config.h"
#include "companion/config.h"

namespace {

void CheckError(const certfleet::shared::Status& status, std::string_view source) {
  if (status.message().rfind(std::string(source), 0) != 0) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);

  auto agent = certfleet::agent::ParseAgentConfig(input, "agent.toml");
  if (!agent) {
    CheckError(agent.error(), "agent.toml");
  } else {
    for (const auto& e : agent->exports) {
      if (e.path.empty() || e.path[0] != '/') std::abort();  // exports are absolute paths
      if ((e.mode & 0133) != 0) std::abort();                  // never executable or group/world-writable
    }
  }

  auto companion = certfleet::companion::ParseCompanionConfig(input, "companion.toml");
  if (!companion) {
    CheckError(companion.error(), "companion.toml");
  } else {
    // Paths left unset derive from an absolute state_dir.
    if (companion->state_dir.empty() || companion->state_dir[0] != '/') std::abort();
    if (companion->registry_path.empty() || companion->registry_path[0] != '/') std::abort();
    if (companion->est.max_body_bytes <= 0 || companion->est.threads <= 0) std::abort();
  }
  return 0;
}
