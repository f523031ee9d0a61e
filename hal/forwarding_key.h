// An EVP_PKEY whose private operations happen elsewhere (a PKCS#11 token, a TPM).
//
// The EVP_PKEY holds only the public key and an EC_KEY_METHOD / RSA_METHOD that
// forward signing to a RemoteSigner. OpenSSL 3.0 treats such "foreign" keys as legacy
// keys and calls their methods for every signature: EVP_DigestSign, X509_sign,
// X509_REQ_sign and TLS (SSL_CTX_use_PrivateKey). Callers therefore need no library
// context or property query, and software keys in the same process are unaffected.
// No private key material is ever in the process, so nothing can serialize it.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::hal {

// Thread-safe; kept alive by every EVP_PKEY (and copy) that forwards to it.
class RemoteSigner {
 public:
  virtual ~RemoteSigner() = default;
  // ECDSA over a message digest (already hashed); returns a DER ECDSA-Sig-Value.
  virtual shared::Result<std::string> EcdsaSign(std::string_view digest) = 0;
  // The RSA private-key operation: with `pkcs1` the input is a DigestInfo to be
  // PKCS#1 v1.5 padded by the device; without, the input is already padded (PSS)
  // and the raw operation is wanted. kUnimplemented if the device cannot do it.
  virtual shared::Result<std::string> RsaPrivate(std::string_view input, bool pkcs1) = 0;
};

// `public_key` is a software EC or RSA public key; it is copied. kUnimplemented for
// other key types.
shared::Result<shared::EvpPkeyPtr> MakeForwardingKey(EVP_PKEY* public_key, std::shared_ptr<RemoteSigner> signer);

}  // namespace certfleet::hal
