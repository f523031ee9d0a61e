#include "agent/renewal.h"

#include <gtest/gtest.h>

namespace certfleet::agent {
namespace {

using std::chrono::hours;
using std::chrono::seconds;
using shared::WallTime;

const WallTime kStart = shared::FromUnixSeconds(1790000000);
const WallTime kEnd = kStart + hours(24 * 100);

TEST(RenewalTest, FractionOfLifetimeWithoutJitter) {
  RenewalPolicy p;
  p.jitter = 0;
  EXPECT_EQ(NextRenewal(kStart, kEnd, p, 0.7), kStart + hours(24 * 80));
  p.threshold = 0.5;
  EXPECT_EQ(NextRenewal(kStart, kEnd, p, 0.7), kStart + hours(24 * 50));
}

TEST(RenewalTest, DaysBeforeExpiryWinsAndIsClamped) {
  RenewalPolicy p;
  p.jitter = 0;
  p.before_expiry = hours(24 * 30);
  EXPECT_EQ(NextRenewal(kStart, kEnd, p, 0), kEnd - hours(24 * 30));
  p.before_expiry = hours(24 * 300);
  EXPECT_EQ(NextRenewal(kStart, kEnd, p, 0), kStart);
}

TEST(RenewalTest, JitterMovesEarlierWithinBound) {
  RenewalPolicy p;  // 0.8, 5 %
  WallTime plain = kStart + hours(24 * 80);
  EXPECT_EQ(NextRenewal(kStart, kEnd, p, 0), plain);
  EXPECT_EQ(NextRenewal(kStart, kEnd, p, 0.5), plain - seconds(hours(24 * 100)) / 40);
  for (double d : {0.0, 0.1, 0.99}) {
    WallTime t = NextRenewal(kStart, kEnd, p, d);
    EXPECT_LE(t, plain);
    EXPECT_GE(t, plain - hours(24 * 5));
  }
}

TEST(RenewalTest, JitterDrawIsStablePerCertificateAndSpread) {
  std::string a(64, 'a'), b = "00000000000000000000000000000000000000000000000000000000000000ff";
  EXPECT_EQ(JitterDraw(a), JitterDraw(a));
  EXPECT_NE(JitterDraw(a), JitterDraw(b));
  EXPECT_GE(JitterDraw(b), 0.0);
  EXPECT_LT(JitterDraw(std::string(64, 'f')), 1.0);
  EXPECT_EQ(JitterDraw(""), 0.0);
}

TEST(RenewalTest, DegenerateValidity) {
  EXPECT_EQ(NextRenewal(kEnd, kStart, RenewalPolicy{}, 0.3), kEnd);
}

TEST(RenewalTest, FailureBackoffGrowsAndIsCapped) {
  RenewalPolicy p;
  p.retry_base = seconds(60);
  p.retry_cap = seconds(3600);
  std::mt19937_64 rng(7);
  for (int failures = 1; failures < 30; ++failures) {
    WallTime t = NextAttemptAfterFailure(kStart, failures, p, rng);
    EXPECT_GE(t, kStart + seconds(6));
    EXPECT_LE(t, kStart + seconds(3600));
  }
}

TEST(TrustedTimeTest, Rules) {
  EXPECT_TRUE(TrustedTime(kStart, std::nullopt, std::nullopt).trusted);
  EXPECT_TRUE(TrustedTime(kStart, kStart - hours(1), true).trusted);
  auto unsynced = TrustedTime(kStart, std::nullopt, false);
  EXPECT_FALSE(unsynced.trusted);
  EXPECT_NE(unsynced.reason.find("synchronised"), std::string::npos);
  auto behind = TrustedTime(kStart, kStart + hours(1), std::nullopt);
  EXPECT_FALSE(behind.trusted);
  EXPECT_NE(behind.reason.find("behind"), std::string::npos);
  // Small steps back (NTP slew, a few minutes) are tolerated.
  EXPECT_TRUE(TrustedTime(kStart, kStart + std::chrono::minutes(4), std::nullopt).trusted);
}

TEST(TrustedTimeTest, ValidityIsNotJudgedOnAnUntrustedClock) {
  WallTime way_later = kEnd + hours(24 * 1000);
  EXPECT_EQ(ValidityCheckTime(way_later, true, kStart, kEnd), way_later);
  WallTime t = ValidityCheckTime(way_later, false, kStart, kEnd);
  EXPECT_GT(t, kStart);
  EXPECT_LT(t, kEnd);
}

}  // namespace
}  // namespace certfleet::agent
