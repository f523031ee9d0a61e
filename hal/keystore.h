// Key storage behind one interface. A key lives in a named slot of a backend and never
// leaves it: callers get a KeyHandle whose EVP_PKEY signs CSRs and plugs into TLS
// (SSL_CTX_use_PrivateKey, libcurl's SSL_CTX callback, libmosquitto). Software
// backends hold the private key in memory; hardware backends (PKCS#11, TPM 2.0) hand
// out an EVP_PKEY that forwards signing to the device, so callers do not change.
//
// Slot names are 1-64 characters of [A-Za-z0-9._-], not starting with '.'.
// KeyStore implementations are thread-safe; a KeyHandle may be used from one thread
// at a time and must not outlive its KeyStore.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shared/core/filesystem.h"
#include "shared/core/handles.h"
#include "shared/core/status.h"
#include "shared/x509/key.h"

namespace certfleet::hal {

using shared::KeyType;
using shared::Result;
using shared::Status;

class KeyHandle {
 public:
  virtual ~KeyHandle() = default;
  virtual const std::string& slot() const = 0;
  // Borrowed; valid while the handle lives.
  virtual EVP_PKEY* pkey() const = 0;
  // Where the key is, for logs: "file:/var/lib/certfleet-agent/keys/a.pem", "memory:a".
  virtual std::string uri() const = 0;
};

// A handle that owns its EVP_PKEY (a software key, or a forwarding key that signs in a
// device); every backend hands these out.
class OwnedKeyHandle final : public KeyHandle {
 public:
  OwnedKeyHandle(std::string slot, std::string uri, shared::EvpPkeyPtr key)
      : slot_(std::move(slot)), uri_(std::move(uri)), key_(std::move(key)) {}
  const std::string& slot() const override { return slot_; }
  EVP_PKEY* pkey() const override { return key_.get(); }
  std::string uri() const override { return uri_; }

 private:
  std::string slot_;
  std::string uri_;
  shared::EvpPkeyPtr key_;
};

class KeyStore {
 public:
  virtual ~KeyStore() = default;
  virtual std::string_view backend() const = 0;

  // Creates a new key in an empty slot. kAlreadyExists if the slot holds a key: a key
  // is never overwritten. The key is durable when this returns.
  virtual Result<std::unique_ptr<KeyHandle>> Generate(std::string_view slot, KeyType type) = 0;
  // kNotFound if the slot is empty; kDataLoss if what is stored is not a key.
  virtual Result<std::unique_ptr<KeyHandle>> Load(std::string_view slot) = 0;
  // kNotFound if the slot is empty.
  virtual Status Delete(std::string_view slot) = 0;
  virtual Result<std::vector<std::string>> List() = 0;
  // Stores an existing software key in an empty slot (importing a CA key).
  // kUnimplemented for backends that cannot import.
  virtual Result<std::unique_ptr<KeyHandle>> Import(std::string_view slot, EVP_PKEY* key) = 0;
};

Status ValidateSlotName(std::string_view slot);

// Backends that keep one file per slot ("<dir>/<slot><suffix>": PEM keys, TPM key blobs).
// DeleteSlotFile: kNotFound naming the slot when the file is absent. ListSlotFiles: the
// slots of the files in `dir` that end in `suffix` (hidden files and temporaries skipped).
Status DeleteSlotFile(shared::Filesystem& fs, const std::string& path, std::string_view slot);
Result<std::vector<std::string>> ListSlotFiles(shared::Filesystem& fs, const std::string& dir, std::string_view suffix);

// Signs SHA-256(data) with the key (DER ECDSA signature, or PKCS#1 v1.5 for RSA).
Result<std::string> SignSha256(const KeyHandle& key, std::string_view data);

// Which backend and where. Parsed from the programs' [keystore] config sections.
struct KeyStoreConfig {
  std::string backend = "file";  // "file" | "memory" | "pkcs11" | "tpm"
  std::string dir;               // file, tpm: directory holding the keys / key blobs (created 0700)
  // pkcs11: the token as a PKCS#11 URI ("pkcs11:token=gw?module-path=/usr/lib/...so"),
  // the module (overrides module-path) and the file holding the user PIN (overrides
  // pin-source and pin-value; checked strictly, see ReadPinFile in hal/pkcs11_uri.h).
  std::string uri;
  std::string module;
  std::string pin_file;
  // tpm: how to reach the TPM ("device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321").
  std::string tcti;
};

// kInvalidArgument for an unknown backend or missing settings.
Result<std::unique_ptr<KeyStore>> OpenKeyStore(const KeyStoreConfig& config, shared::Filesystem& fs);

}  // namespace certfleet::hal
