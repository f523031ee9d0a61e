// The parts of the key store interface that every backend uses.
#include "hal/keystore.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::hal {

using shared::Code;

Status ValidateSlotName(std::string_view slot) {
  if (slot.empty() || slot.size() > 64 || slot.front() == '.') {
    return Status(Code::kInvalidArgument, "bad key slot name '" + std::string(slot) + "'");
  }
  for (char c : slot) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return Status(Code::kInvalidArgument, "bad key slot name '" + std::string(slot) + "'");
  }
  return Status::Ok();
}

Result<std::string> SignSha256(const KeyHandle& key, std::string_view data) {
  shared::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.pkey()) != 1) {
    return shared::Error(shared::OpenSslStatus(Code::kInternal, "sign init"));
  }
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return shared::Error(shared::OpenSslStatus(Code::kInternal, "sign"));
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return shared::Error(shared::OpenSslStatus(Code::kInternal, "sign"));
  }
  sig.resize(len);
  return sig;
}

}  // namespace certfleet::hal
