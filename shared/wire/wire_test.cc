#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"

namespace certfleet::shared {
namespace {

using namespace std::string_literals;  // NOLINT(google-build-using-namespace): "...\0..."s literals

// A decoder reduced to "did it accept, and if not, with which status".
using AnyDecoder = std::function<Status(std::string_view)>;

template <class T>
AnyDecoder Erase(Result<T> (*decode)(std::string_view)) {
  return [decode](std::string_view payload) -> Status {
    auto result = decode(payload);
    return result ? Status::Ok() : result.error();
  };
}

std::vector<std::pair<std::string, AnyDecoder>> AllDecoders() {
  return {
      {"CreateKeysAndCertificateRequest", Erase(&DecodeCreateKeysAndCertificateRequest)},
      {"CreateKeysAndCertificateAccepted", Erase(&DecodeCreateKeysAndCertificateAccepted)},
      {"CreateCertificateFromCsrRequest", Erase(&DecodeCreateCertificateFromCsrRequest)},
      {"CreateCertificateFromCsrAccepted", Erase(&DecodeCreateCertificateFromCsrAccepted)},
      {"RegisterThingRequest", Erase(&DecodeRegisterThingRequest)},
      {"RegisterThingAccepted", Erase(&DecodeRegisterThingAccepted)},
      {"Rejection", Erase(&DecodeRejection)},
  };
}

const std::string kCertId = "3b8f2e1a9c4d7f6e5a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

const std::string kCsrPem =
    "-----BEGIN CERTIFICATE REQUEST-----\n"
    "MIHbMIGDAgEAMCExHzAdBgNVBAMMFmd3LTAwMDEyMy5leGFtcGxlLmNvbTBZMBMG\n"
    "-----END CERTIFICATE REQUEST-----\n";

// The payload with `needle` replaced by `replacement` (exactly one occurrence expected).
std::string Replace(std::string payload, std::string_view needle, std::string_view replacement) {
  size_t pos = payload.find(needle);
  EXPECT_NE(pos, std::string::npos) << needle;
  if (pos != std::string::npos) payload.replace(pos, needle.size(), replacement);
  return payload;
}

// Expects kInvalidArgument with a message mentioning `field`.
template <class T>
void ExpectInvalid(const Result<T>& result, std::string_view field) {
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code(), Code::kInvalidArgument) << result.error().ToString();
  EXPECT_NE(result.error().message().find(field), std::string::npos)
      << "message does not name " << field << ": " << result.error().ToString();
}

// ---- Payloads as the AWS IoT developer guide shows them (pretty-printed, with the
// field order AWS uses) ----

TEST(ProvisioningWireTest, DecodesAwsExamplePayloads) {
  auto csr_request = DecodeCreateCertificateFromCsrRequest(R"({
    "certificateSigningRequest": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
})");
  ASSERT_TRUE(csr_request.has_value()) << csr_request.error().ToString();
  EXPECT_EQ(csr_request->certificate_signing_request,
            "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n");

  auto csr_accepted = DecodeCreateCertificateFromCsrAccepted(R"({
    "certificateOwnershipToken": "AQoOb3duZXJzaGlwVG9rZW4SFAoSCg4=",
    "certificateId": ")" + kCertId + R"(",
    "certificatePem": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
})");
  ASSERT_TRUE(csr_accepted.has_value()) << csr_accepted.error().ToString();
  EXPECT_EQ(csr_accepted->certificate_id, kCertId);
  EXPECT_EQ(csr_accepted->certificate_pem, "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n");
  EXPECT_EQ(csr_accepted->certificate_ownership_token, "AQoOb3duZXJzaGlwVG9rZW4SFAoSCg4=");

  auto keys_accepted = DecodeCreateKeysAndCertificateAccepted(R"({
    "certificateId": ")" + kCertId + R"(",
    "certificatePem": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
    "privateKey": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
    "certificateOwnershipToken": "token"
})");
  ASSERT_TRUE(keys_accepted.has_value()) << keys_accepted.error().ToString();
  EXPECT_EQ(keys_accepted->private_key, "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n");
  EXPECT_EQ(keys_accepted->certificate_ownership_token, "token");

  auto register_request = DecodeRegisterThingRequest(R"({
    "certificateOwnershipToken": "token",
    "parameters": {
        "SerialNumber": "GW-000123",
        "DeviceLocation": "Seattle"
    }
})");
  ASSERT_TRUE(register_request.has_value()) << register_request.error().ToString();
  EXPECT_EQ(register_request->certificate_ownership_token, "token");
  EXPECT_EQ(register_request->parameters, (StringMap{{"DeviceLocation", "Seattle"}, {"SerialNumber", "GW-000123"}}));

  auto register_accepted = DecodeRegisterThingAccepted(R"({
    "deviceConfiguration": {
        "Fallback": "false",
        "FallbackURL": "https://example.com/fallback"
    },
    "thingName": "GW-000123"
})");
  ASSERT_TRUE(register_accepted.has_value()) << register_accepted.error().ToString();
  EXPECT_EQ(register_accepted->thing_name, "GW-000123");
  EXPECT_EQ(register_accepted->device_configuration.at("FallbackURL"), "https://example.com/fallback");

  auto rejection = DecodeRejection(R"({
    "statusCode": 400,
    "errorCode": "InvalidCertificateOwnershipToken",
    "errorMessage": "Certificate ownership token cannot be empty."
})");
  ASSERT_TRUE(rejection.has_value()) << rejection.error().ToString();
  EXPECT_EQ(rejection->status_code, 400);
  EXPECT_EQ(rejection->error_code, "InvalidCertificateOwnershipToken");
  EXPECT_EQ(rejection->error_message, "Certificate ownership token cannot be empty.");
  EXPECT_TRUE(IsPermanentRejection(*rejection));
}

TEST(ProvisioningWireTest, CreateKeysRequestAcceptsEmptyPayloadAndAnyObject) {
  for (const std::string& payload : std::vector<std::string>{""s, " \r\n\t"s, "{}"s, " { } "s, R"({"clientToken":"x","n":[1,2]})"s}) {
    SCOPED_TRACE(payload);
    EXPECT_TRUE(DecodeCreateKeysAndCertificateRequest(payload).has_value());
  }
  for (const std::string& payload : std::vector<std::string>{"[]"s, "null"s, "0"s, R"("{}")"s, "{"s, "{}{}"s, "x"s, "\0"s}) {
    SCOPED_TRACE(payload);
    auto result = DecodeCreateKeysAndCertificateRequest(payload);
    ASSERT_FALSE(result.has_value());
    EXPECT_EQ(result.error().code(), Code::kInvalidArgument);
  }
  EXPECT_EQ(Encode(CreateKeysAndCertificateRequest{}).value(), "{}");
}

// ---- Round trips ----

template <class T>
void ExpectRoundTrip(const T& message, Result<T> (*decode)(std::string_view)) {
  auto encoded = Encode(message);
  ASSERT_TRUE(encoded.has_value()) << encoded.error().ToString();
  auto decoded = decode(*encoded);
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString() << " for " << *encoded;
  EXPECT_TRUE(*decoded == message) << *encoded;
  auto again = Encode(*decoded);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*again, *encoded);
}

TEST(ProvisioningWireTest, EveryMessageRoundTrips) {
  ExpectRoundTrip(CreateKeysAndCertificateRequest{}, &DecodeCreateKeysAndCertificateRequest);
  ExpectRoundTrip(CreateKeysAndCertificateAccepted{kCertId, "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
                                                   "-----BEGIN PRIVATE KEY-----\nB\n-----END PRIVATE KEY-----\n", "tok"},
                  &DecodeCreateKeysAndCertificateAccepted);
  ExpectRoundTrip(CreateCertificateFromCsrRequest{kCsrPem}, &DecodeCreateCertificateFromCsrRequest);
  ExpectRoundTrip(CreateCertificateFromCsrAccepted{kCertId, "pem", "tok"}, &DecodeCreateCertificateFromCsrAccepted);
  ExpectRoundTrip(RegisterThingRequest{"tok", {}}, &DecodeRegisterThingRequest);
  ExpectRoundTrip(RegisterThingRequest{"tok", {{"SerialNumber", "GW-1"}, {"AWS::IoT::Certificate::Id", kCertId},
                                               {"empty", ""}, {"quote\"and\\slash", "line\nbreak\ttab\x01"}}},
                  &DecodeRegisterThingRequest);
  ExpectRoundTrip(RegisterThingAccepted{"GW-1", {}}, &DecodeRegisterThingAccepted);
  ExpectRoundTrip(RegisterThingAccepted{"arn:gw_1-x", {{"mqttHost", "mqtt.example"}, {"rotationDays", "90"}}},
                  &DecodeRegisterThingAccepted);
  ExpectRoundTrip(Rejection{400, "InvalidCsr", "signature does not verify"}, &DecodeRejection);
  ExpectRoundTrip(Rejection{503, "ServiceUnavailable", ""}, &DecodeRejection);
  // Non-ASCII text survives (as UTF-8, not re-escaped).
  ExpectRoundTrip(RegisterThingRequest{"tok", {{"Standort", "Köln \xF0\x9F\x9A\x80"}}}, &DecodeRegisterThingRequest);
}

TEST(ProvisioningWireTest, EncodesCompactJsonWithSortedKeys) {
  EXPECT_EQ(Encode(RegisterThingRequest{"tok", {{"b", "2"}, {"a", "1"}}}).value(),
            R"({"certificateOwnershipToken":"tok","parameters":{"a":"1","b":"2"}})");
  EXPECT_EQ(Encode(RegisterThingAccepted{"GW-1", {}}).value(), R"({"deviceConfiguration":{},"thingName":"GW-1"})");
  EXPECT_EQ(Encode(Rejection{429, "Throttled", "slow \"down\"\n"}).value(),
            R"({"errorCode":"Throttled","errorMessage":"slow \"down\"\n","statusCode":429})");
  EXPECT_EQ(Encode(CreateCertificateFromCsrRequest{"a\nb"}).value(), R"({"certificateSigningRequest":"a\nb"})");
  EXPECT_EQ(Encode(CreateCertificateFromCsrAccepted{kCertId, "p", "t"}).value(),
            R"({"certificateId":")" + kCertId + R"(","certificateOwnershipToken":"t","certificatePem":"p"})");
}

TEST(ProvisioningWireTest, DecodesEscapesAndUnicode) {
  auto decoded = DecodeRegisterThingRequest(
      R"({"certificateOwnershipToken":"t\/o\u006b","parameters":{"caf\u00e9":"\ud83d\ude80","k":"a\"b"}})");
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->certificate_ownership_token, "t/ok");
  EXPECT_EQ(decoded->parameters.at("caf\xC3\xA9"), "\xF0\x9F\x9A\x80");
  EXPECT_EQ(decoded->parameters.at("k"), "a\"b");
}

TEST(ProvisioningWireTest, IgnoresUnknownFieldsAndTreatsNullOptionalsAsAbsent) {
  auto request = DecodeRegisterThingRequest(
      R"({"certificateOwnershipToken":"t","parameters":null,"clientToken":"c","extra":{"deep":[1,2,{"x":null}]}})");
  ASSERT_TRUE(request.has_value()) << request.error().ToString();
  EXPECT_TRUE(request->parameters.empty());

  auto accepted = DecodeRegisterThingAccepted(R"({"thingName":"t"})");
  ASSERT_TRUE(accepted.has_value()) << accepted.error().ToString();
  EXPECT_TRUE(accepted->device_configuration.empty());

  auto rejection = DecodeRejection(R"({"statusCode":500,"errorCode":"InternalFailure","errorMessage":null})");
  ASSERT_TRUE(rejection.has_value()) << rejection.error().ToString();
  EXPECT_EQ(rejection->error_message, "");
  rejection = DecodeRejection(R"({"statusCode":500,"errorCode":"InternalFailure"})");
  ASSERT_TRUE(rejection.has_value()) << rejection.error().ToString();
}

TEST(ProvisioningWireTest, DuplicateKeysLastOneWins) {
  auto decoded = DecodeCreateCertificateFromCsrRequest(
      R"({"certificateSigningRequest":"first","certificateSigningRequest":"second"})");
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->certificate_signing_request, "second");
}

// ---- Malformed input, one class at a time, for every decoder ----

TEST(ProvisioningWireTest, EveryDecoderRejectsWhatIsNotJson) {
  const std::vector<std::string> payloads = {
      "not json",
      "{",
      "{\"a\":}",
      "{'a':'b'}",               // single quotes
      "{\"a\":\"b\",}",          // trailing comma
      "{} {}",                   // two values
      "{}x",                     // trailing garbage
      "{/* comment */}",         // comments are not JSON
      "{\"a\":\"\x01\"}",        // raw control character in a string
      "{\"a\":\"\xff\"}",        // ill-formed UTF-8
      "{\"a\":\"\xed\xa0\x80\"}",  // UTF-8-encoded surrogate
      "{\"a\":\"\\ud800\"}",     // lone surrogate escape
      "{\"a\":1e400}",           // number out of double range
      "{\"a\":01}",              // leading zero
      "{\"a\":NaN}",
      "\0{}"s,                   // NUL outside a string
      "{}\0"s,
      "{\"a\":1}\0garbage"s,  // the lexer would stop at the NUL
  };
  for (const auto& [name, decode] : AllDecoders()) {
    for (const std::string& payload : payloads) {
      SCOPED_TRACE(name + ": " + payload);
      Status status = decode(payload);
      EXPECT_EQ(status.code(), Code::kInvalidArgument) << status.ToString();
    }
    if (name != "CreateKeysAndCertificateRequest") {
      EXPECT_EQ(decode("").code(), Code::kInvalidArgument) << name;
      EXPECT_EQ(decode("  \n").code(), Code::kInvalidArgument) << name;
    }
  }
}

TEST(ProvisioningWireTest, EveryDecoderRejectsNonObjects) {
  for (const auto& [name, decode] : AllDecoders()) {
    for (const std::string& payload : std::vector<std::string>{"[]", "[{}]", "null", "true", "42", "-1.5", R"("{}")"}) {
      SCOPED_TRACE(name + ": " + payload);
      Status status = decode(payload);
      EXPECT_EQ(status.code(), Code::kInvalidArgument);
      EXPECT_NE(status.message().find("not a JSON object"), std::string::npos) << status.ToString();
    }
  }
}

TEST(ProvisioningWireTest, EveryDecoderRejectsOversizePayloadsBeforeParsing) {
  for (const auto& [name, decode] : AllDecoders()) {
    SCOPED_TRACE(name);
    // Valid JSON, one byte over: padded with whitespace.
    std::string big = "{}" + std::string(kMaxProvisioningPayload - 1, ' ');
    EXPECT_EQ(decode(big).code(), Code::kResourceExhausted);
    // Not even JSON: the size is checked first.
    EXPECT_EQ(decode(std::string(1 << 20, '[')).code(), Code::kResourceExhausted);
  }
  // Exactly at the limit is fine.
  std::string at_limit = R"({"certificateSigningRequest":"csr"})";
  at_limit += std::string(kMaxProvisioningPayload - at_limit.size(), ' ');
  EXPECT_TRUE(DecodeCreateCertificateFromCsrRequest(at_limit).has_value());
  EXPECT_TRUE(DecodeCreateKeysAndCertificateRequest(std::string(kMaxProvisioningPayload, ' ')).has_value());
}

TEST(ProvisioningWireTest, DeepNestingDoesNotCrash) {
  // ~32000 levels: within the size limit; the parser is not recursive.
  std::string deep = R"({"certificateSigningRequest":"csr","x":)" + std::string(32000, '[') + std::string(32000, ']') + "}";
  ASSERT_LE(deep.size(), kMaxProvisioningPayload);
  EXPECT_TRUE(DecodeCreateCertificateFromCsrRequest(deep).has_value());
  std::string deep_field = R"({"certificateSigningRequest":)" + std::string(32000, '[') + std::string(32000, ']') + "}";
  ExpectInvalid(DecodeCreateCertificateFromCsrRequest(deep_field), "certificateSigningRequest");
  std::string unbalanced = "{\"a\":" + std::string(60000, '[');
  EXPECT_EQ(DecodeRejection(unbalanced).error().code(), Code::kInvalidArgument);
}

TEST(ProvisioningWireTest, RejectsMissingRequiredFields) {
  const std::string keys = R"({"certificateId":")" + kCertId +
                           R"(","certificatePem":"p","privateKey":"k","certificateOwnershipToken":"t"})";
  ASSERT_TRUE(DecodeCreateKeysAndCertificateAccepted(keys).has_value());
  ExpectInvalid(DecodeCreateKeysAndCertificateAccepted(Replace(keys, R"("certificateId":")" + kCertId + R"(",)", "")),
                "certificateId");
  ExpectInvalid(DecodeCreateKeysAndCertificateAccepted(Replace(keys, R"("certificatePem":"p",)", "")),
                "certificatePem");
  ExpectInvalid(DecodeCreateKeysAndCertificateAccepted(Replace(keys, R"("privateKey":"k",)", "")), "privateKey");
  ExpectInvalid(DecodeCreateKeysAndCertificateAccepted(Replace(keys, R"(,"certificateOwnershipToken":"t")", "")),
                "certificateOwnershipToken");

  const std::string from_csr =
      R"({"certificateId":")" + kCertId + R"(","certificatePem":"p","certificateOwnershipToken":"t"})";
  ASSERT_TRUE(DecodeCreateCertificateFromCsrAccepted(from_csr).has_value());
  ExpectInvalid(DecodeCreateCertificateFromCsrAccepted(Replace(from_csr, R"("certificatePem":"p",)", "")),
                "certificatePem");
  ExpectInvalid(DecodeCreateCertificateFromCsrAccepted(Replace(from_csr, R"(,"certificateOwnershipToken":"t")", "")),
                "certificateOwnershipToken");
  ExpectInvalid(DecodeCreateCertificateFromCsrAccepted(Replace(from_csr, R"("certificateId":")" + kCertId + R"(",)", "")),
                "certificateId");

  ExpectInvalid(DecodeCreateCertificateFromCsrRequest("{}"), "certificateSigningRequest");
  ExpectInvalid(DecodeCreateCertificateFromCsrRequest(R"({"csr":"x"})"), "certificateSigningRequest");
  ExpectInvalid(DecodeRegisterThingRequest(R"({"parameters":{}})"), "certificateOwnershipToken");
  ExpectInvalid(DecodeRegisterThingAccepted(R"({"deviceConfiguration":{}})"), "thingName");
  ExpectInvalid(DecodeRejection(R"({"errorCode":"X","errorMessage":"m"})"), "statusCode");
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorMessage":"m"})"), "errorCode");

  auto missing = DecodeRegisterThingRequest("{}");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().message(), "RegisterThing request: certificateOwnershipToken: is missing");
}

TEST(ProvisioningWireTest, RejectsEmptyRequiredStrings) {
  ExpectInvalid(DecodeCreateCertificateFromCsrRequest(R"({"certificateSigningRequest":""})"),
                "certificateSigningRequest");
  ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":""})"), "certificateOwnershipToken");
  ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":""})"), "thingName");
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":""})"), "errorCode");
}

TEST(ProvisioningWireTest, RejectsWrongTypesNamingTheField) {
  for (const std::string& value : std::vector<std::string>{"42", "null", "true", "[]", R"(["csr"])", "{}", R"({"pem":"x"})", "1.5"}) {
    SCOPED_TRACE(value);
    ExpectInvalid(DecodeCreateCertificateFromCsrRequest(R"({"certificateSigningRequest":)" + value + "}"),
                  "certificateSigningRequest");
    ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":)" + value + "}"),
                  "certificateOwnershipToken");
    ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":)" + value + "}"), "thingName");
    ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":)" + value + "}"), "errorCode");
  }
  // A map where a map is expected.
  for (const std::string& value : std::vector<std::string>{R"("a=b")", "[]", R"([["a","b"]])", "1", "true"}) {
    SCOPED_TRACE(value);
    ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":)" + value + "}"),
                  "parameters");
    ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":"t","deviceConfiguration":)" + value + "}"),
                  "deviceConfiguration");
  }
  // Map values must be strings: no nested objects, arrays, numbers, booleans, null.
  for (const std::string& value : std::vector<std::string>{R"({"b":"c"})", "{}", R"(["x"])", "7", "false", "null"}) {
    SCOPED_TRACE(value);
    ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":{"Serial":)" + value +
                                             "}}"),
                  R"(parameters["Serial"])");
    ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":"t","deviceConfiguration":{"k":)" + value + "}}"),
                  R"(deviceConfiguration["k"])");
  }
  // Optional string: null is absent, other types are errors.
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":"X","errorMessage":5})"), "errorMessage");
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":"X","errorMessage":{"m":"x"}})"), "errorMessage");
  // Field names are case-sensitive.
  ExpectInvalid(DecodeRegisterThingRequest(R"({"CertificateOwnershipToken":"t"})"), "certificateOwnershipToken");
}

TEST(ProvisioningWireTest, RejectionStatusCodeMustBeAnErrorStatusInteger) {
  auto with_status = [](std::string status) {
    return DecodeRejection(R"({"statusCode":)" + status + R"(,"errorCode":"X","errorMessage":"m"})");
  };
  for (const std::string& ok : std::vector<std::string>{"400", "404", "429", "500", "599"}) {
    auto decoded = with_status(ok);
    ASSERT_TRUE(decoded.has_value()) << ok << ": " << decoded.error().ToString();
    EXPECT_EQ(decoded->status_code, std::stoi(ok));
  }
  for (const std::string& bad : std::vector<std::string>{"0", "-0", "-400", "200", "399", "600", "4294967696", "4294967295", "2147483648",
                          "-2147483648", "9223372036854775807", "-9223372036854775808", "18446744073709551615",
                          "99999999999999999999999999", "400.0", "4e2", "1e308", "\"400\"", "null", "true", "[400]",
                          "{\"code\":400}"}) {
    SCOPED_TRACE(bad);
    ExpectInvalid(with_status(bad), "statusCode");
  }
}

TEST(ProvisioningWireTest, ChecksCertificateIds) {
  auto with_id = [](const std::string& id) {
    return DecodeCreateCertificateFromCsrAccepted(R"({"certificateId":")" + id +
                                                  R"(","certificatePem":"p","certificateOwnershipToken":"t"})");
  };
  EXPECT_TRUE(with_id(kCertId).has_value());
  std::string upper = kCertId;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(with_id(upper).value().certificate_id, upper);
  ExpectInvalid(with_id(kCertId.substr(1)), "certificateId");
  ExpectInvalid(with_id(kCertId + "0"), "certificateId");
  ExpectInvalid(with_id("g" + kCertId.substr(1)), "certificateId");
  ExpectInvalid(with_id(""), "certificateId");
  ExpectInvalid(with_id("../../etc/passwd"), "certificateId");
}

TEST(ProvisioningWireTest, RejectsNulInEveryString) {
  ExpectInvalid(DecodeCreateCertificateFromCsrRequest(R"({"certificateSigningRequest":"-----BEGIN\u0000"})"),
                "certificateSigningRequest");
  ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t\u0000t"})"), "certificateOwnershipToken");
  ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":{"k\u0000":"v"}})"),
                "parameters");
  ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":{"k":"v\u0000"}})"),
                R"(parameters["k"])");
  ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":"t","deviceConfiguration":{"k":"\u0000"}})"),
                R"(deviceConfiguration["k"])");
  ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":"t\u0000"})"), "thingName");
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":"X\u0000"})"), "errorCode");
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":"X","errorMessage":"\u0000"})"), "errorMessage");
  const std::string keys = R"({"certificateId":")" + kCertId +
                           R"(","certificatePem":"p","privateKey":"k\u0000","certificateOwnershipToken":"t"})";
  ExpectInvalid(DecodeCreateKeysAndCertificateAccepted(keys), "privateKey");
  ExpectInvalid(DecodeCreateCertificateFromCsrAccepted(
                    R"({"certificateId":")" + kCertId + R"(","certificatePem":"\u0000","certificateOwnershipToken":"t"})"),
                "certificatePem");
}

TEST(ProvisioningWireTest, EnforcesStringLimits) {
  auto token = [](size_t n) {
    return DecodeRegisterThingRequest(R"({"certificateOwnershipToken":")" + std::string(n, 'a') + R"("})");
  };
  EXPECT_TRUE(token(kMaxOwnershipTokenLength).has_value());
  ExpectInvalid(token(kMaxOwnershipTokenLength + 1), "certificateOwnershipToken");

  auto csr = [](size_t n) {
    return DecodeCreateCertificateFromCsrRequest(R"({"certificateSigningRequest":")" + std::string(n, 'a') + R"("})");
  };
  EXPECT_TRUE(csr(kMaxPemFieldLength).has_value());
  ExpectInvalid(csr(kMaxPemFieldLength + 1), "certificateSigningRequest");

  auto message = [](size_t n) {
    return DecodeRejection(R"({"statusCode":400,"errorCode":"X","errorMessage":")" + std::string(n, 'm') + R"("})");
  };
  EXPECT_TRUE(message(kMaxErrorMessageLength).has_value());
  ExpectInvalid(message(kMaxErrorMessageLength + 1), "errorMessage");
  ExpectInvalid(DecodeRejection(R"({"statusCode":400,"errorCode":")" + std::string(kMaxErrorCodeLength + 1, 'E') +
                                R"("})"),
                "errorCode");

  // Limits count bytes of UTF-8, not characters: 513 two-byte characters are 1026 bytes.
  std::string two_byte;
  for (int i = 0; i < 513; ++i) two_byte += "\xC3\xA9";
  ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":{"k":")" + two_byte +
                                           R"("}})"),
                R"(parameters["k"])");
}

TEST(ProvisioningWireTest, EnforcesMapLimits) {
  auto params = [](size_t entries, size_t key_len, size_t value_len) {
    std::string payload = R"({"certificateOwnershipToken":"t","parameters":{)";
    for (size_t i = 0; i < entries; ++i) {
      if (i > 0) payload += ',';
      std::string key = std::to_string(i);
      key.resize(std::max(key_len, key.size()), 'k');
      payload += "\"" + key + "\":\"" + std::string(value_len, 'v') + "\"";
    }
    payload += "}}";
    return DecodeRegisterThingRequest(payload);
  };
  EXPECT_TRUE(params(kMaxMapEntries, 8, 16).has_value());
  ExpectInvalid(params(kMaxMapEntries + 1, 8, 16), "more than 64");
  ExpectInvalid(params(1000, 1, 0), "parameters");
  EXPECT_TRUE(params(1, kMaxMapKeyLength, kMaxMapValueLength).has_value());
  ExpectInvalid(params(1, kMaxMapKeyLength + 1, 1), "parameters");
  ExpectInvalid(params(1, 1, kMaxMapValueLength + 1), "parameters");
  ExpectInvalid(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":{"":"v"}})"),
                "empty key");
  EXPECT_TRUE(DecodeRegisterThingRequest(R"({"certificateOwnershipToken":"t","parameters":{"k":""}})").has_value());

  std::string config = R"({"thingName":"t","deviceConfiguration":{)";
  for (size_t i = 0; i <= kMaxMapEntries; ++i) config += (i ? ",\"" : "\"") + std::to_string(i) + "\":\"v\"";
  config += "}}";
  ExpectInvalid(DecodeRegisterThingAccepted(config), "deviceConfiguration");
}

TEST(ProvisioningWireTest, ThingNameMustBeTopicSafe) {
  // '.' too: the registry's thing names may hold it.
  for (const std::string& name : std::vector<std::string>{"GW-1", "a", "arn:aws:iot:thing_1", "a.b", std::string(128, 'x')}) {
    EXPECT_TRUE(DecodeRegisterThingAccepted(R"({"thingName":")" + name + R"("})").has_value()) << name;
  }
  for (const std::string& name : std::vector<std::string>{"a/b", "a+b", "#", "has space", "caf\\u00e9", std::string(129, 'x')}) {
    SCOPED_TRACE(name);
    ExpectInvalid(DecodeRegisterThingAccepted(R"({"thingName":")" + name + R"("})"), "thingName");
  }
}

// ---- Encoders check what decoders check ----

TEST(ProvisioningWireTest, EncodersRejectWhatDecodersWouldReject) {
  ExpectInvalid(Encode(CreateCertificateFromCsrRequest{""}), "certificateSigningRequest");
  ExpectInvalid(Encode(CreateCertificateFromCsrRequest{"a\0b"s}), "certificateSigningRequest");
  ExpectInvalid(Encode(CreateCertificateFromCsrRequest{"\xff"}), "certificateSigningRequest");
  ExpectInvalid(Encode(CreateCertificateFromCsrAccepted{"abc", "p", "t"}), "certificateId");
  ExpectInvalid(Encode(CreateKeysAndCertificateAccepted{kCertId, "p", "", "t"}), "privateKey");
  ExpectInvalid(Encode(RegisterThingRequest{"", {}}), "certificateOwnershipToken");
  ExpectInvalid(Encode(RegisterThingRequest{"t", {{"k", "\xc0\x80"}}}), R"(parameters["k"])");  // overlong NUL
  ExpectInvalid(Encode(RegisterThingRequest{"t", {{"", "v"}}}), "parameters");
  ExpectInvalid(Encode(RegisterThingAccepted{"bad/name", {}}), "thingName");
  ExpectInvalid(Encode(Rejection{200, "X", ""}), "statusCode");
  ExpectInvalid(Encode(Rejection{400, "", ""}), "errorCode");
  ExpectInvalid(Encode(Rejection{400, "X", std::string(kMaxErrorMessageLength + 1, 'm')}), "errorMessage");

  StringMap too_many;
  for (size_t i = 0; i <= kMaxMapEntries; ++i) too_many[std::to_string(i)] = "v";
  ExpectInvalid(Encode(RegisterThingAccepted{"t", too_many}), "deviceConfiguration");

  // Every entry within its limit, the whole over the payload limit.
  StringMap big;
  for (size_t i = 0; i < kMaxMapEntries; ++i) big[std::to_string(i)] = std::string(kMaxMapValueLength, 'v');
  auto encoded = Encode(RegisterThingRequest{"t", big});
  ASSERT_FALSE(encoded.has_value());
  EXPECT_EQ(encoded.error().code(), Code::kResourceExhausted);
}

// ---- Rejection codes ----

TEST(RejectionWireTest, KnownCodesAreUniqueAndClassified) {
  std::set<std::string_view> names;
  for (const RejectionCode& code : KnownRejectionCodes()) {
    SCOPED_TRACE(code.error_code);
    EXPECT_TRUE(names.insert(code.error_code).second);
    Rejection rejection = MakeRejection(code, "m");
    EXPECT_EQ(rejection.status_code, code.status_code);
    EXPECT_EQ(rejection.error_code, code.error_code);
    auto encoded = Encode(rejection);
    ASSERT_TRUE(encoded.has_value()) << encoded.error().ToString();
    bool retry = code.status_code == 429 || code.status_code >= 500;
    EXPECT_EQ(IsPermanentRejection(rejection), !retry);
    EXPECT_EQ(IsRetryable(RejectionToStatus(rejection).code()), retry);
  }
  EXPECT_EQ(KnownRejectionCodes().size(), 11u);
  EXPECT_EQ(kInvalidCertificateOwnershipToken.error_code, "InvalidCertificateOwnershipToken");
  EXPECT_EQ(kInvalidCertificateOwnershipToken.status_code, 400);
  EXPECT_EQ(kNotAllowed.error_code, "CreateKeysAndCertificateNotAllowed");
  EXPECT_EQ(kNotAllowed.status_code, 403);
  EXPECT_EQ(kAccessDenied.status_code, 403);
  EXPECT_EQ(kThingAlreadyProvisioned.status_code, 409);
  EXPECT_EQ(kTemplateNotFound.status_code, 404);
  EXPECT_EQ(kThrottled.status_code, 429);
  EXPECT_EQ(kServiceUnavailable.status_code, 503);
}

TEST(RejectionWireTest, UnknownCodesAreClassifiedByStatus) {
  EXPECT_TRUE(IsPermanentRejection(Rejection{400, "SomethingNew", ""}));
  EXPECT_TRUE(IsPermanentRejection(Rejection{401, "Unauthorized", ""}));
  EXPECT_TRUE(IsPermanentRejection(Rejection{499, "X", ""}));
  EXPECT_FALSE(IsPermanentRejection(Rejection{429, "TooManyRequests", ""}));
  EXPECT_FALSE(IsPermanentRejection(Rejection{500, "X", ""}));
  EXPECT_FALSE(IsPermanentRejection(Rejection{599, "X", ""}));
}

TEST(RejectionWireTest, ConvertsToStatus) {
  Status status = RejectionToStatus(MakeRejection(kAccessDenied, "hook denied"));
  EXPECT_EQ(status.code(), Code::kPermissionDenied);
  EXPECT_EQ(status.message(), "rejected: 403 AccessDenied: hook denied");
  EXPECT_EQ(RejectionToStatus(MakeRejection(kTemplateNotFound, "")).code(), Code::kNotFound);
  EXPECT_EQ(RejectionToStatus(MakeRejection(kTemplateNotFound, "")).message(), "rejected: 404 TemplateNotFound");
  EXPECT_EQ(RejectionToStatus(MakeRejection(kThingAlreadyProvisioned, "")).code(), Code::kAlreadyExists);
  EXPECT_EQ(RejectionToStatus(MakeRejection(kInvalidCsr, "")).code(), Code::kInvalidArgument);
  EXPECT_EQ(RejectionToStatus(Rejection{401, "X", ""}).code(), Code::kUnauthenticated);
  EXPECT_EQ(RejectionToStatus(MakeRejection(kThrottled, "")).code(), Code::kUnavailable);
  EXPECT_EQ(RejectionToStatus(MakeRejection(kInternalFailure, "")).code(), Code::kUnavailable);
}

TEST(RejectionWireTest, MakeRejectionAlwaysEncodes) {
  Rejection long_message = MakeRejection(kInvalidPayload, std::string(100000, 'x'));
  EXPECT_EQ(long_message.error_message.size(), kMaxErrorMessageLength);
  EXPECT_TRUE(Encode(long_message).has_value());

  Rejection dirty = MakeRejection(kInvalidPayload, "a\0b\xff" "c\xC3"s);
  EXPECT_EQ(dirty.error_message, "a?b?c?");
  EXPECT_TRUE(Encode(dirty).has_value());

  // Cut at a character boundary: 4095 ASCII bytes, then a 2-byte character that does not fit.
  std::string boundary(kMaxErrorMessageLength - 1, 'x');
  boundary += "\xC3\xA9";
  Rejection cut = MakeRejection(kInvalidPayload, boundary);
  EXPECT_EQ(cut.error_message, std::string(kMaxErrorMessageLength - 1, 'x'));
  auto encoded = Encode(cut);
  ASSERT_TRUE(encoded.has_value());
  EXPECT_TRUE(DecodeRejection(*encoded).has_value());
}

// ---- Topics ----

TEST(TopicTest, DialectNamesParse) {
  for (Dialect d : {Dialect::kAws, Dialect::kCertfleet}) EXPECT_EQ(ParseDialect(DialectName(d)).value(), d);
  EXPECT_EQ(DialectName(Dialect::kAws), "aws");
  EXPECT_EQ(DialectName(Dialect::kCertfleet), "certfleet");
  for (const std::string& bad : std::vector<std::string>{"", "AWS", "Certfleet", "aws ", "mqtt"}) {
    auto parsed = ParseDialect(bad);
    ASSERT_FALSE(parsed.has_value()) << bad;
    EXPECT_EQ(parsed.error().code(), Code::kInvalidArgument);
  }
  EXPECT_EQ(OperationName(Operation::kCreateKeysAndCertificate), "CreateKeysAndCertificate");
  EXPECT_EQ(OperationName(Operation::kCreateCertificateFromCsr), "CreateCertificateFromCsr");
  EXPECT_EQ(OperationName(Operation::kRegisterThing), "RegisterThing");
}

TEST(TopicTest, BuildsAwsTopics) {
  ProvisioningTopic t{Dialect::kAws, Operation::kCreateKeysAndCertificate, "", "", ""};
  EXPECT_EQ(RequestTopic(t).value(), "$aws/certificates/create/json");
  EXPECT_EQ(ReplyTopic(t, Reply::kAccepted).value(), "$aws/certificates/create/json/accepted");
  EXPECT_EQ(ReplyTopic(t, Reply::kRejected).value(), "$aws/certificates/create/json/rejected");

  t.operation = Operation::kCreateCertificateFromCsr;
  EXPECT_EQ(RequestTopic(t).value(), "$aws/certificates/create-from-csr/json");
  EXPECT_EQ(ReplyTopic(t, Reply::kAccepted).value(), "$aws/certificates/create-from-csr/json/accepted");
  EXPECT_EQ(ReplyTopic(t, Reply::kRejected).value(), "$aws/certificates/create-from-csr/json/rejected");

  t.operation = Operation::kRegisterThing;
  t.template_name = "GatewayTemplate_v2";
  EXPECT_EQ(RequestTopic(t).value(), "$aws/provisioning-templates/GatewayTemplate_v2/provision/json");
  EXPECT_EQ(ReplyTopic(t, Reply::kAccepted).value(),
            "$aws/provisioning-templates/GatewayTemplate_v2/provision/json/accepted");
  EXPECT_EQ(ReplyTopic(t, Reply::kRejected).value(),
            "$aws/provisioning-templates/GatewayTemplate_v2/provision/json/rejected");

  // The aws dialect does not use the client id: even an invalid one is ignored.
  t.client_id = "bad/+#";
  EXPECT_EQ(RequestTopic(t).value(), "$aws/provisioning-templates/GatewayTemplate_v2/provision/json");
}

TEST(TopicTest, BuildsCertfleetTopics) {
  ProvisioningTopic t{Dialect::kCertfleet, Operation::kCreateKeysAndCertificate, "claim-GW-0001", "", "batch-7"};
  EXPECT_EQ(RequestTopic(t).value(), "certfleet/provisioning/batch-7/claim-GW-0001/certificates/create/json");
  EXPECT_EQ(ReplyTopic(t, Reply::kAccepted).value(),
            "certfleet/provisioning/batch-7/claim-GW-0001/certificates/create/json/accepted");
  EXPECT_EQ(ReplyTopic(t, Reply::kRejected).value(),
            "certfleet/provisioning/batch-7/claim-GW-0001/certificates/create/json/rejected");

  t.operation = Operation::kCreateCertificateFromCsr;
  t.template_name = "ignored here";  // only RegisterThing uses the template
  EXPECT_EQ(RequestTopic(t).value(), "certfleet/provisioning/batch-7/claim-GW-0001/certificates/create-from-csr/json");
  EXPECT_EQ(ReplyTopic(t, Reply::kRejected).value(),
            "certfleet/provisioning/batch-7/claim-GW-0001/certificates/create-from-csr/json/rejected");

  t.operation = Operation::kRegisterThing;
  t.template_name = "gw";
  EXPECT_EQ(RequestTopic(t).value(), "certfleet/provisioning/batch-7/claim-GW-0001/provisioning-templates/gw/provision/json");
  EXPECT_EQ(ReplyTopic(t, Reply::kAccepted).value(),
            "certfleet/provisioning/batch-7/claim-GW-0001/provisioning-templates/gw/provision/json/accepted");
}

TEST(TopicTest, RejectsInvalidClientIds) {
  const std::vector<std::string> bad = {"",    "a/b", "/",   "+",   "#",          "a+",
                                        "a#b", "a\0b"s, "\xff", "\xC3", std::string(129, 'c')};
  for (const std::string& id : bad) {
    SCOPED_TRACE(id);
    EXPECT_EQ(ValidateClientId(id).code(), Code::kInvalidArgument);
    ProvisioningTopic t{Dialect::kCertfleet, Operation::kCreateCertificateFromCsr, id, "", "batch-7"};
    ExpectInvalid(RequestTopic(t), "client id");
    ExpectInvalid(ReplyTopic(t, Reply::kAccepted), "client id");
  }
  for (const std::string& id : std::vector<std::string>{"a", "gw.0001", "claim:GW-1", "$weird", "Zähler \xF0\x9F\x9A\x80", std::string(128, 'c')}) {
    EXPECT_TRUE(ValidateClientId(id).ok()) << id;
  }
}

TEST(TopicTest, RejectsInvalidTemplateNames) {
  for (const std::string& name : std::vector<std::string>{"", "a/b", "+", "#", "a.b", "a b", "caf\xC3\xA9", "a\0"s, std::string(37, 't')}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(ValidateTemplateName(name).code(), Code::kInvalidArgument);
    for (Dialect d : {Dialect::kAws, Dialect::kCertfleet}) {
      ExpectInvalid(RequestTopic(ProvisioningTopic{d, Operation::kRegisterThing, "c", name, "batch-7"}), "template name");
    }
  }
  for (const std::string& name : std::vector<std::string>{"a", "Gateway_Template-2", std::string(36, 't')}) {
    EXPECT_TRUE(ValidateTemplateName(name).ok()) << name;
  }
}

TEST(TopicTest, ParsesEveryRequestTopicBack) {
  for (Dialect d : {Dialect::kAws, Dialect::kCertfleet}) {
    for (Operation op :
         {Operation::kCreateKeysAndCertificate, Operation::kCreateCertificateFromCsr, Operation::kRegisterThing}) {
      ProvisioningTopic want{d, op, d == Dialect::kCertfleet ? "client-1" : "",
                             op == Operation::kRegisterThing ? "tmpl" : "",
                             d == Dialect::kCertfleet ? "batch-7" : ""};
      std::string topic = RequestTopic(want).value();
      SCOPED_TRACE(topic);
      auto parsed = ParseRequestTopic(topic);
      ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
      EXPECT_TRUE(*parsed == want);
      EXPECT_EQ(RequestTopic(*parsed).value(), topic);
    }
  }
  ParsedRequestTopic parsed =
      ParseRequestTopic("certfleet/provisioning/batch 7/claim:GW 7/provisioning-templates/T-1/provision/json").value();
  EXPECT_EQ(parsed.dialect, Dialect::kCertfleet);
  EXPECT_EQ(parsed.operation, Operation::kRegisterThing);
  EXPECT_EQ(parsed.client_id, "claim:GW 7");
  EXPECT_EQ(parsed.claim_subject, "batch 7");
  EXPECT_EQ(parsed.template_name, "T-1");
}

TEST(TopicTest, ParseRejectsWhatIsNotARequestTopic) {
  const std::vector<std::string> bad = {
      "",
      "/",
      "$aws",
      "$aws/certificates/create/json/accepted",
      "$aws/certificates/create/json/rejected",
      "$aws/certificates/create/cbor",
      "$aws/certificates/create",
      "$aws/certificates/create/json/",
      "/$aws/certificates/create/json",
      "$AWS/certificates/create/json",
      "$aws/certificates/create-from-csr/json/extra",
      "$aws/provisioning-templates/provision/json",
      "$aws/provisioning-templates/t/provision/cbor",
      "$aws/provisioning-templates/t/x/provision/json",
      "$share/g/$aws/certificates/create/json",
      "certfleet/provisioning/c",
      "certfleet/provisioning/s/c",
      "certfleet/provisioning/s/c/certificates/create/json/accepted",
      "certfleet/provisioning/certificates/create/json",
      "certfleet/provisioning/c/certificates/create/json",
      "certfleet/provisioning/s/c/d/certificates/create/json",
      "certfleet/things/c/certificates/create/json",
      "Certfleet/provisioning/c/certificates/create/json",
      "$share/g/certfleet/provisioning/s/c/certificates/create/json",
      "certfleet/provisioning/s/c/provisioning-templates/t/provision/json/rejected",
      "a/b/c/d/e/f/g/h/i/j/k",
  };
  for (const std::string& topic : bad) {
    SCOPED_TRACE(topic);
    auto parsed = ParseRequestTopic(topic);
    ASSERT_FALSE(parsed.has_value());
    EXPECT_EQ(parsed.error().code(), Code::kInvalidArgument);
  }
}

TEST(TopicTest, ParseValidatesClientIdsAndTemplates) {
  for (const std::string& id : std::vector<std::string>{"", "+", "#", "a+b", "x#", "\xff", "n\0ul"s, std::string(129, 'c')}) {
    SCOPED_TRACE(id);
    ExpectInvalid(ParseRequestTopic("certfleet/provisioning/s/" + id + "/certificates/create/json"), "client id");
    ExpectInvalid(ParseRequestTopic("certfleet/provisioning/s/" + id + "/provisioning-templates/t/provision/json"),
                  "client id");
    ExpectInvalid(ParseRequestTopic("certfleet/provisioning/" + id + "/c/certificates/create/json"), "claim subject");
  }
  for (const std::string& name : std::vector<std::string>{"", "+", "#", "a.b", "a b", std::string(37, 't')}) {
    SCOPED_TRACE(name);
    ExpectInvalid(ParseRequestTopic("$aws/provisioning-templates/" + name + "/provision/json"), "template name");
    ExpectInvalid(ParseRequestTopic("certfleet/provisioning/s/c/provisioning-templates/" + name + "/provision/json"),
                  "template name");
  }
}

// MQTT topic filter matching (no $share prefix), enough to check the subscriptions.
bool FilterMatches(std::string_view filter, std::string_view topic) {
  while (true) {
    size_t fs = filter.find('/');
    size_t ts = topic.find('/');
    std::string_view f = filter.substr(0, fs);
    std::string_view t = topic.substr(0, ts);
    if (f == "#") return true;
    if (f != "+" && f != t) return false;
    if (fs == std::string_view::npos || ts == std::string_view::npos) {
      return fs == std::string_view::npos && ts == std::string_view::npos;
    }
    filter.remove_prefix(fs + 1);
    topic.remove_prefix(ts + 1);
  }
}

TEST(TopicTest, CompanionSubscriptions) {
  EXPECT_EQ(CompanionSubscriptions(Dialect::kCertfleet, "companions").value(),
            (std::vector<std::string>{
                "$share/companions/certfleet/provisioning/+/+/certificates/create/json",
                "$share/companions/certfleet/provisioning/+/+/certificates/create-from-csr/json",
                "$share/companions/certfleet/provisioning/+/+/provisioning-templates/+/provision/json",
            }));
  EXPECT_EQ(CompanionSubscriptions(Dialect::kCertfleet, "").value(),
            (std::vector<std::string>{
                "certfleet/provisioning/+/+/certificates/create/json",
                "certfleet/provisioning/+/+/certificates/create-from-csr/json",
                "certfleet/provisioning/+/+/provisioning-templates/+/provision/json",
            }));
  // mosquitto 2.0.11 delivers nothing to $share/<group>/$aws/...: plain filters, group ignored.
  const std::vector<std::string> aws = {
      "$aws/certificates/create/json",
      "$aws/certificates/create-from-csr/json",
      "$aws/provisioning-templates/+/provision/json",
  };
  EXPECT_EQ(CompanionSubscriptions(Dialect::kAws, "companions").value(), aws);
  EXPECT_EQ(CompanionSubscriptions(Dialect::kAws, "").value(), aws);
  EXPECT_EQ(CompanionSubscriptions(Dialect::kAws, "bad/group").value(), aws);

  for (const std::string& group : std::vector<std::string>{"a/b", "+", "#", "g\0"s, "\xff", std::string(129, 'g')}) {
    SCOPED_TRACE(group);
    ExpectInvalid(CompanionSubscriptions(Dialect::kCertfleet, group), "shared subscription group");
  }
}

TEST(TopicTest, EveryRequestTopicMatchesExactlyOneSubscriptionAndNoReplyDoes) {
  for (Dialect d : {Dialect::kAws, Dialect::kCertfleet}) {
    std::vector<std::string> filters = CompanionSubscriptions(d, "").value();
    for (Operation op :
         {Operation::kCreateKeysAndCertificate, Operation::kCreateCertificateFromCsr, Operation::kRegisterThing}) {
      ProvisioningTopic t{d, op, "client-9", "tmpl", "batch-7"};
      std::string request = RequestTopic(t).value();
      int matches = 0;
      for (const std::string& f : filters) matches += FilterMatches(f, request) ? 1 : 0;
      EXPECT_EQ(matches, 1) << request;
      for (Reply r : {Reply::kAccepted, Reply::kRejected}) {
        std::string reply = ReplyTopic(t, r).value();
        for (const std::string& f : filters) EXPECT_FALSE(FilterMatches(f, reply)) << f << " matches " << reply;
      }
    }
  }
}

TEST(TopicTest, ThingTopics) {
  EXPECT_EQ(ThingTopicPrefix("GW-0001").value(), "certfleet/things/GW-0001/");
  EXPECT_EQ(ThingTopic("GW-0001", "rotation/request").value(), "certfleet/things/GW-0001/rotation/request");
  auto parts = ParseThingTopic("certfleet/things/GW-0001/rotation/ack");
  ASSERT_TRUE(parts.has_value()) << parts.error().ToString();
  EXPECT_EQ(parts->thing_name, "GW-0001");
  EXPECT_EQ(parts->suffix, "rotation/ack");
  EXPECT_EQ(ThingTopic(parts->thing_name, parts->suffix).value(), "certfleet/things/GW-0001/rotation/ack");

  // Every name the registry takes has topics (a thing "gw.0001" must be able to rotate).
  for (const std::string& name : std::vector<std::string>{"gw.0001", "00:1a:2b:3c:4d:5e", "a_b-c", std::string(64, 'g')}) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(IsValidThingName(name));
    EXPECT_TRUE(ValidateThingName(name).ok());
    EXPECT_EQ(ThingTopic(name, "rotation/request").value(), "certfleet/things/" + name + "/rotation/request");
  }
  for (const std::string& name : std::vector<std::string>{"", "certfleet-companion", std::string(65, 'g'), "a b", "a/b"}) {
    EXPECT_FALSE(IsValidThingName(name)) << name;
  }
  for (const std::string& name : std::vector<std::string>{"", "a/b", "+", "#", "a b", std::string(129, 'x')}) {
    SCOPED_TRACE(name);
    ExpectInvalid(ThingTopicPrefix(name), "thing name");
    ExpectInvalid(ThingTopic(name, "x"), "thing name");
  }
  for (const std::string& suffix : std::vector<std::string>{"", "/x", "x/", "a//b", "+", "a/#", "a\0"s, "\xff", std::string(257, 's')}) {
    SCOPED_TRACE(suffix);
    ExpectInvalid(ThingTopic("t", suffix), "suffix");
  }
  for (const std::string& topic : std::vector<std::string>{"certfleet/things/GW-1", "certfleet/things/GW-1/", "certfleet/things//x",
                            "certfleet/thing/GW-1/x", "certfleet/things/a b/x", "certfleet/things/t/a//b"}) {
    SCOPED_TRACE(topic);
    auto parsed = ParseThingTopic(topic);
    ASSERT_FALSE(parsed.has_value());
    EXPECT_EQ(parsed.error().code(), Code::kInvalidArgument);
  }
}

}  // namespace
}  // namespace certfleet::shared
