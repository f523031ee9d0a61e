// Fuzzes the rotation wire formats (request, ack, agent status) and the RFC 3339 parser,
// with round-trip properties for whatever they accept.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shared/core/clock.h"
#include "shared/wire/rotation.h"

namespace {

using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer only

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
  }
}

// Decoding either fails with the documented codes, or gives a message that encodes, whose
// encoding decodes to the same message and re-encodes to the same bytes.
template <class T>
void CheckCodec(Result<T> (*decode)(std::string_view), Result<std::string> (*encode)(const T&),
                std::string_view input) {
  auto first = decode(input);
  if (!first) {
    Code code = first.error().code();
    Check(code == Code::kInvalidArgument || (code == Code::kResourceExhausted && input.size() > kMaxRotationPayload),
          "decoder failed with an undocumented code");
    Check(!first.error().message().empty(), "decoder error without a message");
    return;
  }
  auto encoded = encode(*first);
  Check(encoded.has_value(), "a decoded message does not encode");
  auto second = decode(*encoded);
  Check(second.has_value(), "an encoded message does not decode");
  Check(*second == *first, "decode(encode(m)) != m");
  auto again = encode(*second);
  Check(again.has_value() && *again == *encoded, "encoding is not stable");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  CheckCodec<RotationRequest>(DecodeRotationRequest, EncodeRotationRequest, input);
  CheckCodec<RotationAck>(DecodeRotationAck, EncodeRotationAck, input);
  CheckCodec<AgentStatus>(DecodeAgentStatus, EncodeAgentStatus, input);
  WallTime t;
  if (ParseRfc3339(input, &t)) Check(FormatRfc3339(t) == input, "RFC 3339 round trip");
  return 0;
}
