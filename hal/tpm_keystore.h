// Keys inside a TPM 2.0, through the tpm2-openssl provider.
//
// Generate creates an EC key under the owner (storage) hierarchy's primary key; what the
// TPM returns is a wrapped blob that only this TPM can load, stored as a
// "TSS2 PRIVATE KEY" PEM file per slot: DIR/<slot>.tpm.pem, created 0600 with O_EXCL and
// fsync'd (the directory is created 0700), so a key file is complete or absent and never
// overwritten. Load decodes the blob through the provider; each signature loads the
// key into the TPM and flushes it afterwards (a TPM holds few loaded objects). The EVP_PKEY a handle exposes
// is a forwarding key (hal/forwarding_key.h) that signs through the provider in a
// library context of its own: the rest of the process keeps using OpenSSL's default
// implementations for software keys.
//
// EC keys only (P-256, P-384): TLS 1.3 needs RSA-PSS, which a TPM signing key does not
// offer through the provider's raw operation. Generate returns kUnimplemented for RSA.
//
// The TCTI names the TPM: "device:/dev/tpmrm0" (the kernel's resource manager) on a
// gateway, "swtpm:host=127.0.0.1,port=2321" for a software TPM. One connection per
// TCTI is shared by every store in the process; TPM calls are serialised.
#pragma once

#include <memory>

#include "hal/keystore.h"

namespace certfleet::hal {

struct TpmContext;

class TpmKeyStore final : public KeyStore {
 public:
  // Creates `dir` (0700) if needed and connects to the TPM.
  // kUnavailable: the TPM (or the tpm2 provider) cannot be reached.
  static Result<std::unique_ptr<TpmKeyStore>> Open(const std::string& dir, const std::string& tcti,
                                                   shared::Filesystem& fs);
  ~TpmKeyStore() override;

  std::string_view backend() const override { return "tpm"; }
  Result<std::unique_ptr<KeyHandle>> Generate(std::string_view slot, KeyType type) override;
  Result<std::unique_ptr<KeyHandle>> Load(std::string_view slot) override;
  Status Delete(std::string_view slot) override;
  Result<std::vector<std::string>> List() override;
  // kUnimplemented: a software key is not moved into the TPM.
  Result<std::unique_ptr<KeyHandle>> Import(std::string_view slot, EVP_PKEY* key) override;

  std::string PathOf(std::string_view slot) const;

 private:
  TpmKeyStore(std::shared_ptr<TpmContext> tpm, std::string dir, shared::Filesystem& fs)
      : tpm_(std::move(tpm)), dir_(std::move(dir)), fs_(fs) {}
  Result<std::unique_ptr<KeyHandle>> HandleFor(std::string_view slot, shared::EvpPkeyPtr tpm_key, std::string blob);
  std::shared_ptr<TpmContext> tpm_;
  std::string dir_;
  shared::Filesystem& fs_;
};

}  // namespace certfleet::hal
