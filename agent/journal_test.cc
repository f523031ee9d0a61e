#include "agent/journal.h"

#include <gtest/gtest.h>

namespace certfleet::agent {
namespace {

using shared::Code;

Journal Sample() {
  Journal j;
  j.state = AgentState::kVerifying;
  j.thing_name = "gw-0001";
  j.current_slot = "identity-a";
  j.pending = PendingRotation{"identity-b", "0123456789abcdef0123456789abcdef", "-----BEGIN CERTIFICATE-----\n", ""};
  j.last_rotation = shared::FromUnixSeconds(1790000000);
  j.last_error = "UNAVAILABLE: broker";
  j.last_trusted_time = shared::FromUnixSeconds(1790000100);
  j.failures = 2;
  j.next_attempt = shared::FromUnixSeconds(1790000200);
  j.next_renewal = shared::FromUnixSeconds(1790000300);
  j.rotation_requested = true;
  j.requested_rotation_id = "0123456789abcdef0123456789abcdef";
  j.updated_at = shared::FromUnixSeconds(1790000100);
  return j;
}

TEST(JournalTest, RoundTrips) {
  Journal j = Sample();
  auto back = ParseJournal(EncodeJournal(j));
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, j);
  Journal fresh;
  auto back2 = ParseJournal(EncodeJournal(fresh));
  ASSERT_TRUE(back2) << back2.error().ToString();
  EXPECT_EQ(*back2, fresh);
}

TEST(JournalTest, MalformedInputIsDataLossNamingTheField) {
  std::string good = EncodeJournal(Sample());
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  struct Case {
    std::string text;
    std::string field;
  } cases[] = {
      {"", "file"},
      {"[]", "file"},
      {"{", "file"},
      {std::string("{\"version\":1}\0", 14), "file"},
      {replace("\"version\": 1", "\"version\": 2"), "version"},
      {replace("\"version\": 1", "\"version\": \"1\""), "version"},
      {replace("\"state\": \"verifying\"", "\"state\": \"flying\""), "state"},
      {replace("\"thingName\": \"gw-0001\"", "\"thingName\": \"gw/1\""), "thingName"},
      {replace("\"currentSlot\": \"identity-a\"", "\"currentSlot\": \"../x\""), "currentSlot"},
      {replace("\"currentSlot\": \"identity-a\"", "\"currentSlot\": \"identity-b\""), "pending.slot"},
      {replace("\"failures\": 2", "\"failures\": -1"), "failures"},
      {replace("\"failures\": 2", "\"failures\": 2.5"), "failures"},
      {replace("\"lastRotation\": \"2026-09-21T", "\"lastRotation\": \"2026-13-21T"), "lastRotation"},
      {replace("\"rotationRequested\": true", "\"rotationRequested\": 1"), "rotationRequested"},
      {replace("\"requestedRotationId\": \"0123", "\"requestedRotationId\": \"X123"), "requestedRotationId"},
      {replace("\"state\": \"verifying\"", "\"state\": \"active\""), "pending"},
      {replace("\"certificatePem\": \"-----BEGIN CERTIFICATE-----\\n\"", "\"certificatePem\": \"\""), "certificatePem"},
      {replace("\"nextAttempt\"", "\"nextAttemptX\""), "nextAttempt"},
      {std::string(kMaxJournalBytes + 1, ' '), "file"},
  };
  for (const auto& c : cases) {
    auto j = ParseJournal(c.text);
    ASSERT_FALSE(j) << c.text;
    EXPECT_EQ(j.error().code(), Code::kDataLoss) << c.text;
    EXPECT_NE(j.error().message().find(c.field), std::string::npos) << j.error().ToString();
  }
}

TEST(JournalTest, ActiveNeedsAnIdentity) {
  Journal j;
  j.state = AgentState::kActive;
  EXPECT_FALSE(ParseJournal(EncodeJournal(j)));
}

TEST(JournalStoreTest, MissingIsFreshCorruptIsAnError) {
  shared::MemFilesystem fs;
  JournalStore store(fs, "/var/lib/certfleet-agent");
  auto none = store.Load();
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE(store.Save(Sample()).ok());
  auto files = fs.Snapshot();
  EXPECT_EQ(files["/var/lib/certfleet-agent/state.json"].mode, 0600u);
  auto loaded = store.Load();
  ASSERT_TRUE(loaded && loaded->has_value());
  EXPECT_EQ(**loaded, Sample());
  ASSERT_TRUE(fs.WriteFileAtomic(store.path(), "{not json", 0600).ok());
  auto corrupt = store.Load();
  ASSERT_FALSE(corrupt);
  EXPECT_EQ(corrupt.error().code(), Code::kDataLoss);
  EXPECT_NE(corrupt.error().message().find(store.path()), std::string::npos);
}

TEST(JournalStoreTest, FailedWriteIsReported) {
  shared::MemFilesystem fs;
  JournalStore store(fs, "/s");
  fs.FailWrites(true);
  EXPECT_FALSE(store.Save(Sample()).ok());
}

}  // namespace
}  // namespace certfleet::agent
