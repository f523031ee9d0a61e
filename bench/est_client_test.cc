#include "bench/est_client.h"

#include <gtest/gtest.h>

namespace certfleet::bench {
namespace {

TEST(ParseEstUrlTest, HostPortAndLabel) {
  auto u = ParseEstUrl("https://127.0.0.1:8443/fleet");
  ASSERT_TRUE(u) << u.error().ToString();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, "8443");
  EXPECT_EQ(u->authority, "127.0.0.1:8443");
  EXPECT_EQ(u->base_path, "/.well-known/est/fleet");
}

TEST(ParseEstUrlTest, DefaultsAndFullPath) {
  auto u = ParseEstUrl("https://est.example");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->port, "443");
  EXPECT_EQ(u->base_path, "/.well-known/est");
  u = ParseEstUrl("https://est.example:8085/.well-known/est/");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->base_path, "/.well-known/est");
  u = ParseEstUrl("https://[::1]:9443/.well-known/est/ca1");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->authority, "[::1]:9443");
  EXPECT_EQ(u->base_path, "/.well-known/est/ca1");
}

TEST(ParseEstUrlTest, Rejects) {
  EXPECT_FALSE(ParseEstUrl("http://127.0.0.1:8443"));
  EXPECT_FALSE(ParseEstUrl("https://:8443"));
  EXPECT_FALSE(ParseEstUrl("https://h:0"));
  EXPECT_FALSE(ParseEstUrl("https://h:99999"));
  EXPECT_FALSE(ParseEstUrl("https://user:pw@h"));
  EXPECT_FALSE(ParseEstUrl("https://h/a/b"));
  EXPECT_FALSE(ParseEstUrl("https://[::1"));
}

TEST(ParseHttpResponseTest, ContentLength) {
  std::string r = "HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\ncontent-length: 5\r\n\r\nhel";
  EXPECT_EQ(ParseHttpResponse(r, false).state, ParseState::kIncomplete);
  EXPECT_EQ(ParseHttpResponse(r, true).state, ParseState::kMalformed);
  r += "lo";
  HttpResponse p = ParseHttpResponse(r, false);
  ASSERT_EQ(p.state, ParseState::kComplete);
  EXPECT_EQ(p.status, 200);
  EXPECT_EQ(p.body, "hello");
}

TEST(ParseHttpResponseTest, Chunked) {
  std::string r = "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n";
  EXPECT_EQ(ParseHttpResponse(r, false).state, ParseState::kIncomplete);
  r += "0\r\n\r\n";
  HttpResponse p = ParseHttpResponse(r, false);
  ASSERT_EQ(p.state, ParseState::kComplete);
  EXPECT_EQ(p.status, 403);
  EXPECT_EQ(p.body, "abcde");
  EXPECT_EQ(ParseHttpResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false).state,
            ParseState::kMalformed);
}

TEST(ParseHttpResponseTest, CloseDelimitedAndNoBody) {
  HttpResponse p = ParseHttpResponse("HTTP/1.0 200 OK\r\n\r\nbody", false);
  EXPECT_EQ(p.state, ParseState::kIncomplete);
  p = ParseHttpResponse("HTTP/1.0 200 OK\r\n\r\nbody", true);
  ASSERT_EQ(p.state, ParseState::kComplete);
  EXPECT_EQ(p.body, "body");
  p = ParseHttpResponse("HTTP/1.1 204 No Content\r\n\r\n", false);
  EXPECT_EQ(p.state, ParseState::kComplete);
  EXPECT_EQ(p.status, 204);
}

TEST(ParseHttpResponseTest, Malformed) {
  EXPECT_EQ(ParseHttpResponse("", true).state, ParseState::kMalformed);
  EXPECT_EQ(ParseHttpResponse("SSH-2.0-OpenSSH\r\n\r\n", false).state, ParseState::kMalformed);
  EXPECT_EQ(ParseHttpResponse("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", false).state, ParseState::kMalformed);
  EXPECT_EQ(ParseHttpResponse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).state, ParseState::kMalformed);
  EXPECT_EQ(ParseHttpResponse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).state,
            ParseState::kMalformed);
}

}  // namespace
}  // namespace certfleet::bench
