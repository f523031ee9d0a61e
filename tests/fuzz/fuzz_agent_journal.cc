// The agent's journal parser (agent/journal.cc): whatever is on disk after a crash, a
// disk error or tampering, ParseJournal returns a value or kDataLoss, never crashes; and
// what it accepts encodes back to something it accepts equally.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/journal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto journal = certfleet::agent::ParseJournal(text);
  if (!journal) {
    if (journal.error().code() != certfleet::shared::Code::kDataLoss) std::abort();
    return 0;
  }
  auto again = certfleet::agent::ParseJournal(certfleet::agent::EncodeJournal(*journal));
  if (!again || !(*again == *journal)) std::abort();
  return 0;
}
