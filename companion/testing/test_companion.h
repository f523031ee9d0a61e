// The companion as its unit tests set it up: state made by InitCompanion in a TempDir,
// with a FakeClock, loaded by LoadCompanionState; and CAs made in the test (claim CAs,
// foreign CAs). Header-only, for the companion's tests only.
#pragma once

#include <openssl/x509.h>

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "companion/ca.h"
#include "companion/config.h"
#include "companion/init.h"
#include "hal/memory_keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"
#include "shared/testing/temp_dir.h"
#include "shared/x509/cert.h"
#include "shared/x509/key.h"

namespace certfleet::companion {

// The fake clock starts at 2026-01-01T00:00:00Z; every certificate in a test is made
// relative to it.
inline const shared::WallTime kTestCompanionStart = shared::FromUnixSeconds(1767225600);

// A CA made in the test (claim CAs, foreign CAs), issuing with the companion's own Issuer code.
struct TestCa {
  hal::MemoryKeyStore keys;
  std::unique_ptr<Issuer> issuer;
  X509* cert() const { return issuer->cert(); }
};

// A self-signed EC P-256 CA named `cn`, valid from `now` for `validity`; nullptr (and a
// failed expectation) on error.
inline std::unique_ptr<TestCa> MakeTestCa(const std::string& cn, shared::WallTime now,
                                          std::chrono::seconds validity = std::chrono::hours(24 * 365 * 5)) {
  auto ca = std::make_unique<TestCa>();
  auto key = ca->keys.Generate("ca", shared::KeyType::kEcP256);
  EXPECT_TRUE(key) << key.error().ToString();
  if (!key) return nullptr;
  auto cert = MakeRootCa((*key)->pkey(), cn, validity, now);
  EXPECT_TRUE(cert) << cert.error().ToString();
  if (!cert) return nullptr;
  ca->issuer = std::make_unique<Issuer>(std::move(*cert), std::move(*key), std::vector<shared::X509Ptr>{});
  return ca;
}

// Fixture base: a companion initialized in dir_/state. Call InitState() from SetUp
// (wrapped in ASSERT_NO_FATAL_FAILURE); state_ is set once it succeeded.
class TestCompanion : public ::testing::Test {
 protected:
  // Runs InitCompanion (logging to `init_log`) and loads the state it made into state_.
  void InitState(shared::Logger& init_log) {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    InitOptions o;
    o.state_dir = dir_.path() + "/state";
    auto config_path = InitCompanion(o, fs_, clock_, init_log);
    ASSERT_TRUE(config_path) << config_path.error().ToString();
    auto cfg = LoadCompanionConfig(*config_path, fs_);
    ASSERT_TRUE(cfg) << cfg.error().ToString();
    auto state = LoadCompanionState(*cfg, fs_, LoadOptions{});
    ASSERT_TRUE(state) << state.error().ToString();
    state_ = std::make_unique<CompanionState>(std::move(*state));
  }
  void InitState() { InitState(init_log_); }

  // Where WriteClaimTrust puts the bootstrap (claim) trust file.
  std::string ClaimTrustPath() const { return dir_.path() + "/claim-cas.pem"; }

  // Writes `pem` (CA certificates) to ClaimTrustPath() and names that file as the EST
  // bootstrap trust in state_'s config. The loaded trust store is left to the caller.
  void WriteClaimTrust(const std::string& pem) {
    ASSERT_TRUE(fs_.WriteFileAtomic(ClaimTrustPath(), pem, 0644).ok());
    state_->config.est.bootstrap_trust_file = ClaimTrustPath();
  }

  // Verifies `cert` against the companion's root only, with the issuing CA as the
  // intermediate a client would have from cacerts.
  shared::Status VerifyToRoot(X509* cert, shared::WallTime at) {
    auto ts = shared::TrustStore::FromCerts({state_->root.get()});
    if (!ts) return ts.error();
    shared::X509StackPtr chain(sk_X509_new_null());
    X509_up_ref(state_->issuer->cert());
    sk_X509_push(chain.get(), state_->issuer->cert());
    return ts->Verify(cert, chain.get(), at);
  }

  shared::TempDir dir_;
  shared::PosixFilesystem fs_;
  shared::FakeClock clock_{kTestCompanionStart};
  shared::CaptureLogger init_log_;
  shared::CaptureLogger log_;
  std::unique_ptr<CompanionState> state_;
};

}  // namespace certfleet::companion
