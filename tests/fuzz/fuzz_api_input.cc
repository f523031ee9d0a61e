// Fuzzes the operator API's input parsers: request bodies, pagination cursors, limits
// and times. Each either refuses with kInvalidArgument or accepts; a cursor that decodes
// re-encodes to a cursor with the same key.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "companion/api_input.h"

namespace {

using namespace certfleet::companion;  // NOLINT(google-build-using-namespace): fuzzer only
using certfleet::shared::Code;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
  }
}

template <class R>
void OnlyInvalidArgument(const R& r) {
  if (!r) Check(r.error().code() == Code::kInvalidArgument && !r.error().message().empty(), "undocumented error");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  OnlyInvalidArgument(ParseCreateRotationBody(input));
  OnlyInvalidArgument(ParseCreateEnrollmentTokenBody(input));
  OnlyInvalidArgument(ParseStatusChangeBody(input));
  auto suppression = ParseSuppressionBody(input);
  OnlyInvalidArgument(suppression);
  if (suppression) Check(suppression->expires_at.has_value() != suppression->duration.has_value(), "one expiry");
  OnlyInvalidArgument(ParseSuppressionDeleteBody(input));
  auto checks = ParseStartAuditBody(input);
  OnlyInvalidArgument(checks);
  if (checks) Check(checks->size() <= 32, "too many check names accepted");
  OnlyInvalidArgument(ParseApiLimit(std::string(input)));
  OnlyInvalidArgument(ParseApiTime("t", input));
  OnlyInvalidArgument(DecodeCursor("audits", input));
  auto key = DecodeCursor("things", input);
  OnlyInvalidArgument(key);
  if (key) Check(*DecodeCursor("things", EncodeCursor("things", *key)) == *key, "cursor round trip");
  auto pos = SplitPositionKey(input);
  OnlyInvalidArgument(pos);
  if (pos) Check(pos->seconds >= 0 && !pos->rest.empty(), "position key");
  auto id = DecodeIntCursor("events", input);
  OnlyInvalidArgument(id);
  if (id) Check(*id > 0, "row cursor not positive");
  // Whatever the key, an encoded cursor decodes to it (when it fits the size bound).
  std::string c = EncodeCursor("things", input);
  if (c.size() <= kApiMaxCursorChars && !input.empty()) Check(*DecodeCursor("things", c) == input, "encode/decode");
  return 0;
}
