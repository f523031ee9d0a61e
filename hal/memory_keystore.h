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


}  // namespace certfleet::hal
