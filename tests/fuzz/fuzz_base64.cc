// Fuzzes Base64Decode (EST bodies, tokens) and checks round-trip properties.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shared/core/base64.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer entry point
  std::string_view input(reinterpret_cast<const char*>(data), size);

  auto decoded = Base64Decode(input);
  if (decoded) {
    Check(decoded->size() <= size / 4 * 3 + 2, "decoded output longer than the input allows");
    // Whatever decodes re-encodes, and the encoding decodes to the same bytes.
    std::string lines = Base64Encode(*decoded);
    auto again = Base64Decode(lines);
    Check(again.has_value() && *again == *decoded, "Base64Encode output does not decode back");
    std::string one_line = Base64EncodeLine(*decoded);
    auto again_line = Base64Decode(one_line);
    Check(again_line.has_value() && *again_line == *decoded, "Base64EncodeLine output does not decode back");
    // The canonical encoding is a fixed point.
    Check(Base64EncodeLine(*again_line) == one_line, "encoding is not canonical");
  } else {
    Check(decoded.error().code() == Code::kInvalidArgument, "unexpected error code");
  }

  // Any bytes survive an encode/decode round trip, in 64-column LF-terminated lines.
  std::string encoded = Base64Encode(input);
  Check(encoded.empty() || encoded.back() == '\n', "last line does not end in LF");
  size_t line_start = 0;
  for (size_t i = 0; i < encoded.size(); ++i) {
    if (encoded[i] == '\n') {
      Check(i - line_start <= 64 && i > line_start, "bad line length");
      line_start = i + 1;
    }
  }
  auto round = Base64Decode(encoded);
  Check(round.has_value() && *round == input, "encode/decode round trip lost data");
  return 0;
}
