#include "companion/broker_plugin/quarantine_list.h"

#include <gtest/gtest.h>

namespace certfleet::broker_plugin {
namespace {

TEST(QuarantineListTest, RoundTrips) {
  std::set<std::string> things = {"gw-2", "gw-1", "site:a.b_c"};
  auto list = ParseQuarantineList(QuarantineListToJson(things));
  ASSERT_TRUE(list) << list.error().ToString();
  EXPECT_EQ(list->things.size(), 3u);
  EXPECT_TRUE(list->Contains("gw-1"));
  EXPECT_TRUE(list->Contains("site:a.b_c"));
  EXPECT_FALSE(list->Contains("gw-3"));
  EXPECT_FALSE(list->Contains(""));
}

TEST(QuarantineListTest, EmptyListIsValid) {
  auto list = ParseQuarantineList(QuarantineListToJson({}));
  ASSERT_TRUE(list);
  EXPECT_TRUE(list->things.empty());
}

TEST(QuarantineListTest, RefusesMalformedInput) {
  const char* bad[] = {
      "",
      "[]",
      "not json",
      "{\"things\": []}",                                  // no version
      "{\"version\": 2, \"things\": []}",                  // unknown version
      "{\"version\": \"1\", \"things\": []}",              // version as a string
      "{\"version\": 1}",                                  // no things
      "{\"version\": 1, \"things\": {}}",                  // things not an array
      "{\"version\": 1, \"things\": [1]}",                 // a number
      "{\"version\": 1, \"things\": [\"\"]}",              // empty name
      "{\"version\": 1, \"things\": [\"a b\"]}",           // space
      "{\"version\": 1, \"things\": [\"gw/1\"]}",          // topic separator
      "{\"version\": 1, \"things\": [\"+\"]}",             // wildcard
      "{\"version\": 1, \"things\": [\"gw\", \"gw\"]}",    // repeated
      "{\"version\": 1, \"things\": [], \"extra\": true}", // unknown key
  };
  for (const char* text : bad) {
    auto list = ParseQuarantineList(text);
    ASSERT_FALSE(list) << text;
    EXPECT_EQ(list.error().code(), shared::Code::kInvalidArgument) << text;
  }
  EXPECT_FALSE(ParseQuarantineList("{\"version\": 1, \"things\": [\"" + std::string(65, 'a') + "\"]}"));
  EXPECT_TRUE(ParseQuarantineList("{\"version\": 1, \"things\": [\"" + std::string(64, 'a') + "\"]}"));
}

}  // namespace
}  // namespace certfleet::broker_plugin
