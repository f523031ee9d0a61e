#include "hal/keystore.h"

#include "hal/file_keystore.h"
#include "hal/memory_keystore.h"
#include "hal/pkcs11_keystore.h"
#include "hal/tpm_keystore.h"

namespace certfleet::hal {

using shared::Code;

Result<std::unique_ptr<KeyStore>> OpenKeyStore(const KeyStoreConfig& config, shared::Filesystem& fs) {
  if (config.backend == "memory") return std::unique_ptr<KeyStore>(std::make_unique<MemoryKeyStore>());
  if (config.backend == "file") {
    if (config.dir.empty()) return shared::Error(Code::kInvalidArgument, "keystore 'file' needs a directory");
    auto store = FileKeyStore::Open(config.dir, fs);
    if (!store) return shared::Error(store.error());
    return std::unique_ptr<KeyStore>(std::move(*store));
  }
  if (config.backend == "pkcs11") {
    CF_ASSIGN_OR_RETURN(Pkcs11Options options, Pkcs11OptionsFromConfig(config));
    auto store = Pkcs11KeyStore::Open(std::move(options));
    if (!store) return shared::Error(store.error());
    return std::unique_ptr<KeyStore>(std::move(*store));
  }
  if (config.backend == "tpm") {
    if (config.dir.empty()) return shared::Error(Code::kInvalidArgument, "keystore 'tpm' needs a directory for key blobs");
    auto store = TpmKeyStore::Open(config.dir, config.tcti, fs);
    if (!store) return shared::Error(store.error());
    return std::unique_ptr<KeyStore>(std::move(*store));
  }
  return shared::Error(Code::kInvalidArgument,
                       "unknown keystore backend '" + config.backend + "' (file, memory, pkcs11, tpm)");
}

}  // namespace certfleet::hal
