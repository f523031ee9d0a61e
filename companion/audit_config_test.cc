#include "companion/audit_config.h"

#include <gtest/gtest.h>

#include <string>

#include "companion/config.h"

namespace certfleet::companion {
namespace {

using std::chrono::hours;
using std::chrono::minutes;

shared::WallTime At(const char* rfc3339) {
  shared::WallTime t;
  EXPECT_TRUE(shared::ParseRfc3339(rfc3339, &t)) << rfc3339;
  return t;
}

std::string Fmt(shared::WallTime t) { return shared::FormatRfc3339(t); }

TEST(AuditScheduleTest, ParsesNamesAndIntervals) {
  EXPECT_EQ(ParseAuditSchedule("off")->kind, AuditSchedule::kOff);
  EXPECT_EQ(ParseAuditSchedule("daily")->kind, AuditSchedule::kDaily);
  EXPECT_EQ(ParseAuditSchedule("biweekly")->kind, AuditSchedule::kBiweekly);
  auto every = ParseAuditSchedule("every 6h");
  ASSERT_TRUE(every);
  EXPECT_EQ(every->kind, AuditSchedule::kInterval);
  EXPECT_EQ(every->interval, hours(6));
  for (const char* bad : {"", "Daily", "every", "every 10s", "every -1h", "every 400d", "hourly", "every 6h "}) {
    EXPECT_FALSE(ParseAuditSchedule(bad)) << bad;
  }
  EXPECT_EQ(*ParseTimeOfDay("23:59"), minutes(23 * 60 + 59));
  for (const char* bad : {"24:00", "7:00", "12:60", "ab:cd", "12-00"}) EXPECT_FALSE(ParseTimeOfDay(bad)) << bad;
  EXPECT_EQ(*ParseWeekday("sunday"), 0u);
  EXPECT_FALSE(ParseWeekday("Sunday"));
}

TEST(AuditScheduleTest, NextRunDailyWeeklyBiweekly) {
  AuditSchedule s;
  s.kind = AuditSchedule::kDaily;
  s.time_of_day = minutes(180);
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-03-10T02:59:59Z"))), "2026-03-10T03:00:00Z");
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-03-10T03:00:00Z"))), "2026-03-11T03:00:00Z");  // strictly after
  s.kind = AuditSchedule::kWeekly;
  s.weekday = 1;  // Monday
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-03-10T00:00:00Z"))), "2026-03-16T03:00:00Z");  // a Tuesday
  s.kind = AuditSchedule::kBiweekly;
  const shared::WallTime first = NextAuditRun(s, At("2026-03-10T00:00:00Z"));
  const shared::WallTime second = NextAuditRun(s, first);
  EXPECT_EQ(second - first, hours(24 * 14));
  s.kind = AuditSchedule::kOff;
  EXPECT_EQ(NextAuditRun(s, At("2026-03-10T00:00:00Z")), shared::WallTime::max());
}

TEST(AuditScheduleTest, MonthlyClampsToTheLastDay) {
  AuditSchedule s;
  s.kind = AuditSchedule::kMonthly;
  s.day_of_month = 31;
  s.time_of_day = minutes(0);
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-01-31T00:00:00Z"))), "2026-02-28T00:00:00Z");
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2028-02-01T00:00:00Z"))), "2028-02-29T00:00:00Z");  // leap year
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-04-15T00:00:00Z"))), "2026-04-30T00:00:00Z");
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-12-31T00:00:01Z"))), "2027-01-31T00:00:00Z");
  s.day_of_month = 1;
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-12-01T00:00:00Z"))), "2027-01-01T00:00:00Z");
}

TEST(AuditScheduleTest, IntervalRunsAtMultiplesSinceTheEpoch) {
  AuditSchedule s;
  s.kind = AuditSchedule::kInterval;
  s.interval = hours(6);
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-03-10T05:00:00Z"))), "2026-03-10T06:00:00Z");
  EXPECT_EQ(Fmt(NextAuditRun(s, At("2026-03-10T06:00:00Z"))), "2026-03-10T12:00:00Z");
}

const std::string kBase = "state_dir = \"/var/lib/cf\"\n";

TEST(AuditConfigTest, ParsesTheAuditSection) {
  auto c = ParseCompanionConfig(kBase +
                                    "[audit]\n"
                                    "schedule = \"monthly\"\nday_of_month = 31\ntime_of_day = \"04:30\"\n"
                                    "weekday = \"friday\"\nretention = \"30d\"\nrotation_deadline = \"2d\"\n"
                                    "notify_topic = \"ops/audit\"\npolicy_files = [\"/etc/mosquitto/things.acl\"]\n"
                                    "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\n"
                                    "threshold = \"1470d\"\nmitigations = [\"ROTATE_DEVICE_CERTIFICATE\", \"NOTIFY\"]\n"
                                    "[audit.checks.DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]\nmin_rsa_bits = 3072\n"
                                    "[audit.checks.AGENT_NOT_SEEN_CHECK]\nenabled = false\n",
                                "/c.toml");
  ASSERT_TRUE(c) << c.error().ToString();
  const AuditConfig& a = c->audit;
  EXPECT_EQ(a.schedule.kind, AuditSchedule::kMonthly);
  EXPECT_EQ(a.schedule.day_of_month, 31u);
  EXPECT_EQ(a.schedule.time_of_day, minutes(270));
  EXPECT_EQ(a.schedule.weekday, 5u);
  EXPECT_EQ(a.retention, hours(24 * 30));
  EXPECT_EQ(a.report_dir, "/var/lib/cf/audit-reports");
  EXPECT_EQ(a.notify_topic, "ops/audit");
  EXPECT_EQ(*a.For(kCheckDeviceCertExpiring).threshold, hours(24 * 1470));
  EXPECT_EQ(a.For(kCheckDeviceCertExpiring).mitigations.size(), 2u);
  EXPECT_EQ(a.For(kCheckDeviceKeyQuality).min_rsa_bits, 3072);
  EXPECT_FALSE(a.For(kCheckAgentNotSeen).enabled);
  EXPECT_EQ(*a.For(kCheckDeviceCertAge).threshold, hours(24 * 365));  // default
}

TEST(AuditConfigTest, RejectsMalformedAuditInput) {
  for (const char* bad : {
           "[audit]\nschedule = \"hourly\"\n",
           "[audit]\nschedule = 5\n",
           "[audit]\ntime_of_day = \"25:00\"\n",
           "[audit]\nweekday = \"funday\"\n",
           "[audit]\nday_of_month = 32\n",
           "[audit]\nretention = \"10m\"\n",
           "[audit]\nreport_dir = \"relative/dir\"\n",
           "[audit]\nnotify_topic = \"ops/#\"\n",
           "[audit]\nunknown = 1\n",
           "[audit.checks.NO_SUCH_CHECK]\nenabled = true\n",
           "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\nthreshold = \"soon\"\n",
           "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\nthreshold = \"5000d\"\n",
           "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\nmitigations = [\"REBOOT\"]\n",
           "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\nmitigations = [\"NOTIFY\", \"NOTIFY\"]\n",
           "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\nmin_rsa_bits = 2048\n",
           "[audit.checks.DEVICE_CERTIFICATE_EXPIRING_CHECK]\ncolour = \"red\"\n",
           "[audit.checks.CA_CERTIFICATE_EXPIRING_CHECK]\nmitigations = [\"ROTATE_DEVICE_CERTIFICATE\"]\n",
           "[audit.checks.AGENT_NOT_SEEN_CHECK]\nmitigations = [\"DEACTIVATE_DEVICE_CERTIFICATE\"]\n",
           "[audit.checks.REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK]\nthreshold = \"1d\"\n",
           "[audit.checks.REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK]\nmitigations = [\"DEACTIVATE_DEVICE_CERTIFICATE\"]\n",
           "[audit.checks.DEVICE_CERTIFICATE_KEY_QUALITY_CHECK]\nmin_ec_bits = 64\n",
           "[audit.checks]\nDEVICE_CERTIFICATE_AGE_CHECK = true\n",
       }) {
    auto c = ParseCompanionConfig(kBase + bad, "/c.toml");
    EXPECT_FALSE(c) << bad;
    if (!c) {
      EXPECT_NE(c.error().ToString().find("/c.toml"), std::string::npos) << c.error().ToString();
    }
  }
}

}  // namespace
}  // namespace certfleet::companion
