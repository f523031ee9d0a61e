#include "shared/core/config.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace certfleet::shared {
namespace {

using std::chrono::seconds;

struct TestConfig {
  std::string name = "default-name";
  int port = 8080;
  bool enabled = false;
  seconds timeout{30};
  std::vector<std::string> hosts;
  std::string listen = "127.0.0.1:1";
  int64_t nested_limit = 5;
  std::string deep_path = "/default";
};

ConfigSchema<TestConfig> MakeSchema() {
  ConfigSchema<TestConfig> schema;
  schema.Add("name", StringValue<TestConfig>([](TestConfig& c) -> auto& { return c.name; }))
      .Add("port", IntValue<TestConfig>([](TestConfig& c) -> auto& { return c.port; }, 1, 65535))
      .Add("enabled", BoolValue<TestConfig>([](TestConfig& c) -> auto& { return c.enabled; }))
      .Add("timeout", DurationValue<TestConfig>([](TestConfig& c) -> auto& { return c.timeout; }, seconds(1),
                                                seconds(86400)))
      .Add("hosts", StringListValue<TestConfig>([](TestConfig& c) -> auto& { return c.hosts; }))
      .Add("server.listen",
           StringValue<TestConfig>([](TestConfig& c) -> auto& { return c.listen; }, CheckHostPort))
      .Add("server.limits.max",
           IntValue<TestConfig>([](TestConfig& c) -> auto& { return c.nested_limit; }, 0, 1000))
      .Add("a.b", StringValue<TestConfig>([](TestConfig& c) -> auto& { return c.deep_path; }, CheckAbsolutePath));
  return schema;
}

constexpr char kSource[] = "/etc/certfleet/test.toml";

Result<TestConfig> Parse(std::string_view text) { return MakeSchema().Parse(text, kSource, TestConfig{}); }

// Expects a kInvalidArgument whose message starts with "<source>:<line>:<col>: " and
// contains `fragment`.
void ExpectErrorAt(const Result<TestConfig>& r, int line, int col, std::string_view fragment) {
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  const std::string& msg = r.error().message();
  std::string where = std::string(kSource) + ":" + std::to_string(line) + ":" + std::to_string(col) + ": ";
  EXPECT_EQ(msg.rfind(where, 0), 0u) << msg;
  EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
}

TEST(ConfigTest, GoodParse) {
  auto r = Parse(R"(
name = "gw-0001"
port = 8443
enabled = true
timeout = "1h30m"
hosts = ["a.example", "b.example"]

[server]
listen = "[::1]:8443"

[server.limits]
max = 1000
)");
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->name, "gw-0001");
  EXPECT_EQ(r->port, 8443);
  EXPECT_TRUE(r->enabled);
  EXPECT_EQ(r->timeout, seconds(5400));
  EXPECT_EQ(r->hosts, (std::vector<std::string>{"a.example", "b.example"}));
  EXPECT_EQ(r->listen, "[::1]:8443");
  EXPECT_EQ(r->nested_limit, 1000);
  EXPECT_EQ(r->deep_path, "/default");  // not given: default kept
}

TEST(ConfigTest, EmptyInputKeepsDefaults) {
  TestConfig defaults;
  defaults.name = "mine";
  auto r = MakeSchema().Parse("# only a comment\n\n", kSource, defaults);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->name, "mine");
  EXPECT_EQ(r->port, 8080);
  EXPECT_EQ(r->timeout, seconds(30));
}

TEST(ConfigTest, NestedTablesUseDottedKeys) {
  for (const char* text : {
           "a.b = \"/x\"\n",
           "[a]\nb = \"/x\"\n",
           "a = { b = \"/x\" }\n",
           "\"a\".\"b\" = \"/x\"\n",
       }) {
    SCOPED_TRACE(text);
    auto r = Parse(text);
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(r->deep_path, "/x");
  }
  auto deep = Parse("[server]\nlimits.max = 7\n");
  ASSERT_TRUE(deep.has_value()) << deep.error().ToString();
  EXPECT_EQ(deep->nested_limit, 7);
}

TEST(ConfigTest, UnknownKeyNamesFileLineAndColumn) {
  ExpectErrorAt(Parse("name = \"x\"\nbogus = 1\n"), 2, 9, "unknown key 'bogus'");
  ExpectErrorAt(Parse("[server]\nlisten = \"a:1\"\n  lisen = \"b:2\"\n"), 3, 11, "unknown key 'server.lisen'");
  // A table named like a leaf key is not that key.
  ExpectErrorAt(Parse("\n[name]\nfirst = \"x\"\n"), 3, 9, "unknown key 'name.first'");
  // The dotted name of a key that only partly matches a known one.
  ExpectErrorAt(Parse("a.c = \"/x\"\n"), 1, 7, "unknown key 'a.c'");
}

TEST(ConfigTest, WrongType) {
  ExpectErrorAt(Parse("port = \"8443\"\n"), 1, 8, "key 'port': expected an integer, got string");
  ExpectErrorAt(Parse("name = 5\n"), 1, 8, "key 'name': expected a string, got integer");
  ExpectErrorAt(Parse("enabled = \"yes\"\n"), 1, 11, "key 'enabled': expected true or false, got string");
  ExpectErrorAt(Parse("timeout = 30\n"), 1, 11, "key 'timeout': expected a string, got integer");
  ExpectErrorAt(Parse("hosts = \"a\"\n"), 1, 9, "key 'hosts': expected an array of strings");
  ExpectErrorAt(Parse("hosts = [\"a\", 1]\n"), 1, 9, "key 'hosts': expected an array of strings, found a integer");
  ExpectErrorAt(Parse("port = 1.5\n"), 1, 8, "expected an integer, got float");
  ExpectErrorAt(Parse("name = 1979-05-27\n"), 1, 8, "expected a string, got date/time");
  // A known leaf given as a table is an unknown key below it.
  ExpectErrorAt(Parse("[port]\nx = 1\n"), 2, 5, "unknown key 'port.x'");
}

TEST(ConfigTest, IntOutOfRange) {
  ExpectErrorAt(Parse("\nport = 0\n"), 2, 8, "key 'port': value 0 out of range [1, 65535]");
  ExpectErrorAt(Parse("port = 65536\n"), 1, 8, "out of range [1, 65535]");
  ExpectErrorAt(Parse("port = -1\n"), 1, 8, "out of range");
  ExpectErrorAt(Parse("port = 9223372036854775807\n"), 1, 8, "out of range");
  auto edge = Parse("port = 65535\n");
  ASSERT_TRUE(edge.has_value());
  EXPECT_EQ(edge->port, 65535);
}

TEST(ConfigTest, BadDuration) {
  ExpectErrorAt(Parse("timeout = \"5 minutes\"\n"), 1, 11, "key 'timeout': bad duration");
  ExpectErrorAt(Parse("timeout = \"\"\n"), 1, 11, "empty duration");
  ExpectErrorAt(Parse("timeout = \"99999999999999999999d\"\n"), 1, 11, "too large");
  ExpectErrorAt(Parse("timeout = \"0s\"\n"), 1, 11, "out of range [1s, 1d]");
  ExpectErrorAt(Parse("timeout = \"2d\"\n"), 1, 11, "out of range [1s, 1d]");
}

TEST(ConfigTest, ValueChecks) {
  ExpectErrorAt(Parse("[server]\nlisten = \"8443\"\n"), 2, 10, "key 'server.listen': expected ADDRESS:PORT");
  ExpectErrorAt(Parse("[server]\nlisten = \"host:99999\"\n"), 2, 10, "bad port");
  ExpectErrorAt(Parse("a.b = \"relative/path\"\n"), 1, 7, "expected an absolute path");
}

TEST(ConfigTest, SyntaxErrorNamesFileAndLine) {
  for (const auto& [text, line] : std::vector<std::pair<std::string, int>>{
           {"name = \"unterminated\n", 1},
           {"name = \"x\"\nport = = 1\n", 2},
           {"name = \"x\"\n\n[server\nlisten = \"a:1\"\n", 3},
           {"name = \"x\"\nname = \"y\"\n", 2},  // duplicate key
           {"port = 08\n", 1},                   // leading zero
       }) {
    SCOPED_TRACE(text);
    auto r = Parse(text);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
    std::string prefix = std::string(kSource) + ":" + std::to_string(line) + ":";
    EXPECT_EQ(r.error().message().rfind(prefix, 0), 0u) << r.error().message();
  }
}

TEST(ConfigTest, FailedParseReturnsNoPartialConfig) {
  // The first key is valid; the error in the second must still fail the whole parse.
  auto r = Parse("name = \"set\"\nport = 0\n");
  ASSERT_FALSE(r.has_value());
}

TEST(ConfigTest, KeysListsTheSchema) {
  auto keys = MakeSchema().Keys();
  EXPECT_EQ(keys, (std::vector<std::string>{"a.b", "enabled", "hosts", "name", "port", "server.limits.max",
                                            "server.listen", "timeout"}));
}

struct PrefixConfig {
  std::string name;
  std::map<std::string, std::string> params;
};

ConfigSchema<PrefixConfig> PrefixSchema() {
  ConfigSchema<PrefixConfig> s;
  s.Add("t.name", StringValue<PrefixConfig>([](PrefixConfig& c) -> auto& { return c.name; }));
  s.AddPrefix("t.params.", [](const std::string& rest, const ConfigValue& v, PrefixConfig& c) -> Status {
    auto str = v.AsString();
    if (!str) return str.error();
    c.params[rest] = *str;
    return Status::Ok();
  });
  return s;
}

TEST(ConfigTest, PrefixKeysReachTheirSetterWithTheRest) {
  auto r = PrefixSchema().Parse("[t]\nname = \"n\"\n[t.params]\nSerial = \"01\"\nSite = \"x\"\n", kSource, {});
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->name, "n");
  EXPECT_EQ(r->params, (std::map<std::string, std::string>{{"Serial", "01"}, {"Site", "x"}}));
  EXPECT_EQ(PrefixSchema().Keys(), (std::vector<std::string>{"t.name", "t.params.*"}));
}

TEST(ConfigTest, PrefixSetterErrorsNameTheKeyAndLine) {
  auto r = PrefixSchema().Parse("[t.params]\nSerial = 1\n", kSource, {});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().ToString().find("t.params.Serial"), std::string::npos) << r.error().ToString();
  EXPECT_NE(r.error().ToString().find("test.toml:2"), std::string::npos) << r.error().ToString();
  // The prefix alone (an empty table) is no key; a sibling of the prefix is unknown.
  EXPECT_TRUE(PrefixSchema().Parse("[t.params]\n", kSource, {}).has_value());
  EXPECT_FALSE(PrefixSchema().Parse("[t]\nparamsX = \"a\"\n", kSource, {}).has_value());
}

TEST(ConfigTest, CheckHostPort) {
  for (const char* good : {"127.0.0.1:8883", "[::1]:443", "broker.example:1", "h:65535", "0.0.0.0:0"}) {
    EXPECT_TRUE(CheckHostPort(good).ok()) << good;
  }
  for (const char* bad : {"", ":", "host", "host:", ":443", "host:65536", "host:123456", "host:http", "host:-1",
                          "host:4 43"}) {
    Status st = CheckHostPort(bad);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << bad;
  }
}

TEST(ConfigTest, CheckAbsolutePath) {
  EXPECT_TRUE(CheckAbsolutePath("/etc/certfleet").ok());
  EXPECT_EQ(CheckAbsolutePath("").code(), Code::kInvalidArgument);
  EXPECT_EQ(CheckAbsolutePath("etc").code(), Code::kInvalidArgument);
  EXPECT_EQ(CheckAbsolutePath("./etc").code(), Code::kInvalidArgument);
}

TEST(ConfigTest, TomlQuoteRoundTrips) {
  std::string controls;
  for (int c = 1; c < 0x20; ++c) controls += static_cast<char>(c);
  for (const std::string& s : {
           std::string(""),
           std::string("plain"),
           std::string("with \"quotes\" and \\backslash\\"),
           std::string("tab\there\nnewline"),
           std::string("caf\xc3\xa9 \xe2\x82\xac"),
           controls,
           std::string("del\x7f"),
       }) {
    SCOPED_TRACE(::testing::PrintToString(s));
    std::string text = "name = " + TomlQuote(s) + "\n";
    auto r = Parse(text);
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(r->name, s);
  }
}

}  // namespace
}  // namespace certfleet::shared
