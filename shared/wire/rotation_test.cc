#include "shared/wire/rotation.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "shared/core/clock.h"
#include "shared/x509/key.h"

namespace certfleet::shared {
namespace {

using namespace std::chrono_literals;
using namespace std::string_literals;  // NOLINT(google-build-using-namespace): "...\0..."s literals

WallTime At(std::string_view text) {
  WallTime t;
  EXPECT_TRUE(ParseRfc3339(text, &t)) << text;
  return t;
}

const std::string kId1(64, 'a');
const std::string kId2(64, 'b');
const std::string kRotation = "0123456789abcdef0123456789abcdef";

RotationRequest Request() {
  return {kRotation, "operator", At("2026-11-23T06:41:52Z"), At("2026-11-30T06:41:52Z")};
}

RotationAck Ack() {
  RotationAck a;
  a.thing_name = "gw-0001";
  a.rotation_id = kRotation;
  a.certificate_id = kId1;
  a.previous_certificate_id = kId2;
  a.signed_at = At("2026-11-23T07:00:00Z");
  a.signature = "\x30\x45\x00\x01"s;
  return a;
}

AgentStatus Status1() {
  AgentStatus s;
  s.thing_name = "gw-0001";
  s.certificate_id = kId1;
  s.not_after = At("2027-02-21T06:41:52Z");
  s.state = "active";
  s.agent_version = "0.4.0";
  s.at = At("2026-11-23T07:00:00Z");
  s.next_renewal = At("2027-01-30T00:00:00Z");
  return s;
}

TEST(Rfc3339, ParsesWhatFormatWrites) {
  WallTime t = FromUnixSeconds(1795416112);
  WallTime back;
  ASSERT_TRUE(ParseRfc3339(FormatRfc3339(t), &back));
  EXPECT_EQ(back, t);
}

TEST(Rfc3339, DatesPastTheClockRangeSaturate) {
  WallTime t;
  ASSERT_TRUE(ParseRfc3339("2999-01-01T00:00:00Z", &t));
  EXPECT_EQ(t, WallTime::max());
  ASSERT_TRUE(ParseRfc3339("9999-12-31T23:59:59Z", &t));
  EXPECT_EQ(t, WallTime::max());
  ASSERT_TRUE(ParseRfc3339("2262-01-01T00:00:00Z", &t));
  EXPECT_LT(t, WallTime::max());
}

TEST(Rfc3339, RejectsEverythingElse) {
  WallTime t;
  for (std::string_view bad : {"", "2026-11-23", "2026-11-23T06:41:52", "2026-11-23T06:41:52+00:00",
                               "2026-11-23t06:41:52Z", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z",
                               "2026-11-23T24:00:00Z", "2026-11-23T06:60:00Z", "2026-11-23T06:41:60Z",
                               "1969-12-31T23:59:59Z", "2026-11-23T06:41:52.5Z", " 2026-11-23T06:41:52Z",
                               "2026-1a-23T06:41:52Z", "+026-11-23T06:41:52Z"}) {
    EXPECT_FALSE(ParseRfc3339(bad, &t)) << bad;
  }
}

TEST(RotationWire, RequestRoundTrip) {
  auto text = EncodeRotationRequest(Request());
  ASSERT_TRUE(text) << text.error().ToString();
  EXPECT_EQ(*text,
            R"({"deadline":"2026-11-30T06:41:52Z","reason":"operator","requestedAt":"2026-11-23T06:41:52Z",)"
            R"("rotationId":"0123456789abcdef0123456789abcdef"})");
  auto back = DecodeRotationRequest(*text);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, Request());
}

TEST(RotationWire, AckRoundTrip) {
  auto text = EncodeRotationAck(Ack());
  ASSERT_TRUE(text) << text.error().ToString();
  auto back = DecodeRotationAck(*text);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, Ack());
  RotationAck self_started = Ack();
  self_started.rotation_id.clear();
  auto text2 = EncodeRotationAck(self_started);
  ASSERT_TRUE(text2);
  EXPECT_EQ(*DecodeRotationAck(*text2), self_started);
}

TEST(RotationWire, StatusRoundTrip) {
  auto text = EncodeAgentStatus(Status1());
  ASSERT_TRUE(text) << text.error().ToString();
  EXPECT_NE(text->find(R"("lastRotation":"")"), std::string::npos);
  auto back = DecodeAgentStatus(*text);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, Status1());
}

TEST(RotationWire, MalformedRequests) {
  const std::vector<std::string> bad = {
      "",
      "[]",
      "{",
      "null",
      R"({"reason":"x","requestedAt":"2026-11-23T06:41:52Z","deadline":"2026-11-30T06:41:52Z"})",
      R"({"rotationId":"0123456789ABCDEF0123456789ABCDEF","reason":"x","requestedAt":"2026-11-23T06:41:52Z","deadline":"2026-11-30T06:41:52Z"})",
      R"({"rotationId":"0123","reason":"x","requestedAt":"2026-11-23T06:41:52Z","deadline":"2026-11-30T06:41:52Z"})",
      R"({"rotationId":"0123456789abcdef0123456789abcdef","reason":"","requestedAt":"2026-11-23T06:41:52Z","deadline":"2026-11-30T06:41:52Z"})",
      R"({"rotationId":"0123456789abcdef0123456789abcdef","reason":7,"requestedAt":"2026-11-23T06:41:52Z","deadline":"2026-11-30T06:41:52Z"})",
      R"({"rotationId":"0123456789abcdef0123456789abcdef","reason":"x","requestedAt":1795416112,"deadline":"2026-11-30T06:41:52Z"})",
      R"({"rotationId":"0123456789abcdef0123456789abcdef","reason":"x","requestedAt":"2026-11-23T06:41:52Z","deadline":"2026-11-22T06:41:52Z"})",
      R"({"rotationId":"0123456789abcdef0123456789abcdef","reason":"x","requestedAt":"yesterday","deadline":"2026-11-30T06:41:52Z"})",
      "{\"rotationId\":\"0123456789abcdef0123456789abcdef\",\"reason\":\"\xff\",\"requestedAt\":\"2026-11-23T06:41:52Z\",\"deadline\":\"2026-11-30T06:41:52Z\"}",
      "{}\0{}"s,
  };
  for (const auto& payload : bad) {
    auto r = DecodeRotationRequest(payload);
    ASSERT_FALSE(r) << payload;
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument) << payload;
  }
  std::string huge = R"({"reason":")" + std::string(kMaxRotationPayload, 'x') + R"("})";
  auto r = DecodeRotationRequest(huge);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kResourceExhausted);
}

TEST(RotationWire, MalformedAcks) {
  auto base = nlohmann::json::parse(*EncodeRotationAck(Ack()));
  auto mutate = [&](const char* field, nlohmann::json value) {
    auto copy = base;
    if (value.is_null()) {
      copy.erase(field);
    } else {
      copy[field] = value;
    }
    return copy.dump();
  };
  const std::vector<std::string> bad = {
      mutate("thingName", "gw/1"),        mutate("thingName", nullptr),       mutate("certificateId", "abc"),
      mutate("certificateId", kId2),      mutate("previousCertificateId", 5), mutate("signature", "!!!"),
      mutate("signature", ""),            mutate("signedAt", "now"),          mutate("rotationId", "xyz"),
      mutate("certificateId", std::string(64, 'A')),
  };
  for (const auto& payload : bad) {
    auto r = DecodeRotationAck(payload);
    ASSERT_FALSE(r) << payload;
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument) << payload;
    // Errors name the field, never echo the input.
    EXPECT_EQ(r.error().message().find("!!!"), std::string::npos);
  }
}

TEST(RotationWire, MalformedStatus) {
  auto base = nlohmann::json::parse(*EncodeAgentStatus(Status1()));
  for (const char* field : {"thingName", "certificateId", "notAfter", "state", "lastError", "lastRotation",
                            "nextRenewal", "agentVersion", "at"}) {
    auto copy = base;
    copy.erase(field);
    EXPECT_FALSE(DecodeAgentStatus(copy.dump())) << field;
    copy[field] = 1;
    EXPECT_FALSE(DecodeAgentStatus(copy.dump())) << field;
  }
  auto copy = base;
  copy["state"] = "";
  EXPECT_FALSE(DecodeAgentStatus(copy.dump()));
}

TEST(RotationWire, EncodersRejectWhatDecodersWould) {
  RotationRequest r = Request();
  r.deadline = r.requested_at - 1s;
  EXPECT_FALSE(EncodeRotationRequest(r));
  RotationAck a = Ack();
  a.signature.clear();
  EXPECT_FALSE(EncodeRotationAck(a));
  a = Ack();
  a.signed_at = FromUnixSeconds(-5);
  EXPECT_FALSE(EncodeRotationAck(a));
}

TEST(RotationWire, AckSignatureBindsEveryField) {
  for (KeyType type : {KeyType::kEcP256, KeyType::kRsa2048}) {
    auto key = GenerateKeyPair(type);
    ASSERT_TRUE(key);
    RotationAck a = Ack();
    auto sig = SignSha256(key->get(), RotationAckSignedText(a));
    ASSERT_TRUE(sig) << sig.error().ToString();
    a.signature = *sig;
    auto decoded = DecodeRotationAck(*EncodeRotationAck(a));
    ASSERT_TRUE(decoded);
    EXPECT_TRUE(VerifySha256(key->get(), RotationAckSignedText(*decoded), decoded->signature).ok());

    std::vector<RotationAck> tampered(5, a);
    tampered[0].thing_name = "gw-0002";
    tampered[1].rotation_id = "";
    tampered[2].certificate_id = std::string(64, 'c');
    tampered[3].previous_certificate_id = std::string(64, 'c');
    tampered[4].signed_at += 1s;
    for (const auto& t : tampered) {
      EXPECT_EQ(VerifySha256(key->get(), RotationAckSignedText(t), t.signature).code(), Code::kUnauthenticated);
    }
    auto other = GenerateKeyPair(type);
    EXPECT_EQ(VerifySha256(other->get(), RotationAckSignedText(a), a.signature).code(), Code::kUnauthenticated);
    EXPECT_EQ(VerifySha256(key->get(), RotationAckSignedText(a), "garbage").code(), Code::kUnauthenticated);
  }
}

}  // namespace
}  // namespace certfleet::shared
