// Fuzzes the PKCS#11 URI parser (keystore.uri in agent.toml and companion.toml) and the
// PIN file parser. Checks that what is accepted is consistent: a parsed URI's token
// label, escaped again, parses back to the same label.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "hal/pkcs11_uri.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  using certfleet::hal::ParsePkcs11Uri;

  for (std::string candidate : {std::string(input), "pkcs11:" + std::string(input)}) {
    auto uri = ParsePkcs11Uri(candidate);
    if (!uri) continue;
    if (!uri->module_path.empty() && uri->module_path.front() != '/') std::abort();
    if (!uri->pin_source.empty() && uri->pin_source.front() != '/') std::abort();
    auto again = ParsePkcs11Uri("pkcs11:token=" + certfleet::hal::Pkcs11Escape(uri->token) +
                                ";object=" + certfleet::hal::Pkcs11Escape(uri->object));
    if (!again || again->token != uri->token || again->object != uri->object) std::abort();
  }

  if (auto pin = certfleet::hal::ParsePinFileContents(input)) {
    if (pin->empty() || pin->size() > 256) std::abort();
    for (unsigned char c : *pin) {
      if (c < 0x20 || c == 0x7f) std::abort();
    }
  }
  return 0;
}
