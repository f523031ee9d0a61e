#include "shared/systemd/notifier.h"

#include <gtest/gtest.h>

namespace certfleet::shared {
namespace {

TEST(JournalFieldNameTest, KnownFieldsHaveTheirJournalNames) {
  EXPECT_EQ(JournalFieldName("thing"), "THING");
  EXPECT_EQ(JournalFieldName("certificate_id"), "CERT_ID");
  EXPECT_EQ(JournalFieldName("rotation_id"), "ROTATION_ID");
}

TEST(JournalFieldNameTest, OtherNamesAreUpperCasedAndSanitised) {
  EXPECT_EQ(JournalFieldName("state_dir"), "STATE_DIR");
  EXPECT_EQ(JournalFieldName("not-after"), "NOT_AFTER");
  EXPECT_EQ(JournalFieldName("_x"), "F_X");
  EXPECT_EQ(JournalFieldName("9lives"), "F9LIVES");
  EXPECT_EQ(JournalFieldName(""), "F");
}

TEST(ServiceNotifierTest, WithoutNotifySocketEverythingIsANoOp) {
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  ServiceNotifier n;
  EXPECT_FALSE(n.enabled());
  EXPECT_FALSE(n.watchdog_interval().has_value());
  n.Ready("ready");
  n.Status("x");
  n.Watchdog();
  n.Reloading();
  n.Stopping();
}

TEST(ServiceNotifierTest, WatchdogIntervalIsHalfOfWatchdogUsec) {
  setenv("WATCHDOG_USEC", "4000000", 1);
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
  ServiceNotifier n;
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
#ifdef CERTFLEET_HAVE_SYSTEMD
  ASSERT_TRUE(n.watchdog_interval().has_value());
  EXPECT_EQ(*n.watchdog_interval(), std::chrono::milliseconds(2000));
#else
  EXPECT_FALSE(n.watchdog_interval().has_value());
#endif
}

TEST(ServiceNotifierTest, WatchdogForAnotherPidIsNotOurs) {
  setenv("WATCHDOG_USEC", "4000000", 1);
  setenv("WATCHDOG_PID", std::to_string(getpid() + 1).c_str(), 1);
  ServiceNotifier n;
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  EXPECT_FALSE(n.watchdog_interval().has_value());
}

}  // namespace
}  // namespace certfleet::shared
