// Keys inside a PKCS#11 token (an HSM, a secure element, SoftHSM2 in tests).
//
// The module is loaded with dlopen and driven through its function list directly;
// the EVP_PKEY a handle exposes is a forwarding key (hal/forwarding_key.h) whose
// signatures are made by C_Sign in the token, so CSR signing, X509_sign and TLS
// (SSL_CTX_use_PrivateKey) work unchanged and the private key never leaves the token. Why not the libp11 ENGINE: bookworm's libp11 0.4.12 cannot generate EC keys,
// and loading the module both through the engine and directly (for key generation)
// would initialise it twice in one process.
//
// Slots are object labels. Generate creates a key pair with a fresh random CKA_ID,
// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE and not CKA_EXTRACTABLE; the public half is
// kept as its own object with the same label and id. A rotation creates the new key
// under a new label beside the old one; keys are never re-labelled.
//
// Thread-safe: one logged-in session per store, used under a mutex (handles share it).
#pragma once

#include <memory>

#include "hal/keystore.h"

namespace certfleet::hal {

struct Pkcs11Session;

struct Pkcs11Options {
  std::string module_path;  // absolute path of the PKCS#11 module (.so)
  std::string token_label;
  std::string pin;          // user PIN; scrubbed after login
};

// Builds Pkcs11Options from the [keystore] settings: `uri` (pkcs11:token=...;
// optional module-path, pin-source, pin-value query attributes), `module` and
// `pin_file` (strictly checked, see ReadPinFile). Explicit settings win over the URI.
shared::Result<Pkcs11Options> Pkcs11OptionsFromConfig(const KeyStoreConfig& config);

class Pkcs11KeyStore final : public KeyStore {
 public:
  // Loads the module, finds the token by label and logs in.
  // kNotFound: module or token missing; kUnauthenticated: wrong PIN;
  // kPermissionDenied: PIN locked; kUnavailable: the token did not answer.
  static Result<std::unique_ptr<Pkcs11KeyStore>> Open(Pkcs11Options options);
  ~Pkcs11KeyStore() override;

  std::string_view backend() const override { return "pkcs11"; }
  Result<std::unique_ptr<KeyHandle>> Generate(std::string_view slot, KeyType type) override;
  Result<std::unique_ptr<KeyHandle>> Load(std::string_view slot) override;
  Status Delete(std::string_view slot) override;
  Result<std::vector<std::string>> List() override;
  // kUnimplemented: a software key is not moved into the token; generate it there.
  Result<std::unique_ptr<KeyHandle>> Import(std::string_view slot, EVP_PKEY* key) override;

 private:
  explicit Pkcs11KeyStore(std::shared_ptr<Pkcs11Session> session, std::string token)
      : session_(std::move(session)), token_(std::move(token)) {}
  std::string UriOf(std::string_view slot) const;
  std::shared_ptr<Pkcs11Session> session_;
  std::string token_;
};

}  // namespace certfleet::hal
