// One contract, every backend: the memory, file and PKCS#11 (SoftHSM2) key stores must
// generate, load, sign, build CSRs, authenticate a TLS client, rotate A/B, survive a
// restart and delete the same way. Hardware fixtures start from a fresh token per suite;
// a missing softhsm2-util is a failure, not a skip (the package is a build dependency).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "hal/file_keystore.h"
#include "hal/keystore.h"
#include "hal/memory_keystore.h"
#include "hal/pkcs11_keystore.h"
#include "hal/tpm_keystore.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::hal {
namespace {

using shared::Code;
using shared::EvpPkeyPtr;
using shared::TempDir;
using shared::X509Ptr;

// ---- Backends ----

struct MemoryBackend {
  static constexpr bool kPersistent = false;
  static constexpr bool kHardware = false;
  static constexpr bool kRsa = true;
  static void SetUpSuite() {}
  static void TearDownSuite() {}
  void SetUp() { store_ = std::make_shared<MemoryKeyStore>(); }
  // Memory keys die with the process: "reopening" returns the same store.
  std::shared_ptr<KeyStore> Open() { return store_; }
  std::shared_ptr<MemoryKeyStore> store_;
};

struct FileBackend {
  static constexpr bool kPersistent = true;
  static constexpr bool kHardware = false;
  static constexpr bool kRsa = true;
  static void SetUpSuite() {}
  static void TearDownSuite() {}
  void SetUp() { ASSERT_FALSE(tmp_.path().empty()); }
  std::shared_ptr<KeyStore> Open() {
    auto s = FileKeyStore::Open(tmp_.path() + "/keys", shared::PosixFilesystem::Instance());
    EXPECT_TRUE(s.has_value()) << s.error().ToString();
    return s ? std::shared_ptr<KeyStore>(std::move(*s)) : nullptr;
  }
  TempDir tmp_;
};

// SoftHSM2 with its own config and token directory for the whole suite; every test gets
// a fresh token (a new label), so tests do not see each other's keys.
struct Pkcs11Backend {
  static constexpr bool kPersistent = true;
  static constexpr bool kHardware = true;
  static constexpr bool kRsa = true;
  static constexpr const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";
  static constexpr const char* kPin = "4321-user";

  static inline TempDir* suite_dir = nullptr;
  static inline int token_counter = 0;

  static void SetUpSuite() {
    ASSERT_EQ(std::system("command -v softhsm2-util >/dev/null"), 0) << "softhsm2-util missing: install softhsm2";
    ASSERT_EQ(::access(kModule, R_OK), 0) << kModule << " missing: install softhsm2";
    suite_dir = new TempDir();
    ASSERT_FALSE(suite_dir->path().empty());
    std::string tokens = suite_dir->path() + "/tokens";
    ASSERT_EQ(::mkdir(tokens.c_str(), 0700), 0);
    std::string conf = suite_dir->path() + "/softhsm2.conf";
    std::ofstream(conf) << "directories.tokendir = " << tokens << "\nobjectstore.backend = file\nlog.level = ERROR\n";
    ::setenv("SOFTHSM2_CONF", conf.c_str(), 1);
  }
  static void TearDownSuite() {
    delete suite_dir;
    suite_dir = nullptr;
  }

  static std::string InitToken(const std::string& label) {
    std::string cmd = "softhsm2-util --init-token --free --label '" + label + "' --so-pin 12345678 --pin " + kPin +
                      " >/dev/null";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return label;
  }

  void SetUp() {
    ASSERT_NE(suite_dir, nullptr);
    token_ = InitToken("cf-" + std::to_string(::getpid()) + "-" + std::to_string(++token_counter));
    pin_file_ = suite_dir->path() + "/" + token_ + ".pin";
    std::ofstream(pin_file_) << kPin << "\n";
    ASSERT_EQ(::chmod(pin_file_.c_str(), 0600), 0);
  }

  KeyStoreConfig Config() const {
    KeyStoreConfig c;
    c.backend = "pkcs11";
    c.uri = "pkcs11:token=" + token_ + "?module-path=" + kModule;
    c.pin_file = pin_file_;
    return c;
  }

  std::shared_ptr<KeyStore> Open() {
    auto s = OpenKeyStore(Config(), shared::PosixFilesystem::Instance());
    EXPECT_TRUE(s.has_value()) << s.error().ToString();
    return s ? std::shared_ptr<KeyStore>(std::move(*s)) : nullptr;
  }

  std::string token_;
  std::string pin_file_;
};

// A loopback TCP listener on an ephemeral port (or on *port if it is not 0), handed to
// a child process by fd.
int ListenLoopback(int* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(*port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 8) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

// True once `port` on loopback accepts connections; false if `pid` exited first or
// nothing accepted within 10 s (then the process is killed).
bool WaitAccepting(pid_t pid, int port) {
  for (int i = 0; i < 1000; ++i) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) return false;
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (ok) return true;
    ::poll(nullptr, 0, 10);  // the process is starting: check again shortly
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return false;
}

// A software TPM (swtpm) with a fresh state directory for the whole suite, on
// ephemeral loopback ports.
struct TpmBackend {
  static constexpr bool kPersistent = true;
  static constexpr bool kHardware = true;
  static constexpr bool kRsa = false;

  static inline TempDir* suite_dir = nullptr;
  static inline pid_t swtpm = -1;
  static inline std::string tcti;

  static void SetUpSuite() {
    ASSERT_EQ(std::system("command -v swtpm >/dev/null"), 0) << "swtpm missing: install swtpm and swtpm-tools";
    suite_dir = new TempDir();
    ASSERT_FALSE(suite_dir->path().empty());
    std::string state = suite_dir->path() + "/tpm";
    ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
    // The swtpm TCTI expects the control port right after the server port. swtpm binds
    // them itself (it serves one listener per connection otherwise), so: find two free
    // adjacent ephemeral ports, start swtpm on them, wait until it accepts, and start
    // over on other ports if another process took them in between.
    int port = 0;
    for (int attempt = 0; attempt < 20 && swtpm < 0; ++attempt) {
      port = 0;
      int server_fd = ListenLoopback(&port);
      ASSERT_GE(server_fd, 0);
      int ctrl_port = port + 1;
      int ctrl_fd = ctrl_port < 65536 ? ListenLoopback(&ctrl_port) : -1;
      ::close(server_fd);
      if (ctrl_fd < 0) continue;
      ::close(ctrl_fd);
      std::string server_arg = "type=tcp,bindaddr=127.0.0.1,port=" + std::to_string(port);
      std::string ctrl_arg = "type=tcp,bindaddr=127.0.0.1,port=" + std::to_string(port + 1);
      std::string state_arg = "dir=" + state;
      pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        ::execlp("swtpm", "swtpm", "socket", "--tpm2", "--server", server_arg.c_str(), "--ctrl", ctrl_arg.c_str(),
                 "--tpmstate", state_arg.c_str(), "--flags", "startup-clear", static_cast<char*>(nullptr));
        ::_exit(127);
      }
      if (WaitAccepting(pid, port + 1)) swtpm = pid;
    }
    ASSERT_GT(swtpm, 0) << "swtpm did not start";
    tcti = "swtpm:host=127.0.0.1,port=" + std::to_string(port);
  }
  static void TearDownSuite() {
    if (swtpm > 0) {
      ::kill(swtpm, SIGTERM);
      ::waitpid(swtpm, nullptr, 0);
      swtpm = -1;
    }
    delete suite_dir;
    suite_dir = nullptr;
  }

  void SetUp() { ASSERT_FALSE(tmp_.path().empty()); }
  KeyStoreConfig Config() const {
    KeyStoreConfig c;
    c.backend = "tpm";
    c.dir = tmp_.path() + "/keys";
    c.tcti = tcti;
    return c;
  }
  std::shared_ptr<KeyStore> Open() {
    auto s = OpenKeyStore(Config(), shared::PosixFilesystem::Instance());
    EXPECT_TRUE(s.has_value()) << s.error().ToString();
    return s ? std::shared_ptr<KeyStore>(std::move(*s)) : nullptr;
  }
  TempDir tmp_;
};

template <class B>
class KeyStoreConformance : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { B::SetUpSuite(); }
  static void TearDownTestSuite() { B::TearDownSuite(); }
  void SetUp() override {
    backend_.SetUp();
    store_ = backend_.Open();
    ASSERT_NE(store_, nullptr);
  }

  std::unique_ptr<KeyHandle> MustGenerate(std::string_view slot, KeyType type = KeyType::kEcP256) {
    auto h = store_->Generate(slot, type);
    EXPECT_TRUE(h.has_value()) << h.error().ToString();
    return h ? std::move(*h) : nullptr;
  }

  B backend_;
  std::shared_ptr<KeyStore> store_;
};

using Backends = ::testing::Types<MemoryBackend, FileBackend, Pkcs11Backend, TpmBackend>;
class BackendNames {
 public:
  template <class T>
  static std::string GetName(int) {
    if (std::is_same_v<T, MemoryBackend>) return "Memory";
    if (std::is_same_v<T, FileBackend>) return "File";
    if (std::is_same_v<T, Pkcs11Backend>) return "Pkcs11SoftHsm";
    return "TpmSwtpm";
  }
};
TYPED_TEST_SUITE(KeyStoreConformance, Backends, BackendNames);

// ---- Helpers: verification with the public key only, a CA, a TLS server ----

EvpPkeyPtr PublicOnly(EVP_PKEY* key) {
  auto der = shared::PublicKeyDer(key);
  if (!der) return nullptr;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der->data());
  return EvpPkeyPtr(d2i_PUBKEY(nullptr, &p, static_cast<long>(der->size())));
}

bool Verifies(EVP_PKEY* key, std::string_view data, const std::string& sig) {
  EvpPkeyPtr pub = PublicOnly(key);
  return pub && shared::VerifySha256(pub.get(), data, sig).ok();
}

X509Ptr MakeCert(EVP_PKEY* subject_key, const std::string& cn, EVP_PKEY* issuer_key, X509* issuer, bool ca) {
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), static_cast<long>(std::rand() & 0x7fffffff) + 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509_set_pubkey(cert.get(), subject_key);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
  X509_add_ext(cert.get(), ext, -1);
  X509_EXTENSION_free(ext);
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0) return nullptr;
  return cert;
}

// Runs one TLS 1.3 (or 1.2) handshake on loopback: an in-process server that requires
// a client certificate from `ca`, and a client presenting `client_cert` with the store's
// key. Returns the subject CN the server saw, or an error text.
std::string MtlsHandshake(EVP_PKEY* client_key, X509* client_cert, X509* ca, EVP_PKEY* server_key, X509* server_cert,
                          int max_version = TLS1_3_VERSION) {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof(addr);
  if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(lfd, 1) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) {
    return "loopback listen failed";
  }
  std::string seen;
  std::thread server([&] {
    int fd = ::accept(lfd, nullptr, nullptr);
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(ctx, server_cert);
    SSL_CTX_use_PrivateKey(ctx, server_key);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      X509* peer = SSL_get0_peer_certificate(ssl);
      char cn[256] = {};
      if (peer != nullptr) X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof(cn));
      seen = cn;
      char b;
      SSL_read(ssl, &b, 1);
      SSL_write(ssl, "k", 1);
    } else {
      seen = "server: " + shared::OpenSslStatus(Code::kInternal, "accept").ToString();
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ::close(fd);
  });
  int cfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::string client_error;
  if (::connect(cfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(ctx, max_version);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    if (SSL_CTX_use_certificate(ctx, client_cert) != 1 || SSL_CTX_use_PrivateKey(ctx, client_key) != 1) {
      client_error = shared::OpenSslStatus(Code::kInternal, "client key").ToString();
    }
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, cfd);
    if (SSL_connect(ssl) == 1) {
      // In TLS 1.3 the server checks the client's CertificateVerify after the client is done.
      SSL_write(ssl, "p", 1);
      char b;
      SSL_read(ssl, &b, 1);
    } else if (client_error.empty()) {
      client_error = "client: " + shared::OpenSslStatus(Code::kInternal, "connect").ToString();
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
  }
  ::close(cfd);
  server.join();
  ::close(lfd);
  shared::DrainOpenSslErrors();
  return seen.empty() || seen.rfind("server:", 0) == 0 ? seen + " " + client_error : seen;
}

// ---- The contract ----

TYPED_TEST(KeyStoreConformance, GenerateLoadSignVerify) {
  auto a = this->MustGenerate("current");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->slot(), "current");
  EXPECT_EQ(shared::DescribeKey(a->pkey()).curve, "prime256v1");
  auto sig = SignSha256(*a, "hello");
  ASSERT_TRUE(sig.has_value()) << sig.error().ToString();
  EXPECT_TRUE(Verifies(a->pkey(), "hello", *sig));
  EXPECT_FALSE(Verifies(a->pkey(), "hellO", *sig));

  auto loaded = this->store_->Load("current");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_TRUE(shared::SamePublicKey(a->pkey(), (*loaded)->pkey()));
  EXPECT_EQ((*loaded)->uri(), a->uri());
  auto sig2 = SignSha256(**loaded, "world");
  ASSERT_TRUE(sig2.has_value()) << sig2.error().ToString();
  EXPECT_TRUE(Verifies(a->pkey(), "world", *sig2));

  if (TypeParam::kHardware) {
    // No code path can turn a token key into PEM: the private half is not in the process.
    EXPECT_FALSE(shared::PrivateKeyToPem(a->pkey()).has_value());
    shared::DrainOpenSslErrors();
  }
}

TYPED_TEST(KeyStoreConformance, RsaKeysSignToo) {
  if (!TypeParam::kRsa) {
    auto rsa = this->store_->Generate("rsa", KeyType::kRsa2048);
    ASSERT_FALSE(rsa.has_value());
    EXPECT_EQ(rsa.error().code(), Code::kUnimplemented);
    return;
  }
  auto a = this->MustGenerate("rsa", KeyType::kRsa2048);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(shared::DescribeKey(a->pkey()).bits, 2048);
  auto sig = SignSha256(*a, "data");
  ASSERT_TRUE(sig.has_value()) << sig.error().ToString();
  EXPECT_TRUE(Verifies(a->pkey(), "data", *sig));
}

TYPED_TEST(KeyStoreConformance, BuildsAVerifiableCsr) {
  auto a = this->MustGenerate("csr-key");
  ASSERT_NE(a, nullptr);
  shared::CsrRequest req;
  req.common_name = "gw-0001";
  req.dns_names = {"gw-0001.example"};
  auto csr = shared::BuildCsr(a->pkey(), req);
  ASSERT_TRUE(csr.has_value()) << csr.error().ToString();
  EXPECT_TRUE(shared::VerifyCsrSignature(csr->get()).ok());
  EvpPkeyPtr in_csr(X509_REQ_get_pubkey(csr->get()));
  EXPECT_TRUE(shared::SamePublicKey(in_csr.get(), a->pkey()));
}

TYPED_TEST(KeyStoreConformance, AuthenticatesAnMtlsClient) {
  auto ca_key = shared::GenerateKeyPair(KeyType::kEcP256);
  auto server_key = shared::GenerateKeyPair(KeyType::kEcP256);
  ASSERT_TRUE(ca_key && server_key);
  X509Ptr ca = MakeCert(ca_key->get(), "conformance CA", ca_key->get(), nullptr, true);
  X509Ptr server = MakeCert(server_key->get(), "localhost", ca_key->get(), ca.get(), false);
  for (KeyType type : {KeyType::kEcP256, KeyType::kRsa2048}) {
    if (type == KeyType::kRsa2048 && !TypeParam::kRsa) continue;
    std::string slot = type == KeyType::kEcP256 ? "tls-ec" : "tls-rsa";
    auto key = this->MustGenerate(slot, type);
    ASSERT_NE(key, nullptr);
    X509Ptr client = MakeCert(key->pkey(), "gw-" + slot, ca_key->get(), ca.get(), false);
    ASSERT_NE(client, nullptr);
    // TLS 1.3 (RSA-PSS for RSA keys) and TLS 1.2 (PKCS#1 v1.5 or ECDSA).
    EXPECT_EQ(MtlsHandshake(key->pkey(), client.get(), ca.get(), server_key->get(), server.get()), "gw-" + slot);
    EXPECT_EQ(MtlsHandshake(key->pkey(), client.get(), ca.get(), server_key->get(), server.get(), TLS1_2_VERSION),
              "gw-" + slot);
  }
}

TYPED_TEST(KeyStoreConformance, RotatesAB) {
  auto a = this->MustGenerate("id-a");
  ASSERT_NE(a, nullptr);
  // The new key is created beside the old one; both stay usable until the commit.
  auto b = this->MustGenerate("id-b");
  ASSERT_NE(b, nullptr);
  EXPECT_FALSE(shared::SamePublicKey(a->pkey(), b->pkey()));
  auto list = this->store_->List();
  ASSERT_TRUE(list.has_value());
  EXPECT_EQ(*list, (std::vector<std::string>{"id-a", "id-b"}));
  ASSERT_TRUE(SignSha256(*a, "old").has_value());
  // Commit: the old key goes, the new one stays.
  ASSERT_TRUE(this->store_->Delete("id-a").ok());
  auto b2 = this->store_->Load("id-b");
  ASSERT_TRUE(b2.has_value());
  EXPECT_TRUE(shared::SamePublicKey(b->pkey(), (*b2)->pkey()));
  EXPECT_EQ(this->store_->Load("id-a").error().code(), Code::kNotFound);
  // The next rotation reuses the freed slot name for a new key.
  auto a2 = this->MustGenerate("id-a");
  ASSERT_NE(a2, nullptr);
  EXPECT_FALSE(shared::SamePublicKey(a->pkey(), a2->pkey()));
}

TYPED_TEST(KeyStoreConformance, SurvivesARestart) {
  std::string pub;
  {
    auto a = this->MustGenerate("persist");
    ASSERT_NE(a, nullptr);
    pub = *shared::PublicKeyDer(a->pkey());
  }
  this->store_.reset();
  this->store_ = this->backend_.Open();
  ASSERT_NE(this->store_, nullptr);
  auto loaded = this->store_->Load("persist");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_EQ(*shared::PublicKeyDer((*loaded)->pkey()), pub);
  auto sig = SignSha256(**loaded, "after restart");
  ASSERT_TRUE(sig.has_value()) << sig.error().ToString();
  EXPECT_TRUE(Verifies((*loaded)->pkey(), "after restart", *sig));
}

TYPED_TEST(KeyStoreConformance, ErrorsForMissingAndTakenSlots) {
  EXPECT_EQ(this->store_->Load("absent").error().code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Delete("absent").code(), Code::kNotFound);
  EXPECT_EQ(this->store_->Load("../etc").error().code(), Code::kInvalidArgument);
  auto a = this->MustGenerate("taken");
  ASSERT_NE(a, nullptr);
  auto again = this->store_->Generate("taken", KeyType::kEcP256);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Code::kAlreadyExists);
  // The first key is still there and unchanged.
  auto loaded = this->store_->Load("taken");
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(shared::SamePublicKey(a->pkey(), (*loaded)->pkey()));
  ASSERT_TRUE(this->store_->Delete("taken").ok());
  EXPECT_EQ(this->store_->Load("taken").error().code(), Code::kNotFound);
  auto list = this->store_->List();
  ASSERT_TRUE(list.has_value());
  EXPECT_TRUE(list->empty());
}

// ---- PKCS#11-only error cases ----

class Pkcs11Errors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { Pkcs11Backend::SetUpSuite(); }
  static void TearDownTestSuite() { Pkcs11Backend::TearDownSuite(); }
  void SetUp() override { backend_.SetUp(); }
  Pkcs11Backend backend_;
};

TEST_F(Pkcs11Errors, WrongPinIsUnauthenticated) {
  std::ofstream(backend_.pin_file_, std::ios::trunc) << "0000\n";
  auto s = OpenKeyStore(backend_.Config(), shared::PosixFilesystem::Instance());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kUnauthenticated) << s.error().ToString();
  EXPECT_NE(s.error().ToString().find("wrong PIN"), std::string::npos) << s.error().ToString();
  EXPECT_EQ(s.error().ToString().find("0000"), std::string::npos) << "the PIN must not appear in errors";
}

TEST_F(Pkcs11Errors, MissingTokenIsNotFound) {
  KeyStoreConfig c = backend_.Config();
  c.uri = std::string("pkcs11:token=no-such-token?module-path=") + Pkcs11Backend::kModule;
  auto s = OpenKeyStore(c, shared::PosixFilesystem::Instance());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kNotFound);
  EXPECT_NE(s.error().ToString().find("no-such-token"), std::string::npos) << s.error().ToString();
}

TEST_F(Pkcs11Errors, MissingModuleIsNotFound) {
  KeyStoreConfig c = backend_.Config();
  c.module = backend_.suite_dir->path() + "/no-such-module.so";
  auto s = OpenKeyStore(c, shared::PosixFilesystem::Instance());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kNotFound) << s.error().ToString();
}

TEST_F(Pkcs11Errors, PinFileReadableByOthersIsRefused) {
  ASSERT_EQ(::chmod(backend_.pin_file_.c_str(), 0644), 0);
  auto s = OpenKeyStore(backend_.Config(), shared::PosixFilesystem::Instance());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kPermissionDenied) << s.error().ToString();
}

TEST_F(Pkcs11Errors, ImportIsRefused) {
  auto store = backend_.Open();
  ASSERT_NE(store, nullptr);
  auto key = shared::GenerateKeyPair(KeyType::kEcP256);
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(store->Import("ca", key->get()).error().code(), Code::kUnimplemented);
}

// ---- TPM-only error cases ----

TEST(TpmErrors, UnreachableTpmIsUnavailable) {
  TempDir tmp;
  ASSERT_FALSE(tmp.path().empty());
  int port = 0;
  int fd = ListenLoopback(&port);  // bound, then closed: nothing listens there
  ASSERT_GE(fd, 0);
  ::close(fd);
  KeyStoreConfig c;
  c.backend = "tpm";
  c.dir = tmp.path() + "/keys";
  c.tcti = "swtpm:host=127.0.0.1,port=" + std::to_string(port);
  auto s = OpenKeyStore(c, shared::PosixFilesystem::Instance());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kUnavailable) << s.error().ToString();
  EXPECT_NE(s.error().ToString().find("cannot reach the TPM"), std::string::npos) << s.error().ToString();
}

class TpmBlobs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { TpmBackend::SetUpSuite(); }
  static void TearDownTestSuite() { TpmBackend::TearDownSuite(); }
  void SetUp() override { backend_.SetUp(); }
  TpmBackend backend_;
};

TEST_F(TpmBlobs, KeyBlobIsAWrappedTss2KeyWithMode0600) {
  auto store = backend_.Open();
  ASSERT_NE(store, nullptr);
  auto key = store->Generate("device", KeyType::kEcP256);
  ASSERT_TRUE(key.has_value()) << key.error().ToString();
  std::string path = backend_.Config().dir + "/device.tpm.pem";
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(::stat(backend_.Config().dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  auto blob = shared::PosixFilesystem::Instance().ReadFile(path, 1 << 16);
  ASSERT_TRUE(blob.has_value());
  EXPECT_EQ(blob->rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0), 0u);
  // The blob is not a software key.
  EXPECT_FALSE(shared::PrivateKeyFromPem(*blob).has_value());
  shared::DrainOpenSslErrors();
  EXPECT_EQ((*key)->uri(), "tpm:" + path);
}

TEST_F(TpmBlobs, CorruptBlobIsDataLoss) {
  auto store = backend_.Open();
  ASSERT_NE(store, nullptr);
  std::string dir = backend_.Config().dir;
  ASSERT_TRUE(shared::PosixFilesystem::Instance()
                  .CreateFileExclusive(dir + "/junk.tpm.pem", "-----BEGIN TSS2 PRIVATE KEY-----\nAAAA\n-----END TSS2 PRIVATE KEY-----\n", 0600)
                  .ok());
  auto junk = store->Load("junk");
  ASSERT_FALSE(junk.has_value());
  EXPECT_EQ(junk.error().code(), Code::kDataLoss) << junk.error().ToString();
}

// A key provisioned by another tool (the factory) is found by its label.
TEST_F(Pkcs11Errors, LoadsAFactoryProvisionedKeyByLabel) {
  std::string cmd = std::string("pkcs11-tool --module ") + Pkcs11Backend::kModule + " --token-label " +
                    backend_.token_ + " --login --pin " + Pkcs11Backend::kPin +
                    " --keypairgen --key-type EC:prime256v1 --label claim --id 01 >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "pkcs11-tool (package opensc) failed: " << cmd;
  auto store = backend_.Open();
  ASSERT_NE(store, nullptr);
  auto claim = store->Load("claim");
  ASSERT_TRUE(claim.has_value()) << claim.error().ToString();
  auto sig = SignSha256(**claim, "claim");
  ASSERT_TRUE(sig.has_value()) << sig.error().ToString();
  EXPECT_TRUE(Verifies((*claim)->pkey(), "claim", *sig));
}

}  // namespace
}  // namespace certfleet::hal
