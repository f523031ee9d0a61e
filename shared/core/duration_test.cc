#include "shared/core/duration.h"

#include <gtest/gtest.h>

#include <string>

namespace certfleet::shared {
namespace {

using std::chrono::seconds;

TEST(DurationTest, ParsesGoodDurations) {
  struct Case {
    const char* text;
    int64_t secs;
  };
  for (const Case& c : {
           Case{"0", 0},
           Case{"90", 90},
           Case{"90s", 90},
           Case{"15m", 15 * 60},
           Case{"24h", 24 * 3600},
           Case{"30d", 30 * 86400},
           Case{"2w", 14 * 86400},
           Case{"1d12h", 86400 + 12 * 3600},
           Case{"1h30m15s", 3600 + 30 * 60 + 15},
           Case{"1m1m", 120},
           Case{"007s", 7},
           Case{"0s", 0},
           Case{"3155760000", kMaxDurationSeconds},  // the largest accepted value
           Case{"36525d", kMaxDurationSeconds},
       }) {
    SCOPED_TRACE(c.text);
    auto d = ParseDuration(c.text);
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    EXPECT_EQ(d->count(), c.secs);
  }
}

TEST(DurationTest, RejectsBadDurations) {
  for (const char* text : {
           "",
           " ",
           "s",
           "h1",
           "-5s",
           "+5s",
           "5x",
           "5 s",
           " 5s",
           "5s ",
           "5S",
           "1.5h",
           "5ms",
           "1d10",   // a bare number is allowed only on its own
           "1h30",
           "0d10",   // ... also when the earlier parts add up to zero
           "0s5",
           "1_000s",
       }) {
    SCOPED_TRACE(text);
    auto d = ParseDuration(text);
    ASSERT_FALSE(d.has_value()) << "parsed as " << d->count();
    EXPECT_EQ(d.error().code(), Code::kInvalidArgument);
  }
}

TEST(DurationTest, RejectsOverflow) {
  for (const char* text : {
           "3155760001",
           "3155760001s",
           "36526d",
           "36525d1s",
           "1099511627777",
           "99999999999999999999",
           "99999999999999999999999999999999999999s",
           "9223372036854775807s",
           "9223372036854775808s",
           "18446744073709551617",
           "1099511627776d",
           "1099511627776w",
           "5218w",                  // just above 100 years
           "3155760000s1s",          // the sum passes the limit
           "1000000000000s99999999999s",
       }) {
    SCOPED_TRACE(text);
    auto d = ParseDuration(text);
    ASSERT_FALSE(d.has_value()) << "parsed as " << d->count();
    EXPECT_EQ(d.error().code(), Code::kInvalidArgument);
  }
  auto ok = ParseDuration("5217w");  // 3155241600 s, just below the limit
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->count(), int64_t{5217} * 7 * 86400);
}

TEST(DurationTest, FormatsInTheLargestWholeUnit) {
  EXPECT_EQ(FormatDuration(seconds(0)), "0s");
  EXPECT_EQ(FormatDuration(seconds(59)), "59s");
  EXPECT_EQ(FormatDuration(seconds(60)), "1m");
  EXPECT_EQ(FormatDuration(seconds(90)), "90s");
  EXPECT_EQ(FormatDuration(seconds(7200)), "2h");
  EXPECT_EQ(FormatDuration(seconds(86400 * 30)), "30d");
  EXPECT_EQ(FormatDuration(seconds(86400 + 3600)), "25h");
}

TEST(DurationTest, FormatThenParseRoundTrips) {
  for (int64_t s : {int64_t{0}, int64_t{1}, int64_t{61}, int64_t{3600}, int64_t{86399}, int64_t{86400},
                    int64_t{90 * 86400}, kMaxDurationSeconds}) {
    SCOPED_TRACE(s);
    auto d = ParseDuration(FormatDuration(seconds(s)));
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->count(), s);
  }
}

}  // namespace
}  // namespace certfleet::shared
