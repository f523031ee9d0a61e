// Key types and software key generation.
#pragma once

#include <string>
#include <string_view>

#include "shared/core/handles.h"
#include "shared/core/status.h"

namespace certfleet::shared {

enum class KeyType { kEcP256, kEcP384, kRsa2048, kRsa3072 };

// "ec-p256", "ec-p384", "rsa-2048", "rsa-3072".
std::string_view KeyTypeName(KeyType type);
Result<KeyType> ParseKeyType(std::string_view name);
// ParseKeyType as a config check.
Status CheckKeyTypeName(const std::string& name);

// Generates a fresh key pair in memory (software). kInternal on OpenSSL failure.
Result<EvpPkeyPtr> GenerateKeyPair(KeyType type);

// What a public key is: "EC" with the curve's bits, "RSA" with modulus bits, and so on.
struct KeyInfo {
  std::string algorithm;  // "EC", "RSA", "ED25519", ...
  std::string curve;      // "prime256v1", "secp384r1" for EC; empty otherwise
  int bits = 0;
};
KeyInfo DescribeKey(EVP_PKEY* key);

// Private key as PKCS#8 PEM; public key as SubjectPublicKeyInfo DER.
Result<std::string> PrivateKeyToPem(EVP_PKEY* key);
// Accepts PKCS#8 and traditional (PKCS#1, SEC1) PEM.
Result<EvpPkeyPtr> PrivateKeyFromPem(std::string_view pem);
Result<std::string> PublicKeyDer(EVP_PKEY* key);
// True when the two keys have the same public part.
bool SamePublicKey(EVP_PKEY* a, EVP_PKEY* b);

// A SHA-256 signature of `data` (ECDSA: DER-encoded; RSA: PKCS#1 v1.5), made with any
// EVP_PKEY, hardware-backed ones included. kInternal on failure (OpenSSL's reason appended).
Result<std::string> SignSha256(EVP_PKEY* key, std::string_view data);
// Checks such a signature with the public part of `key`. kUnauthenticated if it does not
// verify (a malformed signature included).
Status VerifySha256(EVP_PKEY* key, std::string_view data, std::string_view signature);

}  // namespace certfleet::shared
