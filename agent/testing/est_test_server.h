// Test infrastructure for the agent's EST tests: a throwaway PKI built with OpenSSL
// (CA, intermediate and leaf certificates; nothing is read from disk) and an in-process
// HTTPS server on 127.0.0.1:<ephemeral port> (cpp-httplib) that tests script with
// handlers. Header-only; for tests only.
//
// Failures throw std::runtime_error (gtest reports them as test failures). Certificates
// use real time: valid from an hour ago for a day.
#pragma once

#include <httplib.h>
#include <openssl/bn.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shared/core/handles.h"
#include "shared/core/status.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::agent {

// The value of `r`, or throws naming `what`.
template <class T>
T Must(shared::Result<T> r, const std::string& what) {
  if (!r) throw std::runtime_error(what + ": " + r.error().ToString());
  return std::move(*r);
}

inline shared::EvpPkeyPtr NewKey() {
  return Must(shared::GenerateKeyPair(shared::KeyType::kEcP256), "GenerateKeyPair");
}

// "CN=..." plus optional "O=...".
inline shared::X509NamePtr Name(const std::string& cn, const std::string& org = "") {
  shared::X509NamePtr name(X509_NAME_new());
  if (!name) throw std::runtime_error("X509_NAME_new: " + shared::DrainOpenSslErrors());
  auto add = [&](const char* field, const std::string& value) {
    if (X509_NAME_add_entry_by_txt(name.get(), field, MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0) != 1) {
      throw std::runtime_error("X509_NAME: " + shared::DrainOpenSslErrors());
    }
  };
  if (!org.empty()) add("O", org);
  add("CN", cn);
  return name;
}

inline void AddExt(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  shared::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    throw std::runtime_error("extension " + value + ": " + shared::DrainOpenSslErrors());
  }
}

// Signs a certificate for `subject_key`. Self-signed when `issuer` is null. `san` is
// OpenSSL config syntax ("DNS:a,IP:1.2.3.4"); `copy_sans`, when set, is added as is.
inline shared::X509Ptr SignCert(const X509_NAME* subject, EVP_PKEY* subject_key, X509* issuer,
                                EVP_PKEY* issuer_key, bool is_ca, const std::string& san = "",
                                const GENERAL_NAMES* copy_sans = nullptr) {
  shared::X509Ptr cert(X509_new());
  shared::BignumPtr serial(BN_new());
  time_t now = std::time(nullptr);
  bool ok = cert && serial && X509_set_version(cert.get(), X509_VERSION_3) == 1 &&
            BN_rand(serial.get(), 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
            BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) != nullptr &&
            X509_set_subject_name(cert.get(), subject) == 1 &&
            X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : subject) == 1 &&
            X509_set_pubkey(cert.get(), subject_key) == 1 &&
            X509_time_adj_ex(X509_getm_notBefore(cert.get()), 0, -3600, &now) != nullptr &&
            X509_time_adj_ex(X509_getm_notAfter(cert.get()), 1, 0, &now) != nullptr;
  if (!ok) throw std::runtime_error("X509 fields: " + shared::DrainOpenSslErrors());
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  AddExt(cert.get(), &ctx, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  AddExt(cert.get(), &ctx, NID_key_usage,
         is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature,keyEncipherment");
  AddExt(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  AddExt(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (!san.empty()) AddExt(cert.get(), &ctx, NID_subject_alt_name, san);
  if (copy_sans != nullptr &&
      X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, const_cast<GENERAL_NAMES*>(copy_sans), 0,
                        X509V3_ADD_DEFAULT) != 1) {
    throw std::runtime_error("copy SANs: " + shared::DrainOpenSslErrors());
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) == 0) {
    throw std::runtime_error("X509_sign: " + shared::DrainOpenSslErrors());
  }
  return cert;
}

struct TestCa {
  shared::EvpPkeyPtr key;
  shared::X509Ptr cert;

  std::string Pem() const { return shared::CertToPem(cert.get()); }
  shared::X509Ptr Issue(const X509_NAME* subject, EVP_PKEY* pub, const std::string& san = "", bool is_ca = false,
                        const GENERAL_NAMES* copy_sans = nullptr) const {
    return SignCert(subject, pub, cert.get(), key.get(), is_ca, san, copy_sans);
  }
};

// A root CA, or an intermediate under `parent`.
inline TestCa MakeCa(const std::string& cn, const TestCa* parent = nullptr) {
  TestCa ca{NewKey(), nullptr};
  auto name = Name(cn);
  ca.cert = parent != nullptr ? parent->Issue(name.get(), ca.key.get(), "", true)
                              : SignCert(name.get(), ca.key.get(), nullptr, ca.key.get(), true);
  return ca;
}

// A PKCS#7 certs-only structure (DER) holding `certs`.
inline std::string CertsOnlyDer(const std::vector<X509*>& certs) {
  return Must(shared::BuildCertsOnly(certs), "BuildCertsOnly");
}

inline constexpr char kCertsOnlyType[] = "application/pkcs7-mime; smime-type=certs-only";

// An HTTPS server on 127.0.0.1:<ephemeral>, its TLS certificate issued by the CA it is
// constructed with. Register handlers on http(), then Start(); the destructor stops it
// and joins its thread. Handlers run on httplib's worker threads: what they touch must
// outlive the server and be thread-safe.
class TestServer {
 public:
  struct Options {
    std::string san = "DNS:localhost,IP:127.0.0.1";
    X509* client_ca = nullptr;  // when set, client certificates are requested and checked
    bool require_client_cert = false;
  };

  TestServer(const TestCa& ca, const Options& options) : key_(NewKey()) {
    auto name = Name("localhost");
    cert_ = ca.Issue(name.get(), key_.get(), options.san);
    server_ = std::make_unique<httplib::SSLServer>([this, options](SSL_CTX& ctx) {
      static const unsigned char kSid[] = "certfleet-agent-test";
      if (SSL_CTX_use_certificate(&ctx, cert_.get()) != 1 || SSL_CTX_use_PrivateKey(&ctx, key_.get()) != 1 ||
          SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION) != 1 ||
          SSL_CTX_set_session_id_context(&ctx, kSid, sizeof kSid - 1) != 1) {
        return false;
      }
      if (options.client_ca != nullptr) {
        if (X509_STORE_add_cert(SSL_CTX_get_cert_store(&ctx), options.client_ca) != 1) return false;
        SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER | (options.require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           nullptr);
      }
      return true;
    });
    if (!server_->is_valid()) throw std::runtime_error("SSLServer setup: " + shared::DrainOpenSslErrors());
  }
  ~TestServer() {
    if (thread_.joinable()) {
      server_->stop();
      thread_.join();
    }
  }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  httplib::Server& http() { return *server_; }

  void Start() {
    port_ = server_->bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("bind_to_any_port failed");
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    // stop() is a no-op until the accept loop runs; wait for it (bounded, no sleeping).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!server_->is_running()) {
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("server did not start");
      std::this_thread::yield();
    }
  }
  std::string Url() const { return "https://127.0.0.1:" + std::to_string(port_); }

 private:
  shared::EvpPkeyPtr key_;
  shared::X509Ptr cert_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace certfleet::agent
