#include "shared/x509/pkcs7.h"

#include "shared/x509/openssl_error.h"

namespace certfleet::shared {

Result<std::string> BuildCertsOnly(const std::vector<X509*>& certs) {
  Pkcs7Ptr p7(PKCS7_new());
  if (!p7 || PKCS7_set_type(p7.get(), NID_pkcs7_signed) != 1 ||
      PKCS7_content_new(p7.get(), NID_pkcs7_data) != 1 ||
      // certs-only: eContent absent (RFC 5751 3.6, RFC 5272 4.1), not an empty OCTET STRING.
      PKCS7_set_detached(p7.get(), 1) != 1) {
    return Error(OpenSslStatus(Code::kInternal, "creating PKCS#7"));
  }
  for (X509* c : certs) {
    if (PKCS7_add_certificate(p7.get(), c) != 1) return Error(OpenSslStatus(Code::kInternal, "adding certificate"));
  }
  unsigned char* der = nullptr;
  int len = i2d_PKCS7(p7.get(), &der);
  if (len <= 0) return Error(OpenSslStatus(Code::kInternal, "encoding PKCS#7"));
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

Result<std::vector<X509Ptr>> ParseCertsOnly(std::string_view der) {
  if (der.empty()) return Error(Code::kInvalidArgument, "empty PKCS#7");
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  PKCS7* raw = d2i_PKCS7(nullptr, &p, static_cast<long>(der.size()));
  if (raw == nullptr) return Error(OpenSslStatus(Code::kInvalidArgument, "not a DER PKCS#7 message"));
  Pkcs7Ptr p7(raw);
  if (p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return Error(Code::kInvalidArgument, "trailing data after PKCS#7");
  }
  if (OBJ_obj2nid(p7->type) != NID_pkcs7_signed || p7->d.sign == nullptr) {
    return Error(Code::kInvalidArgument, "PKCS#7 is not SignedData");
  }
  STACK_OF(X509)* certs = p7->d.sign->cert;
  if (certs == nullptr || sk_X509_num(certs) == 0) {
    return Error(Code::kInvalidArgument, "PKCS#7 carries no certificate");
  }
  std::vector<X509Ptr> out;
  for (int i = 0; i < sk_X509_num(certs); ++i) {
    X509* c = sk_X509_value(certs, i);
    X509_up_ref(c);
    out.emplace_back(c);
  }
  return out;
}

}  // namespace certfleet::shared
