// Keys held in process memory only. For tests and for throwaway keys.
#pragma once

#include <map>
#include <mutex>

#include "hal/keystore.h"

namespace certfleet::hal {

class MemoryKeyStore final : public KeyStore {
 public:
  std::string_view backend() const override { return "memory"; }
  Result<std::unique_ptr<KeyHandle>> Generate(std::string_view slot, KeyType type) override;
  Result<std::unique_ptr<KeyHandle>> Load(std::string_view slot) override;
  Status Delete(std::string_view slot) override;
  Result<std::vector<std::string>> List() override;
  Result<std::unique_ptr<KeyHandle>> Import(std::string_view slot, EVP_PKEY* key) override;

 private:
  std::mutex mu_;
  std::map<std::string, shared::EvpPkeyPtr, std::less<>> keys_;
};

// A handle owning a reference to a software EVP_PKEY.
class SoftwareKeyHandle final : public KeyHandle {
 public:
  SoftwareKeyHandle(std::string slot, std::string uri, shared::EvpPkeyPtr key)
      : slot_(std::move(slot)), uri_(std::move(uri)), key_(std::move(key)) {}
  const std::string& slot() const override { return slot_; }
  EVP_PKEY* pkey() const override { return key_.get(); }
  std::string uri() const override { return uri_; }

 private:
  std::string slot_;
  std::string uri_;
  shared::EvpPkeyPtr key_;
};

}  // namespace certfleet::hal
