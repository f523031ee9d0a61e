// Fuzzes the fleet provisioning wire formats: every payload decoder, the request topic
// parser and the thing topic parser, with round-trip properties for whatever they accept.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"

namespace {

using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer only

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "property violated: %s\n", what);
    std::abort();
  }
}

// Decoding either fails with the documented codes or gives a message that encodes, whose
// encoding decodes to the same message and re-encodes to the same bytes.
template <class T>
void CheckCodec(Result<T> (*decode)(std::string_view), std::string_view input) {
  auto first = decode(input);
  if (!first) {
    Code code = first.error().code();
    Check(code == Code::kInvalidArgument ||
              (code == Code::kResourceExhausted && input.size() > kMaxProvisioningPayload),
          "decoder failed with an undocumented code");
    Check(!first.error().message().empty(), "decoder error without a message");
    return;
  }
  Check(input.size() <= kMaxProvisioningPayload, "decoder accepted an oversize payload");
  auto encoded = Encode(*first);
  Check(encoded.has_value(), "a decoded message does not encode");
  Check(encoded->size() <= kMaxProvisioningPayload, "encoder exceeded the payload limit");
  auto second = decode(*encoded);
  Check(second.has_value(), "the encoding of a decoded message does not decode");
  Check(*second == *first, "decode(encode(decode(x))) != decode(x)");
  auto again = Encode(*second);
  Check(again.has_value() && *again == *encoded, "encoding is not a fixed point");
}

void CheckTopics(std::string_view input) {
  auto parsed = ParseRequestTopic(input);
  if (parsed) {
    auto rebuilt = RequestTopic(*parsed);
    Check(rebuilt.has_value() && *rebuilt == input, "RequestTopic(ParseRequestTopic(t)) != t");
    for (Reply reply : {Reply::kAccepted, Reply::kRejected}) {
      auto reply_topic = ReplyTopic(*parsed, reply);
      Check(reply_topic.has_value(), "a parsed request has no reply topic");
      Check(!ParseRequestTopic(*reply_topic).has_value(), "a reply topic parses as a request");
    }
  } else {
    Check(parsed.error().code() == Code::kInvalidArgument, "ParseRequestTopic failed with another code");
  }

  // The input as a client id and as a template name: accepted ones build topics that
  // parse back to the same fields.
  if (ValidateClientId(input).ok()) {
    ProvisioningTopic topic{Dialect::kCertfleet, Operation::kRegisterThing, std::string(input), "t", "claim-1"};
    auto built = RequestTopic(topic);
    Check(built.has_value(), "a valid client id does not build a topic");
    auto back = ParseRequestTopic(*built);
    Check(back.has_value() && *back == topic, "client id does not round-trip through a topic");
  }
  if (ValidateClaimSubject(input).ok()) {
    ProvisioningTopic topic{Dialect::kCertfleet, Operation::kCreateCertificateFromCsr, "c", "", std::string(input)};
    auto built = RequestTopic(topic);
    Check(built.has_value(), "a valid claim subject does not build a topic");
    auto back = ParseRequestTopic(*built);
    Check(back.has_value() && *back == topic, "claim subject does not round-trip through a topic");
  }
  if (ValidateTemplateName(input).ok()) {
    for (Dialect dialect : {Dialect::kAws, Dialect::kCertfleet}) {
      ProvisioningTopic topic{dialect, Operation::kRegisterThing, dialect == Dialect::kAws ? "" : "c",
                              std::string(input), dialect == Dialect::kAws ? "" : "claim-1"};
      auto built = RequestTopic(topic);
      Check(built.has_value(), "a valid template name does not build a topic");
      auto back = ParseRequestTopic(*built);
      Check(back.has_value() && *back == topic, "template name does not round-trip through a topic");
    }
  }

  auto thing = ParseThingTopic(input);
  if (thing) {
    auto rebuilt = ThingTopic(thing->thing_name, thing->suffix);
    Check(rebuilt.has_value() && *rebuilt == input, "ThingTopic(ParseThingTopic(t)) != t");
  } else {
    Check(thing.error().code() == Code::kInvalidArgument, "ParseThingTopic failed with another code");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);

  CheckCodec(&DecodeCreateKeysAndCertificateRequest, input);
  CheckCodec(&DecodeCreateKeysAndCertificateAccepted, input);
  CheckCodec(&DecodeCreateCertificateFromCsrRequest, input);
  CheckCodec(&DecodeCreateCertificateFromCsrAccepted, input);
  CheckCodec(&DecodeRegisterThingRequest, input);
  CheckCodec(&DecodeRegisterThingAccepted, input);
  CheckCodec(&DecodeRejection, input);

  CheckTopics(input);

  // Any text makes an encodable rejection message.
  Rejection rejection = MakeRejection(kInvalidPayload, input);
  auto encoded = Encode(rejection);
  Check(encoded.has_value(), "MakeRejection built a rejection that does not encode");
  auto decoded = DecodeRejection(*encoded);
  Check(decoded.has_value() && *decoded == rejection, "MakeRejection output does not round-trip");
  return 0;
}
