#include "hal/file_keystore.h"

#include <openssl/crypto.h>

#include "hal/memory_keystore.h"

namespace certfleet::hal {

using shared::Code;
using shared::EvpPkeyPtr;

namespace {
constexpr std::string_view kSuffix = ".key.pem";

// Zeroes a string that held key material before it is freed.
struct Scrub {
  std::string& s;
  ~Scrub() { OPENSSL_cleanse(s.data(), s.size()); }
};
}  // namespace

Result<std::unique_ptr<FileKeyStore>> FileKeyStore::Open(const std::string& dir, shared::Filesystem& fs) {
  CF_RETURN_IF_ERROR(fs.MakeDirs(dir, 0700).WithContext("key directory"));
  return std::unique_ptr<FileKeyStore>(new FileKeyStore(dir, fs));
}

std::string FileKeyStore::PathOf(std::string_view slot) const {
  return shared::JoinPath(dir_, std::string(slot) + std::string(kSuffix));
}

Result<std::unique_ptr<KeyHandle>> FileKeyStore::Generate(std::string_view slot, KeyType type) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  if (fs_.Exists(PathOf(slot))) {
    return shared::Error(Code::kAlreadyExists, "key slot '" + std::string(slot) + "' is in use");
  }
  CF_ASSIGN_OR_RETURN(EvpPkeyPtr key, shared::GenerateKeyPair(type));
  return Import(slot, key.get());
}

Result<std::unique_ptr<KeyHandle>> FileKeyStore::Import(std::string_view slot, EVP_PKEY* key) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  CF_ASSIGN_OR_RETURN(std::string pem, shared::PrivateKeyToPem(key));
  Scrub scrub{pem};
  std::string path = PathOf(slot);
  Status st = fs_.CreateFileExclusive(path, pem, 0600);
  if (st.code() == Code::kAlreadyExists) {
    return shared::Error(Code::kAlreadyExists, "key slot '" + std::string(slot) + "' is in use");
  }
  CF_RETURN_IF_ERROR(st);
  EVP_PKEY_up_ref(key);
  return std::unique_ptr<KeyHandle>(std::make_unique<OwnedKeyHandle>(std::string(slot), "file:" + path, EvpPkeyPtr(key)));
}

Result<std::unique_ptr<KeyHandle>> FileKeyStore::Load(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::string path = PathOf(slot);
  auto pem = fs_.ReadFile(path, 64 << 10);
  if (!pem) {
    if (pem.error().code() == Code::kNotFound) {
      return shared::Error(Code::kNotFound, "no key in slot '" + std::string(slot) + "' (" + path + ")");
    }
    return shared::Error(pem.error());
  }
  Scrub scrub{*pem};
  auto key = shared::PrivateKeyFromPem(*pem);
  if (!key) return shared::Error(Code::kDataLoss, "key file " + path + " does not hold a private key");
  return std::unique_ptr<KeyHandle>(std::make_unique<OwnedKeyHandle>(std::string(slot), "file:" + path, std::move(*key)));
}

Status FileKeyStore::Delete(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  return DeleteSlotFile(fs_, PathOf(slot), slot);
}

Result<std::vector<std::string>> FileKeyStore::List() { return ListSlotFiles(fs_, dir_, kSuffix); }

}  // namespace certfleet::hal
