#include "agent/post_rotation.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "agent/control.h"
#include "shared/core/filesystem.h"
#include "shared/testing/temp_dir.h"

namespace certfleet::agent {
namespace {

using shared::Code;

CommittedIdentity Identity() {
  return CommittedIdentity{"gw-0001", std::string(64, 'a'), "/var/lib/certfleet-agent/identity.pem", "LEAF\n", "CA\n",
                           "memory:identity-b"};
}

TEST(ExportTest, ContentByKind) {
  EXPECT_EQ(ExportContent("cert", Identity()), "LEAF\n");
  EXPECT_EQ(ExportContent("ca", Identity()), "CA\n");
  EXPECT_EQ(ExportContent("chain", Identity()), "LEAF\nCA\n");
}

TEST(ExportTest, WritesAtomicallyWithTheConfiguredMode) {
  shared::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  AgentConfig::Export e;
  e.path = dir.path() + "/gw.pem";
  e.mode = 0640;
  ASSERT_TRUE(WriteExport(e, "one").ok());
  ASSERT_TRUE(WriteExport(e, "two").ok());
  auto text = shared::PosixFilesystem::Instance().ReadFile(e.path, 100);
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, "two");
  struct stat st {};
  ASSERT_EQ(stat(e.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  auto entries = shared::PosixFilesystem::Instance().List(dir.path());
  ASSERT_TRUE(entries);
  EXPECT_EQ(entries->size(), 1u);  // no temporary file left behind
  e.path = dir.path() + "/missing/gw.pem";
  EXPECT_FALSE(WriteExport(e, "x").ok());
}

TEST(HookTest, ExitStatusTimeoutAndEnvironment) {
  shared::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  EXPECT_TRUE(RunHook({"/bin/true"}, {}, std::chrono::seconds(5)).ok());
  EXPECT_EQ(RunHook({"/bin/false"}, {}, std::chrono::seconds(5)).code(), Code::kInternal);
  EXPECT_EQ(RunHook({"/bin/sleep", "10"}, {}, std::chrono::milliseconds(200)).code(), Code::kDeadlineExceeded);
  EXPECT_EQ(RunHook({"/nonexistent/hook"}, {}, std::chrono::seconds(1)).code(), Code::kUnavailable);
  EXPECT_EQ(RunHook({"true"}, {}, std::chrono::seconds(1)).code(), Code::kInvalidArgument);
  std::string out = dir.path() + "/env";
  ASSERT_TRUE(RunHook({"/bin/sh", "-c", "echo \"$CERTFLEET_THING_NAME $HOME\" > " + out},
                      {"CERTFLEET_THING_NAME=gw-0001"}, std::chrono::seconds(5))
                  .ok());
  auto text = shared::PosixFilesystem::Instance().ReadFile(out, 100);
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, "gw-0001 \n");  // nothing of our environment leaks in
}

TEST(ControlTest, OneLineRequestsAndAnswers) {
  shared::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  shared::CaptureLogger log;
  std::string path = dir.path() + "/control.sock";
  auto server = ControlServer::Start(path, [](const std::string& c) { return "got " + c; }, log);
  ASSERT_TRUE(server) << server.error().ToString();
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto a = ControlRequest(path, "status", std::chrono::seconds(5));
  ASSERT_TRUE(a) << a.error().ToString();
  EXPECT_EQ(*a, "got status");
  auto b = ControlRequest(path, "renew", std::chrono::seconds(5));
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, "got renew");
  server->reset();
  EXPECT_FALSE(shared::PosixFilesystem::Instance().Exists(path));
  auto c = ControlRequest(path, "status", std::chrono::seconds(1));
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), Code::kUnavailable);
}

TEST(ControlTest, StaleSocketIsReplacedOtherFilesAreNot) {
  shared::TempDir dir;
  shared::CaptureLogger log;
  std::string path = dir.path() + "/control.sock";
  {
    auto first = ControlServer::Start(path, [](const std::string&) { return "1"; }, log);
    ASSERT_TRUE(first);
  }
  auto second = ControlServer::Start(path, [](const std::string&) { return "2"; }, log);
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(*ControlRequest(path, "x", std::chrono::seconds(5)), "2");
  std::string plain = dir.path() + "/plain";
  ASSERT_TRUE(shared::PosixFilesystem::Instance().WriteFileAtomic(plain, "x", 0600).ok());
  EXPECT_FALSE(ControlServer::Start(plain, [](const std::string&) { return ""; }, log));
}

}  // namespace
}  // namespace certfleet::agent
