#include "shared/x509/csr.h"

#include <arpa/inet.h>
#include <openssl/pem.h>

#include "shared/x509/openssl_error.h"

namespace certfleet::shared {
namespace {

Status AddSans(X509_REQ* req, const GENERAL_NAMES* sans) {
  if (sans == nullptr || sk_GENERAL_NAME_num(sans) == 0) return Status::Ok();
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  X509_EXTENSION* ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, const_cast<GENERAL_NAMES*>(sans));
  if (ext == nullptr) {
    sk_X509_EXTENSION_free(exts);
    return OpenSslStatus(Code::kInvalidArgument, "encoding subjectAltName");
  }
  sk_X509_EXTENSION_push(exts, ext);
  int rc = X509_REQ_add_extensions(req, exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  if (rc != 1) return OpenSslStatus(Code::kInternal, "adding CSR extensions");
  return Status::Ok();
}

Result<X509ReqPtr> SignCsr(X509ReqPtr req, EVP_PKEY* key) {
  if (X509_REQ_set_version(req.get(), 0) != 1 || X509_REQ_set_pubkey(req.get(), key) != 1) {
    return Error(OpenSslStatus(Code::kInternal, "preparing CSR"));
  }
  int id = EVP_PKEY_get_base_id(key);
  const EVP_MD* md = (id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448) ? nullptr : EVP_sha256();
  if (X509_REQ_sign(req.get(), key, md) <= 0) {
    return Error(OpenSslStatus(Code::kInternal, "signing CSR"));
  }
  return req;
}

}  // namespace

Result<X509ReqPtr> BuildCsr(EVP_PKEY* key, const CsrRequest& request) {
  X509ReqPtr req(X509_REQ_new());
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  if (!request.common_name.empty() &&
      X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(request.common_name.c_str()), -1, -1, 0) != 1) {
    return Error(OpenSslStatus(Code::kInvalidArgument, "bad common name"));
  }
  GeneralNamesPtr sans(GENERAL_NAMES_new());
  for (const auto& dns : request.dns_names) {
    GENERAL_NAME* gn = GENERAL_NAME_new();
    ASN1_IA5STRING* s = ASN1_IA5STRING_new();
    ASN1_STRING_set(s, dns.data(), static_cast<int>(dns.size()));
    GENERAL_NAME_set0_value(gn, GEN_DNS, s);
    sk_GENERAL_NAME_push(sans.get(), gn);
  }
  for (const auto& ip : request.ip_addresses) {
    unsigned char buf[16];
    int len = 0;
    if (inet_pton(AF_INET, ip.c_str(), buf) == 1) {
      len = 4;
    } else if (inet_pton(AF_INET6, ip.c_str(), buf) == 1) {
      len = 16;
    } else {
      return Error(Code::kInvalidArgument, "bad IP address: " + ip);
    }
    GENERAL_NAME* gn = GENERAL_NAME_new();
    ASN1_OCTET_STRING* s = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(s, buf, len);
    GENERAL_NAME_set0_value(gn, GEN_IPADD, s);
    sk_GENERAL_NAME_push(sans.get(), gn);
  }
  CF_RETURN_IF_ERROR(AddSans(req.get(), sans.get()));
  if (!request.challenge_password.empty() &&
      X509_REQ_add1_attr_by_NID(req.get(), NID_pkcs9_challengePassword, MBSTRING_UTF8,
                                reinterpret_cast<const unsigned char*>(request.challenge_password.data()),
                                static_cast<int>(request.challenge_password.size())) != 1) {
    return Error(OpenSslStatus(Code::kInvalidArgument, "adding challengePassword"));
  }
  return SignCsr(std::move(req), key);
}

Result<X509ReqPtr> BuildCsrWithName(EVP_PKEY* key, const X509_NAME* subject, const GENERAL_NAMES* sans) {
  X509ReqPtr req(X509_REQ_new());
  if (X509_REQ_set_subject_name(req.get(), subject) != 1) {
    return Error(OpenSslStatus(Code::kInternal, "setting CSR subject"));
  }
  CF_RETURN_IF_ERROR(AddSans(req.get(), sans));
  return SignCsr(std::move(req), key);
}

std::string CsrToDer(X509_REQ* csr) {
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(csr, &der);
  if (len <= 0) return {};
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string CsrToPem(X509_REQ* csr) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), csr);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Result<X509ReqPtr> CsrFromDer(std::string_view der) {
  if (der.empty()) return Error(Code::kInvalidArgument, "empty CSR");
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  X509_REQ* req = d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size()));
  if (req == nullptr) return Error(OpenSslStatus(Code::kInvalidArgument, "not a DER PKCS#10 CSR"));
  X509ReqPtr owned(req);
  if (p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return Error(Code::kInvalidArgument, "trailing data after DER CSR");
  }
  return owned;
}

Result<X509ReqPtr> CsrFromPem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509_REQ* req = PEM_read_bio_X509_REQ(bio.get(), nullptr, NoPassphrase, nullptr);
  if (req == nullptr) return Error(OpenSslStatus(Code::kInvalidArgument, "not a PEM CSR"));
  return X509ReqPtr(req);
}

Status VerifyCsrSignature(X509_REQ* csr) {
  EVP_PKEY* key = X509_REQ_get0_pubkey(csr);
  if (key == nullptr) return OpenSslStatus(Code::kInvalidArgument, "CSR has no usable public key");
  if (X509_REQ_verify(csr, key) != 1) {
    return OpenSslStatus(Code::kInvalidArgument, "CSR signature does not verify (no proof of possession)");
  }
  return Status::Ok();
}

GeneralNamesPtr CsrSans(X509_REQ* csr) {
  STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(csr);
  if (exts == nullptr) {
    DrainOpenSslErrors();
    return nullptr;
  }
  GeneralNamesPtr out(static_cast<GENERAL_NAMES*>(X509V3_get_d2i(exts, NID_subject_alt_name, nullptr, nullptr)));
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  return out;
}

}  // namespace certfleet::shared
