#include "hal/keystore.h"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "hal/file_keystore.h"
#include "hal/memory_keystore.h"
#include "shared/testing/scoped_umask.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::hal {
namespace {

using shared::Code;
using shared::EvpPkeyPtr;
using shared::ScopedUmask;
using shared::TempDir;

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// Verifies a SignSha256 signature with only the public half of `key`.
bool VerifiesWithPublicKey(EVP_PKEY* key, std::string_view data, const std::string& sig) {
  auto der = shared::PublicKeyDer(key);
  if (!der) return false;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der->data());
  EvpPkeyPtr pub(d2i_PUBKEY(nullptr, &p, static_cast<long>(der->size())));
  if (!pub) return false;
  shared::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok = ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, pub.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  shared::DrainOpenSslErrors();
  return ok;
}

EvpPkeyPtr SoftwareKey(KeyType type = KeyType::kEcP256) {
  auto key = shared::GenerateKeyPair(type);
  EXPECT_TRUE(key.has_value());
  return key ? std::move(*key) : nullptr;
}

// ---- The same contract over every backend ----

enum class Backend { kMemory, kFileOnMemFs, kFileOnPosixFs };

std::string BackendName(Backend b) {
  switch (b) {
    case Backend::kMemory: return "Memory";
    case Backend::kFileOnMemFs: return "FileOnMemFs";
    case Backend::kFileOnPosixFs: return "FileOnPosixFs";
  }
  return "Unknown";
}
// Names the parameter in test output.
void PrintTo(Backend b, std::ostream* os) { *os << BackendName(b); }

class KeyStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    switch (GetParam()) {
      case Backend::kMemory:
        store_ = std::make_unique<MemoryKeyStore>();
        return;
      case Backend::kFileOnMemFs:
        fs_ = &mem_fs_;
        dir_ = "/var/lib/certfleet-agent/keys";
        break;
      case Backend::kFileOnPosixFs:
        ASSERT_FALSE(tmp_.path().empty());
        fs_ = &posix_fs_;
        dir_ = tmp_.path() + "/keys";
        break;
    }
    store_ = OpenFileStore();
    ASSERT_NE(store_, nullptr);
  }

  std::unique_ptr<KeyStore> OpenFileStore() {
    auto store = FileKeyStore::Open(dir_, *fs_);
    EXPECT_TRUE(store.has_value()) << store.error().ToString();
    if (!store) return nullptr;
    file_store_ = store->get();
    return std::move(*store);
  }

  bool IsFile() const { return GetParam() != Backend::kMemory; }

  std::vector<std::string> Slots() {
    auto list = store_->List();
    EXPECT_TRUE(list.has_value()) << list.error().ToString();
    return list ? *list : std::vector<std::string>{};
  }

  TempDir tmp_;
  shared::MemFilesystem mem_fs_;
  shared::PosixFilesystem posix_fs_;
  shared::Filesystem* fs_ = nullptr;
  std::string dir_;
  FileKeyStore* file_store_ = nullptr;  // set for the file backends
  std::unique_ptr<KeyStore> store_;
};

TEST_P(KeyStoreTest, GenerateLoadListDelete) {
  EXPECT_TRUE(Slots().empty());
  auto a = store_->Generate("current", KeyType::kEcP256);
  ASSERT_TRUE(a.has_value()) << a.error().ToString();
  EXPECT_EQ((*a)->slot(), "current");
  ASSERT_NE((*a)->pkey(), nullptr);
  EXPECT_EQ(shared::DescribeKey((*a)->pkey()).curve, "prime256v1");
  if (IsFile()) {
    EXPECT_EQ(store_->backend(), "file");
    EXPECT_EQ((*a)->uri(), "file:" + dir_ + "/current.key.pem");
    EXPECT_EQ(file_store_->PathOf("current"), dir_ + "/current.key.pem");
  } else {
    EXPECT_EQ(store_->backend(), "memory");
    EXPECT_EQ((*a)->uri(), "memory:current");
  }

  auto loaded = store_->Load("current");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_TRUE(shared::SamePublicKey((*a)->pkey(), (*loaded)->pkey()));
  EXPECT_EQ((*loaded)->slot(), "current");
  EXPECT_EQ((*loaded)->uri(), (*a)->uri());

  auto b = store_->Generate("b-slot", KeyType::kEcP384);
  ASSERT_TRUE(b.has_value()) << b.error().ToString();
  EXPECT_FALSE(shared::SamePublicKey((*a)->pkey(), (*b)->pkey()));
  EXPECT_EQ(Slots(), (std::vector<std::string>{"b-slot", "current"}));

  ASSERT_TRUE(store_->Delete("current").ok());
  EXPECT_EQ(Slots(), std::vector<std::string>{"b-slot"});
  auto gone = store_->Load("current");
  ASSERT_FALSE(gone.has_value());
  EXPECT_EQ(gone.error().code(), Code::kNotFound);
  EXPECT_EQ(store_->Delete("current").code(), Code::kNotFound);

  // A handle stays usable after its slot was deleted: it holds its own reference.
  EXPECT_EQ(shared::DescribeKey((*a)->pkey()).algorithm, "EC");
  // The slot is free again.
  EXPECT_TRUE(store_->Generate("current", KeyType::kEcP256).has_value());
}

TEST_P(KeyStoreTest, GenerateIntoUsedSlotKeepsTheOriginal) {
  auto first = store_->Generate("a", KeyType::kEcP256);
  ASSERT_TRUE(first.has_value());
  auto again = store_->Generate("a", KeyType::kEcP256);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Code::kAlreadyExists) << again.error().ToString();

  EvpPkeyPtr other = SoftwareKey();
  auto imported = store_->Import("a", other.get());
  ASSERT_FALSE(imported.has_value());
  EXPECT_EQ(imported.error().code(), Code::kAlreadyExists);

  auto loaded = store_->Load("a");
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(shared::SamePublicKey((*first)->pkey(), (*loaded)->pkey()));
  EXPECT_EQ(Slots(), std::vector<std::string>{"a"});
}

TEST_P(KeyStoreTest, BadSlotNamesAreInvalidArgument) {
  EvpPkeyPtr key = SoftwareKey();
  for (const std::string& slot : {std::string(""), std::string("../x"), std::string(".hidden"),
                                  std::string(65, 'a'), std::string("a/b"), std::string("/abs"), std::string("a b"),
                                  std::string("a\nb"), std::string("a\0b", 3), std::string(".."),
                                  std::string("caf\xc3\xa9")}) {
    SCOPED_TRACE(::testing::PrintToString(slot));
    EXPECT_EQ(ValidateSlotName(slot).code(), Code::kInvalidArgument);
    auto gen = store_->Generate(slot, KeyType::kEcP256);
    ASSERT_FALSE(gen.has_value());
    EXPECT_EQ(gen.error().code(), Code::kInvalidArgument);
    auto imp = store_->Import(slot, key.get());
    ASSERT_FALSE(imp.has_value());
    EXPECT_EQ(imp.error().code(), Code::kInvalidArgument);
    auto load = store_->Load(slot);
    ASSERT_FALSE(load.has_value());
    EXPECT_EQ(load.error().code(), Code::kInvalidArgument);
    EXPECT_EQ(store_->Delete(slot).code(), Code::kInvalidArgument);
  }
  EXPECT_TRUE(Slots().empty());
  if (GetParam() == Backend::kFileOnPosixFs) {
    // Nothing escaped the key directory.
    EXPECT_EQ(::access((tmp_.path() + "/x.key.pem").c_str(), F_OK), -1);
  }

  // The edges of what is allowed.
  for (const std::string& slot : {std::string(64, 'z'), std::string("a"), std::string("A.b-c_9"),
                                  std::string("x..y"), std::string("trailing.")}) {
    SCOPED_TRACE(slot);
    EXPECT_TRUE(ValidateSlotName(slot).ok());
    EXPECT_TRUE(store_->Generate(slot, KeyType::kEcP256).has_value());
  }
}

TEST_P(KeyStoreTest, LoadMissingIsNotFound) {
  auto r = store_->Load("nothing-here");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kNotFound) << r.error().ToString();
  EXPECT_EQ(store_->Delete("nothing-here").code(), Code::kNotFound);
}

TEST_P(KeyStoreTest, SignSha256VerifiesWithThePublicKey) {
  const std::string data = "proof of possession";
  for (KeyType type : {KeyType::kEcP256, KeyType::kRsa2048}) {
    std::string slot = std::string(shared::KeyTypeName(type));
    SCOPED_TRACE(slot);
    auto key = store_->Generate(slot, type);
    ASSERT_TRUE(key.has_value()) << key.error().ToString();
    auto sig = SignSha256(**key, data);
    ASSERT_TRUE(sig.has_value()) << sig.error().ToString();
    EXPECT_FALSE(sig->empty());
    EXPECT_TRUE(VerifiesWithPublicKey((*key)->pkey(), data, *sig));
    EXPECT_FALSE(VerifiesWithPublicKey((*key)->pkey(), data + "!", *sig));
    std::string bad = *sig;
    bad[bad.size() / 2] ^= 0x20;
    EXPECT_FALSE(VerifiesWithPublicKey((*key)->pkey(), data, bad));

    // A key loaded back signs for the same public key.
    auto loaded = store_->Load(slot);
    ASSERT_TRUE(loaded.has_value());
    auto sig2 = SignSha256(**loaded, data);
    ASSERT_TRUE(sig2.has_value());
    EXPECT_TRUE(VerifiesWithPublicKey((*key)->pkey(), data, *sig2));
  }
  auto empty_sig = SignSha256(**store_->Load("ec-p256"), "");
  ASSERT_TRUE(empty_sig.has_value());
  EXPECT_TRUE(VerifiesWithPublicKey((*store_->Load("ec-p256"))->pkey(), "", *empty_sig));
}

TEST_P(KeyStoreTest, ImportStoresAnExistingKey) {
  EvpPkeyPtr key = SoftwareKey(KeyType::kEcP384);
  auto handle = store_->Import("ca", key.get());
  ASSERT_TRUE(handle.has_value()) << handle.error().ToString();
  EXPECT_TRUE(shared::SamePublicKey((*handle)->pkey(), key.get()));
  key.reset();  // the store keeps its own reference or copy
  auto loaded = store_->Load("ca");
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(shared::SamePublicKey((*loaded)->pkey(), (*handle)->pkey()));
  auto sig = SignSha256(**loaded, "x");
  ASSERT_TRUE(sig.has_value());
  EXPECT_TRUE(VerifiesWithPublicKey((*handle)->pkey(), "x", *sig));
  EXPECT_EQ(Slots(), std::vector<std::string>{"ca"});
}

INSTANTIATE_TEST_SUITE_P(Backends, KeyStoreTest,
                         ::testing::Values(Backend::kMemory, Backend::kFileOnMemFs, Backend::kFileOnPosixFs),
                         [](const ::testing::TestParamInfo<Backend>& param_info) {
                           return BackendName(param_info.param);
                         });

// The file backend on both filesystems.
class FileBackendTest : public KeyStoreTest {};

TEST_P(FileBackendTest, FileKeysSurviveReopen) {
  auto key = store_->Generate("persist", KeyType::kEcP256);
  ASSERT_TRUE(key.has_value());
  store_.reset();
  store_ = OpenFileStore();
  ASSERT_NE(store_, nullptr);
  auto loaded = store_->Load("persist");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_TRUE(shared::SamePublicKey((*key)->pkey(), (*loaded)->pkey()));
  EXPECT_EQ(Slots(), std::vector<std::string>{"persist"});
}

TEST_P(FileBackendTest, CorruptKeyFileIsDataLossAndNeverOverwritten) {
  const std::string path = file_store_->PathOf("broken");
  for (const std::string& junk : {std::string("not a key\n"), std::string(""),
                                  std::string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}) {
    SCOPED_TRACE(::testing::PrintToString(junk));
    ASSERT_TRUE(fs_->WriteFileAtomic(path, junk, 0600).ok());
    auto r = store_->Load("broken");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kDataLoss) << r.error().ToString();
    EXPECT_EQ(shared::DrainOpenSslErrors(), "");
  }
  auto gen = store_->Generate("broken", KeyType::kEcP256);
  ASSERT_FALSE(gen.has_value());
  EXPECT_EQ(gen.error().code(), Code::kAlreadyExists);
  EXPECT_EQ(*fs_->ReadFile(path, 1 << 20), std::string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"));
}

TEST_P(FileBackendTest, ListIgnoresOtherFiles) {
  ASSERT_TRUE(store_->Generate("real", KeyType::kEcP256).has_value());
  for (const char* name : {"notes.txt", ".real.key.pem.tmp-0123456789abcdef", ".key.pem", "x.key.pem.bak"}) {
    ASSERT_TRUE(fs_->WriteFileAtomic(dir_ + "/" + name, "x", 0600).ok());
  }
  EXPECT_EQ(Slots(), std::vector<std::string>{"real"});
}

INSTANTIATE_TEST_SUITE_P(Filesystems, FileBackendTest,
                         ::testing::Values(Backend::kFileOnMemFs, Backend::kFileOnPosixFs),
                         [](const ::testing::TestParamInfo<Backend>& param_info) {
                           return BackendName(param_info.param);
                         });

// ---- File backend on disk ----

TEST(FileKeyStoreTest, ModesOnDiskUnderPermissiveUmask) {
  ScopedUmask mask(0);
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  shared::PosixFilesystem fs;
  const std::string dir = tmp.path() + "/state/keys";
  auto store = FileKeyStore::Open(dir, fs);
  ASSERT_TRUE(store.has_value()) << store.error().ToString();
  EXPECT_EQ(ModeOf(dir), 0700u);

  ASSERT_TRUE((*store)->Generate("gen", KeyType::kEcP256).has_value());
  EvpPkeyPtr key = SoftwareKey();
  ASSERT_TRUE((*store)->Import("imp", key.get()).has_value());
  for (const char* slot : {"gen", "imp"}) {
    std::string path = (*store)->PathOf(slot);
    EXPECT_EQ(ModeOf(path), 0600u) << path;
    auto pem = fs.ReadFile(path, 1 << 20);
    ASSERT_TRUE(pem.has_value());
    EXPECT_EQ(pem->rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  }
  // Only the key files: no temporary file left behind.
  auto names = fs.List(dir);
  ASSERT_TRUE(names.has_value());
  EXPECT_EQ(*names, (std::vector<std::string>{"gen.key.pem", "imp.key.pem"}));
}

TEST(FileKeyStoreTest, RefusesTooOpenDirectory) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string dir = tmp.path() + "/keys";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0750), 0);
  shared::PosixFilesystem fs;
  auto store = FileKeyStore::Open(dir, fs);
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code(), Code::kPermissionDenied) << store.error().ToString();
}

TEST(FileKeyStoreTest, RecordsModesOnMemFilesystem) {
  shared::MemFilesystem fs;
  auto store = FileKeyStore::Open("/keys", fs);
  ASSERT_TRUE(store.has_value());
  ASSERT_TRUE((*store)->Generate("a", KeyType::kEcP256).has_value());
  auto files = fs.Snapshot();
  ASSERT_EQ(files.count("/keys/a.key.pem"), 1u);
  EXPECT_EQ(files.at("/keys/a.key.pem").mode, 0600u);
}

TEST(FileKeyStoreTest, FailedWriteLeavesTheSlotEmpty) {
  shared::MemFilesystem fs;
  auto opened = FileKeyStore::Open("/keys", fs);
  ASSERT_TRUE(opened.has_value());
  FileKeyStore& store = **opened;
  fs.FailWrites(true);
  auto gen = store.Generate("a", KeyType::kEcP256);
  ASSERT_FALSE(gen.has_value());
  EXPECT_EQ(gen.error().code(), Code::kResourceExhausted);
  fs.FailWrites(false);
  EXPECT_EQ(store.Load("a").error().code(), Code::kNotFound);
  EXPECT_TRUE(store.Generate("a", KeyType::kEcP256).has_value());
}

// ---- Factory ----

TEST(OpenKeyStoreTest, ChoosesBackendFromConfig) {
  shared::MemFilesystem fs;
  KeyStoreConfig memory;
  memory.backend = "memory";
  auto m = OpenKeyStore(memory, fs);
  ASSERT_TRUE(m.has_value()) << m.error().ToString();
  EXPECT_EQ((*m)->backend(), "memory");

  KeyStoreConfig file;
  file.dir = "/var/lib/certfleet-agent/keys";
  auto f = OpenKeyStore(file, fs);  // "file" is the default backend
  ASSERT_TRUE(f.has_value()) << f.error().ToString();
  EXPECT_EQ((*f)->backend(), "file");
  ASSERT_TRUE((*f)->Generate("a", KeyType::kEcP256).has_value());
  EXPECT_TRUE(fs.Exists("/var/lib/certfleet-agent/keys/a.key.pem"));

  KeyStoreConfig no_dir;
  no_dir.backend = "file";
  auto nd = OpenKeyStore(no_dir, fs);
  ASSERT_FALSE(nd.has_value());
  EXPECT_EQ(nd.error().code(), Code::kInvalidArgument);

  for (const char* name : {"", "pkcs11-not-built", "FILE", "tpm?"}) {
    KeyStoreConfig unknown;
    unknown.backend = name;
    unknown.dir = "/x";
    auto u = OpenKeyStore(unknown, fs);
    ASSERT_FALSE(u.has_value()) << name;
    EXPECT_EQ(u.error().code(), Code::kInvalidArgument);
  }
}

TEST(OpenKeyStoreTest, FileBackendPropagatesDirectoryErrors) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  const std::string dir = tmp.path() + "/open";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  KeyStoreConfig config;
  config.dir = dir;
  auto store = OpenKeyStore(config, shared::PosixFilesystem::Instance());
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code(), Code::kPermissionDenied);
}

}  // namespace
}  // namespace certfleet::hal
