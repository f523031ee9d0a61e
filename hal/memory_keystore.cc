#include "hal/memory_keystore.h"

namespace certfleet::hal {

using shared::Code;
using shared::EvpPkeyPtr;

namespace {
std::unique_ptr<KeyHandle> MakeHandle(const std::string& slot, EVP_PKEY* key) {
  EVP_PKEY_up_ref(key);
  return std::make_unique<OwnedKeyHandle>(slot, "memory:" + slot, EvpPkeyPtr(key));
}
}  // namespace

Result<std::unique_ptr<KeyHandle>> MemoryKeyStore::Generate(std::string_view slot, KeyType type) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  CF_ASSIGN_OR_RETURN(EvpPkeyPtr key, shared::GenerateKeyPair(type));
  return Import(slot, key.get());
}

Result<std::unique_ptr<KeyHandle>> MemoryKeyStore::Import(std::string_view slot, EVP_PKEY* key) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::lock_guard lock(mu_);
  if (keys_.count(slot) != 0) {
    return shared::Error(Code::kAlreadyExists, "key slot '" + std::string(slot) + "' is in use");
  }
  EVP_PKEY_up_ref(key);
  keys_.emplace(std::string(slot), EvpPkeyPtr(key));
  return MakeHandle(std::string(slot), key);
}

Result<std::unique_ptr<KeyHandle>> MemoryKeyStore::Load(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::lock_guard lock(mu_);
  auto it = keys_.find(slot);
  if (it == keys_.end()) return shared::Error(Code::kNotFound, "no key in slot '" + std::string(slot) + "'");
  return MakeHandle(it->first, it->second.get());
}

Status MemoryKeyStore::Delete(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::lock_guard lock(mu_);
  auto it = keys_.find(slot);
  if (it == keys_.end()) return Status(Code::kNotFound, "no key in slot '" + std::string(slot) + "'");
  keys_.erase(it);
  return Status::Ok();
}

Result<std::vector<std::string>> MemoryKeyStore::List() {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& [slot, key] : keys_) out.push_back(slot);
  return out;
}

}  // namespace certfleet::hal
