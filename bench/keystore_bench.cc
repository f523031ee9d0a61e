// keystore-bench: signatures/s and TLS client handshakes/s through the hal key stores,
// each next to a reference measured in the same run.
//
//   sign: SignSha256 through the hal handle (SHA-256 + the backend's signature)
//         against the raw backend doing the same work without the hal:
//           file   - EVP_DigestSign with the same key read straight from its PEM file;
//           pkcs11 - SHA-256, C_SignInit and C_Sign on the same token object, in a
//                    session of our own;
//           tpm    - EVP_DigestSign with the same key blob decoded once by the
//                    tpm2 provider in its own library context (kept loaded in the TPM).
//   tls:  full TLS 1.3 mTLS handshakes on loopback (in-process server, new connection
//         each time) with the hal key against a software key of the same type.
//
// ratio = hal rate / reference rate. Rounds alternate hal and reference.
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "hal/keystore.h"
#include "shared/core/filesystem.h"
#include "shared/x509/key.h"

namespace cf = certfleet;
using Clock = std::chrono::steady_clock;

namespace {

// Runs `op` until `seconds` have passed (at least `min_ops` times); returns ops/s, or
// -1 if an operation failed.
double Rate(double seconds, int min_ops, const std::function<bool()>& op) {
  auto start = Clock::now();
  int n = 0;
  double elapsed = 0;
  while (n < min_ops || elapsed < seconds) {
    if (!op()) return -1;
    ++n;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return n / elapsed;
}

const std::string kData(256, 'x');

bool HalSign(const cf::hal::KeyHandle& key) { return cf::hal::SignSha256(key, kData).has_value(); }

bool EvpSign(EVP_PKEY* key, OSSL_LIB_CTX* libctx = nullptr, const char* props = nullptr) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t len = 0;
  unsigned char sig[1024];
  bool ok = EVP_DigestSignInit_ex(ctx, nullptr, "SHA256", libctx, props, key, nullptr) == 1 &&
            EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(kData.data()), kData.size()) == 1 &&
            len <= sizeof(sig) &&
            EVP_DigestSign(ctx, sig, &len, reinterpret_cast<const unsigned char*>(kData.data()), kData.size()) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

// ---- raw PKCS#11 ----
struct RawPkcs11 {
  CK_FUNCTION_LIST* fl = nullptr;
  CK_SESSION_HANDLE session = 0;
  CK_OBJECT_HANDLE key = 0;
  bool Open(const std::string& module, const std::string& token, const std::string& pin, const std::string& label) {
    void* dl = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dl == nullptr) return false;
    auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(dl, "C_GetFunctionList"));
    if (get == nullptr || get(&fl) != CKR_OK) return false;
    CK_RV rv = fl->C_Initialize(nullptr);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) return false;
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    if (fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) return false;
    for (CK_ULONG i = 0; i < n; ++i) {
      CK_TOKEN_INFO info{};
      fl->C_GetTokenInfo(slots[i], &info);
      std::string l(reinterpret_cast<char*>(info.label), sizeof(info.label));
      while (!l.empty() && l.back() == ' ') l.pop_back();
      if (l != token) continue;
      if (fl->C_OpenSession(slots[i], CKF_SERIAL_SESSION, nullptr, nullptr, &session) != CKR_OK) return false;
      rv = fl->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR*>(const_cast<char*>(pin.data())), pin.size());
      if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) return false;
      CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
      CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
      CK_ULONG found = 0;
      fl->C_FindObjectsInit(session, t, 2);
      fl->C_FindObjects(session, &key, 1, &found);
      fl->C_FindObjectsFinal(session);
      return found == 1;
    }
    return false;
  }
  bool Sign() {
    unsigned char digest[32];
    SHA256(reinterpret_cast<const unsigned char*>(kData.data()), kData.size(), digest);
    CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
    unsigned char sig[256];
    CK_ULONG len = sizeof(sig);
    return fl->C_SignInit(session, &mech, key) == CKR_OK && fl->C_Sign(session, digest, 32, sig, &len) == CKR_OK;
  }
  ~RawPkcs11() {
    if (fl != nullptr && session != 0) fl->C_CloseSession(session);
  }
};

// ---- raw TPM through the provider ----
struct RawTpm {
  OSSL_LIB_CTX* libctx = nullptr;
  OSSL_PROVIDER* tpm2 = nullptr;
  OSSL_PROVIDER* def = nullptr;
  EVP_PKEY* key = nullptr;
  bool Open(const std::string& tcti, const std::string& blob) {
    setenv("TPM2OPENSSL_TCTI", tcti.c_str(), 1);
    libctx = OSSL_LIB_CTX_new();
    tpm2 = OSSL_PROVIDER_load(libctx, "tpm2");
    def = OSSL_PROVIDER_load(libctx, "default");
    if (tpm2 == nullptr || def == nullptr) return false;
    OSSL_DECODER_CTX* dec = OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", nullptr, nullptr, EVP_PKEY_KEYPAIR, libctx, "provider=tpm2");
    const auto* p = reinterpret_cast<const unsigned char*>(blob.data());
    size_t len = blob.size();
    bool ok = dec != nullptr && OSSL_DECODER_from_data(dec, &p, &len) == 1 && key != nullptr;
    OSSL_DECODER_CTX_free(dec);
    return ok;
  }
  bool Sign() { return EvpSign(key, libctx, "?provider=tpm2"); }
  ~RawTpm() {
    EVP_PKEY_free(key);
    if (def != nullptr) OSSL_PROVIDER_unload(def);
    if (tpm2 != nullptr) OSSL_PROVIDER_unload(tpm2);
    OSSL_LIB_CTX_free(libctx);
  }
};

// ---- TLS ----
cf::shared::X509Ptr MakeCert(EVP_PKEY* subject, const char* cn, EVP_PKEY* issuer_key, X509* issuer) {
  cf::shared::X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  static long serial = 1;
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), ++serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : X509_get_subject_name(cert.get()));
  X509_set_pubkey(cert.get(), subject);
  if (issuer == nullptr) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(cert.get(), issuer_key, EVP_sha256());
  return cert;
}

// Small TLS records go out at once (no Nagle delay against delayed ACKs).
void NoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

struct TlsBench {
  cf::shared::EvpPkeyPtr ca_key = *cf::shared::GenerateKeyPair(cf::shared::KeyType::kEcP256);
  cf::shared::EvpPkeyPtr server_key = *cf::shared::GenerateKeyPair(cf::shared::KeyType::kEcP256);
  cf::shared::X509Ptr ca = MakeCert(ca_key.get(), "bench CA", ca_key.get(), nullptr);
  cf::shared::X509Ptr server_cert = MakeCert(server_key.get(), "localhost", ca_key.get(), ca.get());
  SSL_CTX* server_ctx = nullptr;
  int lfd = -1;
  sockaddr_in addr{};
  std::atomic<bool> stop{false};
  std::thread server;

  TlsBench() {
    server_ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(server_ctx, server_cert.get());
    SSL_CTX_use_PrivateKey(server_ctx, server_key.get());
    X509_STORE_add_cert(SSL_CTX_get_cert_store(server_ctx), ca.get());
    SSL_CTX_set_verify(server_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL_CTX_set_session_cache_mode(server_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(server_ctx, 0);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(lfd, 64);
    getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
    server = std::thread([this] {
      while (!stop) {
        int fd = accept(lfd, nullptr, nullptr);
        if (fd < 0) continue;
        NoDelay(fd);
        SSL* ssl = SSL_new(server_ctx);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) == 1) {
          char b;
          SSL_read(ssl, &b, 1);
          SSL_write(ssl, "k", 1);
        }
        SSL_free(ssl);
        close(fd);
        ERR_clear_error();
      }
    });
  }
  ~TlsBench() {
    stop = true;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    close(fd);
    server.join();
    close(lfd);
    SSL_CTX_free(server_ctx);
  }
  // A client context presenting `key` with a certificate for it.
  SSL_CTX* ClientCtx(EVP_PKEY* key) {
    cf::shared::X509Ptr cert = MakeCert(key, "bench client", ca_key.get(), ca.get());
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca.get());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_use_certificate(ctx, cert.get()) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
      SSL_CTX_free(ctx);
      return nullptr;
    }
    return ctx;
  }
  bool Handshake(SSL_CTX* ctx) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    NoDelay(fd);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (ok) {
      SSL* ssl = SSL_new(ctx);
      SSL_set_fd(ssl, fd);
      char b;
      // The server answers only after it has verified our CertificateVerify.
      ok = SSL_connect(ssl) == 1 && SSL_write(ssl, "p", 1) == 1 && SSL_read(ssl, &b, 1) == 1;
      SSL_free(ssl);
    }
    close(fd);
    ERR_clear_error();
    return ok;
  }
};

void Report(const char* backend, const char* what, const char* reference, double hal, double ref) {
  std::printf("backend=%s measure=%s hal_per_s=%.1f reference=%s reference_per_s=%.1f ratio=%.3f\n", backend, what,
              hal, reference, ref, ref > 0 ? hal / ref : 0.0);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keystore-bench: hal key store signing and TLS rates against raw backend calls"};
  std::string dir, module, token, pin_file, tcti;
  double seconds = 1.0;
  int rounds = 3;
  app.add_option("--dir", dir, "scratch directory (file and tpm key stores)")->required();
  app.add_option("--pkcs11-module", module, "PKCS#11 module (SoftHSM2); empty: skip pkcs11");
  app.add_option("--pkcs11-token", token, "token label");
  app.add_option("--pkcs11-pin-file", pin_file, "user PIN file (0600)");
  app.add_option("--tcti", tcti, "TPM TCTI; empty: skip tpm");
  app.add_option("--seconds", seconds, "time per measurement");
  app.add_option("--rounds", rounds, "alternating rounds per measurement");
  CLI11_PARSE(app, argc, argv);

  auto& fs = cf::shared::PosixFilesystem::Instance();
  TlsBench tls;
  cf::shared::EvpPkeyPtr soft_key = *cf::shared::GenerateKeyPair(cf::shared::KeyType::kEcP256);
  SSL_CTX* soft_ctx = tls.ClientCtx(soft_key.get());
  int failures = 0;

  auto measure = [&](const char* backend, const std::function<std::unique_ptr<cf::hal::KeyStore>()>& open,
                     const std::function<double()>& raw_sign, const char* raw_name) {
    double hal_sign = 0, ref_sign = 0, hal_tls = 0, ref_tls = 0;
    for (int r = 0; r < rounds; ++r) {
      {
        auto store = open();
        if (!store) { ++failures; return; }
        auto key = store->Load("bench");
        if (!key) key = store->Generate("bench", cf::shared::KeyType::kEcP256);
        if (!key) {
          std::fprintf(stderr, "%s: %s\n", backend, key.error().ToString().c_str());
          ++failures;
          return;
        }
        hal_sign += Rate(seconds, 5, [&] { return HalSign(**key); });
        SSL_CTX* ctx = tls.ClientCtx((*key)->pkey());
        hal_tls += ctx != nullptr ? Rate(seconds, 5, [&] { return tls.Handshake(ctx); }) : -1;
        SSL_CTX_free(ctx);
      }
      ref_sign += raw_sign();
      ref_tls += Rate(seconds, 5, [&] { return tls.Handshake(soft_ctx); });
    }
    if (hal_sign < 0 || ref_sign < 0 || hal_tls < 0 || ref_tls < 0) ++failures;
    Report(backend, "sign_ec_p256", raw_name, hal_sign / rounds, ref_sign / rounds);
    Report(backend, "tls13_mtls_handshake", "software_key", hal_tls / rounds, ref_tls / rounds);
  };

  // file
  {
    cf::hal::KeyStoreConfig c;
    c.backend = "file";
    c.dir = dir + "/file-keys";
    measure("file", [&] { auto s = cf::hal::OpenKeyStore(c, fs); return s ? std::move(*s) : nullptr; },
            [&] {
              auto pem = fs.ReadFile(c.dir + "/bench.key.pem", 1 << 16);
              auto key = cf::shared::PrivateKeyFromPem(*pem);
              return Rate(seconds, 5, [&] { return EvpSign(key->get()); });
            },
            "evp_digestsign_same_key");
  }
  // pkcs11
  if (!module.empty()) {
    cf::hal::KeyStoreConfig c;
    c.backend = "pkcs11";
    c.uri = "pkcs11:token=" + token;
    c.module = module;
    c.pin_file = pin_file;
    std::string pin = fs.ReadFile(pin_file, 256).value_or("");
    while (!pin.empty() && pin.back() == '\n') pin.pop_back();
    measure("pkcs11", [&] {
              auto s = cf::hal::OpenKeyStore(c, fs);
              if (!s) std::fprintf(stderr, "pkcs11: %s\n", s.error().ToString().c_str());
              return s ? std::move(*s) : nullptr;
            },
            [&] {
              RawPkcs11 raw;
              if (!raw.Open(module, token, pin, "bench")) return -1.0;
              return Rate(seconds, 5, [&] { return raw.Sign(); });
            },
            "c_sign_same_object");
  }
  // tpm
  if (!tcti.empty()) {
    cf::hal::KeyStoreConfig c;
    c.backend = "tpm";
    c.dir = dir + "/tpm-keys";
    c.tcti = tcti;
    measure("tpm", [&] {
              auto s = cf::hal::OpenKeyStore(c, fs);
              if (!s) std::fprintf(stderr, "tpm: %s\n", s.error().ToString().c_str());
              return s ? std::move(*s) : nullptr;
            },
            [&] {
              auto blob = fs.ReadFile(c.dir + "/bench.tpm.pem", 1 << 16);
              RawTpm raw;
              if (!blob || !raw.Open(tcti, *blob)) return -1.0;
              return Rate(seconds, 5, [&] { return raw.Sign(); });
            },
            "provider_digestsign_key_kept_loaded");
  }
  SSL_CTX_free(soft_ctx);
  return failures == 0 ? 0 : 1;
}
