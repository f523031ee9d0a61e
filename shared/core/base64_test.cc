#include "shared/core/base64.h"

#include <gtest/gtest.h>

#include <string>

namespace certfleet::shared {
namespace {

// Deterministic bytes covering the whole 0..255 range.
std::string Bytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 37 + 11) & 0xff);
  return s;
}

std::string Strip(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c != '\n') out += c;
  }
  return out;
}

TEST(Base64Test, KnownVectors) {
  // RFC 4648 section 10.
  EXPECT_EQ(Base64EncodeLine(""), "");
  EXPECT_EQ(Base64EncodeLine("f"), "Zg==");
  EXPECT_EQ(Base64EncodeLine("fo"), "Zm8=");
  EXPECT_EQ(Base64EncodeLine("foo"), "Zm9v");
  EXPECT_EQ(Base64EncodeLine("foob"), "Zm9vYg==");
  EXPECT_EQ(Base64EncodeLine("fooba"), "Zm9vYmE=");
  EXPECT_EQ(Base64EncodeLine("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy\n");
  EXPECT_EQ(Base64EncodeLine(std::string("\xff\xfe\x00", 3)), "//4A");
}

TEST(Base64Test, RoundTripAllLengths) {
  for (size_t n = 0; n <= 200; ++n) {
    SCOPED_TRACE(n);
    std::string data = Bytes(n);
    std::string lines = Base64Encode(data);
    std::string one_line = Base64EncodeLine(data);
    EXPECT_EQ(one_line.size(), (n + 2) / 3 * 4);
    EXPECT_EQ(one_line.find('\n'), std::string::npos);
    EXPECT_EQ(Strip(lines), one_line);

    auto decoded = Base64Decode(lines);
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(*decoded, data);
    auto decoded_line = Base64Decode(one_line);
    ASSERT_TRUE(decoded_line.has_value()) << decoded_line.error().ToString();
    EXPECT_EQ(*decoded_line, data);
  }
}

TEST(Base64Test, EncodesIn64ColumnLinesEachEndingInLf) {
  for (size_t n = 0; n <= 200; ++n) {
    SCOPED_TRACE(n);
    std::string text = Base64Encode(Bytes(n));
    if (n == 0) {
      EXPECT_EQ(text, "");
      continue;
    }
    ASSERT_FALSE(text.empty());
    EXPECT_EQ(text.back(), '\n');
    EXPECT_EQ(text.find('\r'), std::string::npos);
    size_t start = 0;
    size_t lines = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      ASSERT_NE(end, std::string::npos);
      size_t len = end - start;
      EXPECT_GT(len, 0u);
      EXPECT_LE(len, 64u);
      // Only the last line may be shorter than 64.
      if (end + 1 < text.size()) {
        EXPECT_EQ(len, 64u);
      }
      start = end + 1;
      ++lines;
    }
    EXPECT_EQ(lines, ((n + 2) / 3 * 4 + 63) / 64);
  }
}

TEST(Base64Test, ExactlyOneFullLine) {
  std::string text = Base64Encode(Bytes(48));  // 48 bytes -> 64 characters
  EXPECT_EQ(text.size(), 65u);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find('\n'), 64u);
}

TEST(Base64Test, DecodesLeniently) {
  const std::string want = "foobar!";
  const std::string canonical = Base64EncodeLine(want);  // "Zm9vYmFyIQ=="
  ASSERT_EQ(canonical, "Zm9vYmFyIQ==");
  for (const std::string& text : {
           std::string("Zm9vYmFyIQ=="),
           std::string("Zm9v\r\nYmFy\r\nIQ==\r\n"),
           std::string("Zm9v\nYmFy\nIQ==\n"),
           std::string("  Zm9v YmFy\tIQ== \t"),
           std::string("\tZ m 9 v Y m F y I Q = =\n"),
           std::string("Zm9vYmFyIQ==\n\0\0", 15),
           std::string("Zm9vYmFyIQ==\0", 13),
           std::string("Zm9vYmFyIQ"),          // missing padding
           std::string("Zm9vYmFyIQ\r\n"),      // missing padding, CRLF
           std::string("Zm9vYmFyIQ\n\0", 12),  // missing padding, trailing NUL
       }) {
    SCOPED_TRACE(::testing::PrintToString(text));
    auto got = Base64Decode(text);
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    EXPECT_EQ(*got, want);
  }
  auto two = Base64Decode("Zm8");  // "fo" without its '='
  ASSERT_TRUE(two.has_value());
  EXPECT_EQ(*two, "fo");
  auto empty = Base64Decode(" \r\n\t");
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(*empty, "");
  auto nuls = Base64Decode(std::string("\0\0\0", 3));
  ASSERT_TRUE(nuls.has_value());
  EXPECT_EQ(*nuls, "");
}

TEST(Base64Test, RejectsMalformedInput) {
  for (const std::string& text : {
           std::string("Zm9v!mFy"),         // bad character
           std::string("Zm9v-mFy"),         // base64url alphabet is not base64
           std::string("Zm9v_mFy"),
           std::string("Zm9v\vYmFy"),       // vertical tab is not whitespace here
           std::string("Zm9v\0YmFy", 9),    // NUL in the middle
           std::string("Zm9vYmFy\xc3\xa9"),  // non-ASCII
           std::string("Zg==Zg=="),         // data after padding
           std::string("Zg==\nZm8="),
           std::string("Zg=a"),
           std::string("Z"),                // one dangling character
           std::string("Zm9vY"),
           std::string("Zm9vY==="),
           std::string("Zg==="),            // too much padding
           std::string("Zm8=="),
           std::string("Zg="),              // too little padding once it started
           std::string("Zm9v="),            // padding after a full group
           std::string("="),
           std::string("===="),
       }) {
    SCOPED_TRACE(::testing::PrintToString(text));
    auto got = Base64Decode(text);
    ASSERT_FALSE(got.has_value()) << "decoded to " << ::testing::PrintToString(*got);
    EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
  }
}

TEST(Base64UrlTest, UsesTheUrlAlphabetWithoutPadding) {
  EXPECT_EQ(Base64UrlEncode(""), "");
  EXPECT_EQ(Base64UrlEncode("f"), "Zg");
  EXPECT_EQ(Base64UrlEncode("\xfb\xff\xbf"), "-_-_");
  EXPECT_EQ(Base64EncodeLine("\xfb\xff\xbf"), "+/+/");
  EXPECT_EQ(Base64UrlEncode("foobar"), "Zm9vYmFy");
}

}  // namespace
}  // namespace certfleet::shared
