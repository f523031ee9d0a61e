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

Status DeleteSlotFile(shared::Filesystem& fs, const std::string& path, std::string_view slot) {
  Status st = fs.Remove(path);
  if (st.code() == shared::Code::kNotFound) {
    return Status(shared::Code::kNotFound, "no key in slot '" + std::string(slot) + "'");
  }
  return st;
}

Result<std::vector<std::string>> ListSlotFiles(shared::Filesystem& fs, const std::string& dir, std::string_view suffix) {
  CF_ASSIGN_OR_RETURN(std::vector<std::string> names, fs.List(dir));
  std::vector<std::string> slots;
  for (const auto& n : names) {
    if (n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        n.front() != '.') {
      slots.push_back(n.substr(0, n.size() - suffix.size()));
    }
  }
  return slots;
}

}  // namespace certfleet::hal
