// Software keys as PKCS#8 PEM files, one per slot: DIR/<slot>.key.pem.
// The directory is created 0700; each key file is created 0600 with O_EXCL under a
// temporary name, fsync'd and linked into place, so a key file is complete or absent
// and an existing key is never overwritten.
#pragma once

#include "hal/keystore.h"

namespace certfleet::hal {

class FileKeyStore final : public KeyStore {
 public:
  // Creates `dir` (0700) if needed. kPermissionDenied if it exists with a wider mode.
  static Result<std::unique_ptr<FileKeyStore>> Open(const std::string& dir, shared::Filesystem& fs);

  std::string_view backend() const override { return "file"; }
  Result<std::unique_ptr<KeyHandle>> Generate(std::string_view slot, KeyType type) override;
  Result<std::unique_ptr<KeyHandle>> Load(std::string_view slot) override;
  Status Delete(std::string_view slot) override;
  Result<std::vector<std::string>> List() override;
  Result<std::unique_ptr<KeyHandle>> Import(std::string_view slot, EVP_PKEY* key) override;

  std::string PathOf(std::string_view slot) const;

 private:
  FileKeyStore(std::string dir, shared::Filesystem& fs) : dir_(std::move(dir)), fs_(fs) {}
  std::string dir_;
  shared::Filesystem& fs_;
};

}  // namespace certfleet::hal
