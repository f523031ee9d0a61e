#include "shared/core/filesystem.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "shared/testing/scoped_umask.h"
#include "shared/testing/temp_dir.h"

namespace certfleet::shared {
namespace {

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

class PosixFilesystemTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.empty()) << "mkdtemp failed"; }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  TempDir tmp_;
  const std::string dir_ = tmp_.path();
  PosixFilesystem fs_;
};

TEST_F(PosixFilesystemTest, WriteFileAtomicCreatesWithExactModeUnderZeroUmask) {
  ScopedUmask mask(0);
  std::string path = Path("secret.pem");
  ASSERT_TRUE(fs_.WriteFileAtomic(path, "key material", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  auto data = fs_.ReadFile(path, 1 << 20);
  ASSERT_TRUE(data.has_value()) << data.error().ToString();
  EXPECT_EQ(*data, "key material");

  std::string pub = Path("public.pem");
  ASSERT_TRUE(fs_.WriteFileAtomic(pub, "cert", 0644).ok());
  EXPECT_EQ(ModeOf(pub), 0644u);
}

TEST_F(PosixFilesystemTest, WriteFileAtomicNeverWidensBeyondMode) {
  ScopedUmask mask(022);
  std::string path = Path("f");
  ASSERT_TRUE(fs_.WriteFileAtomic(path, "x", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
}

TEST_F(PosixFilesystemTest, WriteFileAtomicReplacesAndLeavesNoTempFiles) {
  ScopedUmask mask(0);
  std::string path = Path("state.json");
  ASSERT_TRUE(fs_.WriteFileAtomic(path, "old", 0644).ok());
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);

  ASSERT_TRUE(fs_.WriteFileAtomic(path, "new content", 0600).ok());
  auto data = fs_.ReadFile(path, 1 << 20);
  ASSERT_TRUE(data.has_value());
  EXPECT_EQ(*data, "new content");
  EXPECT_EQ(ModeOf(path), 0600u);  // the new file's mode, not the old one's
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_NE(before.st_ino, after.st_ino) << "replaced by rename, not rewritten in place";

  // Many rewrites, some empty: only the target remains in the directory.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(fs_.WriteFileAtomic(path, std::string(static_cast<size_t>(i) * 1000, 'a'), 0600).ok());
  }
  auto names = fs_.List(dir_);
  ASSERT_TRUE(names.has_value());
  EXPECT_EQ(*names, std::vector<std::string>{"state.json"});
  EXPECT_EQ(fs_.ReadFile(path, 1 << 20)->size(), 19000u);
}

TEST_F(PosixFilesystemTest, WriteFileAtomicLargeData) {
  std::string big(3 * 16384 + 17, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  std::string path = Path("big.bin");
  ASSERT_TRUE(fs_.WriteFileAtomic(path, big, 0600).ok());
  auto data = fs_.ReadFile(path, 1 << 20);
  ASSERT_TRUE(data.has_value());
  EXPECT_EQ(*data, big);
}

TEST_F(PosixFilesystemTest, WriteFileAtomicIntoMissingDirFails) {
  Status st = fs_.WriteFileAtomic(Path("missing/f"), "x", 0600);
  EXPECT_EQ(st.code(), Code::kNotFound) << st.ToString();
}

TEST_F(PosixFilesystemTest, CreateFileExclusiveRefusesExistingFile) {
  ScopedUmask mask(0);
  std::string path = Path("key.pem");
  ASSERT_TRUE(fs_.CreateFileExclusive(path, "first", 0600).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);

  Status st = fs_.CreateFileExclusive(path, "second", 0644);
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  auto data = fs_.ReadFile(path, 1 << 20);
  ASSERT_TRUE(data.has_value());
  EXPECT_EQ(*data, "first");
  EXPECT_EQ(ModeOf(path), 0600u);
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(after.st_nlink, 1u);

  auto names = fs_.List(dir_);
  ASSERT_TRUE(names.has_value());
  EXPECT_EQ(*names, std::vector<std::string>{"key.pem"});
}

TEST_F(PosixFilesystemTest, CreateFileExclusiveRefusesDanglingSymlink) {
  std::string target = Path("elsewhere");
  std::string link = Path("link.pem");
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  Status st = fs_.CreateFileExclusive(link, "x", 0600);
  EXPECT_EQ(st.code(), Code::kAlreadyExists) << st.ToString();
  EXPECT_FALSE(fs_.Exists(target));
}

TEST_F(PosixFilesystemTest, MakeDirsCreatesParentsWithMode) {
  ScopedUmask mask(0);
  std::string path = Path("a/b/c");
  ASSERT_TRUE(fs_.MakeDirs(path, 0700).ok());
  EXPECT_EQ(ModeOf(path), 0700u);
  EXPECT_TRUE(fs_.Exists(Path("a/b")));
  // Existing and not more open than asked: fine, also with a trailing slash.
  EXPECT_TRUE(fs_.MakeDirs(path, 0700).ok());
  EXPECT_TRUE(fs_.MakeDirs(path + "/", 0700).ok());
  EXPECT_TRUE(fs_.MakeDirs(path, 0755).ok());
}

TEST_F(PosixFilesystemTest, MakeDirsRefusesTooOpenExistingDir) {
  std::string path = Path("keys");
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
  Status st = fs_.MakeDirs(path, 0700);
  EXPECT_EQ(st.code(), Code::kPermissionDenied) << st.ToString();
  EXPECT_NE(st.message().find("0755"), std::string::npos) << st.message();
  EXPECT_EQ(ModeOf(path), 0755u) << "MakeDirs must not chmod an existing directory";
}

TEST_F(PosixFilesystemTest, MakeDirsRefusesAFile) {
  std::string path = Path("file");
  ASSERT_TRUE(fs_.WriteFileAtomic(path, "x", 0600).ok());
  Status st = fs_.MakeDirs(path, 0700);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_EQ(fs_.MakeDirs("", 0700).code(), Code::kInvalidArgument);
}

TEST_F(PosixFilesystemTest, ReadFileMaxBytes) {
  std::string path = Path("f");
  ASSERT_TRUE(fs_.WriteFileAtomic(path, std::string(100, 'x'), 0600).ok());
  EXPECT_TRUE(fs_.ReadFile(path, 100).has_value());
  auto small = fs_.ReadFile(path, 99);
  ASSERT_FALSE(small.has_value());
  EXPECT_EQ(small.error().code(), Code::kResourceExhausted);
  auto zero = fs_.ReadFile(path, 0);
  ASSERT_FALSE(zero.has_value());
  EXPECT_EQ(zero.error().code(), Code::kResourceExhausted);

  std::string big_path = Path("big");
  ASSERT_TRUE(fs_.WriteFileAtomic(big_path, std::string(40000, 'y'), 0600).ok());
  auto big = fs_.ReadFile(big_path, 39999);
  ASSERT_FALSE(big.has_value());
  EXPECT_EQ(big.error().code(), Code::kResourceExhausted);
  EXPECT_EQ(fs_.ReadFile(big_path, 40000)->size(), 40000u);

  auto missing = fs_.ReadFile(Path("missing"), 100);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
}

TEST_F(PosixFilesystemTest, ListIsSortedAndRemoveWorks) {
  for (const char* name : {"zeta", "alpha", "Mid", "beta.pem", ".hidden"}) {
    ASSERT_TRUE(fs_.WriteFileAtomic(Path(name), name, 0600).ok());
  }
  ASSERT_TRUE(fs_.MakeDirs(Path("sub"), 0700).ok());
  auto names = fs_.List(dir_);
  ASSERT_TRUE(names.has_value());
  EXPECT_EQ(*names, (std::vector<std::string>{".hidden", "Mid", "alpha", "beta.pem", "sub", "zeta"}));

  EXPECT_TRUE(fs_.Exists(Path("alpha")));
  ASSERT_TRUE(fs_.Remove(Path("alpha")).ok());
  EXPECT_FALSE(fs_.Exists(Path("alpha")));
  EXPECT_EQ(fs_.Remove(Path("alpha")).code(), Code::kNotFound);
  names = fs_.List(dir_);
  ASSERT_TRUE(names.has_value());
  EXPECT_EQ(*names, (std::vector<std::string>{".hidden", "Mid", "beta.pem", "sub", "zeta"}));

  auto missing = fs_.List(Path("nope"));
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
}

TEST(MemFilesystemTest, FailWritesGivesResourceExhaustedAndKeepsOldContent) {
  MemFilesystem fs;
  ASSERT_TRUE(fs.WriteFileAtomic("/d/state", "old", 0600).ok());
  fs.FailWrites(true);
  Status st = fs.WriteFileAtomic("/d/state", "new", 0600);
  EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.ToString();
  EXPECT_TRUE(IsRetryable(st.code()));
  EXPECT_EQ(*fs.ReadFile("/d/state", 100), "old");
  Status excl = fs.CreateFileExclusive("/d/other", "x", 0600);
  EXPECT_EQ(excl.code(), Code::kResourceExhausted);
  EXPECT_FALSE(fs.Exists("/d/other"));

  fs.FailWrites(false);
  ASSERT_TRUE(fs.WriteFileAtomic("/d/state", "new", 0640).ok());
  EXPECT_EQ(*fs.ReadFile("/d/state", 100), "new");
  EXPECT_EQ(fs.Snapshot().at("/d/state").mode, 0640u);
}

TEST(MemFilesystemTest, BehavesLikeTheRealOne) {
  MemFilesystem fs;
  ASSERT_TRUE(fs.MakeDirs("/d", 0700).ok());
  EXPECT_TRUE(fs.Exists("/d"));
  ASSERT_TRUE(fs.CreateFileExclusive("/d/b", "1", 0600).ok());
  EXPECT_EQ(fs.CreateFileExclusive("/d/b", "2", 0600).code(), Code::kAlreadyExists);
  EXPECT_EQ(*fs.ReadFile("/d/b", 100), "1");
  ASSERT_TRUE(fs.WriteFileAtomic("/d/a", "22", 0600).ok());
  ASSERT_TRUE(fs.WriteFileAtomic("/d/sub/c", "3", 0600).ok());
  ASSERT_TRUE(fs.WriteFileAtomic("/other", "4", 0600).ok());
  EXPECT_EQ(*fs.List("/d"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(*fs.List("/d/"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(fs.ReadFile("/d/a", 1).error().code(), Code::kResourceExhausted);
  EXPECT_EQ(fs.ReadFile("/d/zz", 1).error().code(), Code::kNotFound);
  ASSERT_TRUE(fs.Remove("/d/a").ok());
  EXPECT_EQ(fs.Remove("/d/a").code(), Code::kNotFound);
  EXPECT_FALSE(fs.Exists("/d/a"));
}

TEST(PathTest, JoinAndDirName) {
  EXPECT_EQ(JoinPath("/a", "b"), "/a/b");
  EXPECT_EQ(JoinPath("/a/", "b"), "/a/b");
  EXPECT_EQ(JoinPath("/a", "/b"), "/a/b");
  EXPECT_EQ(JoinPath("", "b"), "b");
  EXPECT_EQ(DirName("/a/b"), "/a");
  EXPECT_EQ(DirName("/a"), "/");
  EXPECT_EQ(DirName("a"), ".");
}

}  // namespace
}  // namespace certfleet::shared
