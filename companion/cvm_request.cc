#include "companion/cvm_request.h"

#include <openssl/crypto.h>

#include <nlohmann/json.hpp>

namespace certfleet::companion {

namespace sh = shared;

namespace {

// Wipes the token in the parsed body, if it is a string (nothing else there is secret).
void WipeToken(nlohmann::json& j) {
  auto it = j.find("registrationToken");
  if (it == j.end() || !it->is_string()) return;
  auto& s = it->get_ref<std::string&>();
  OPENSSL_cleanse(s.data(), s.size());
}

}  // namespace

sh::Result<CvmRequest> ParseCvmRequest(std::string_view body) {
  nlohmann::json j = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return sh::Error(sh::Code::kInvalidArgument, "the body is not a JSON object");
  }
  auto field = [&](const char* name) -> const std::string* {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string()) return nullptr;
    return it->get_ptr<const std::string*>();
  };
  const std::string* serial = field("serialNumber");
  const std::string* token = field("registrationToken");
  const std::string* csr = field("certificateSigningRequest");
  if (serial == nullptr || token == nullptr || csr == nullptr) {
    WipeToken(j);
    return sh::Error(sh::Code::kInvalidArgument,
                     "serialNumber, registrationToken and certificateSigningRequest are required strings");
  }
  CvmRequest out{*serial, *token, *csr};
  WipeToken(j);
  return out;
}

}  // namespace certfleet::companion
