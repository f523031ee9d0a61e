#include "shared/x509/cert.h"

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdio>

#include "shared/x509/openssl_error.h"

namespace certfleet::shared {
namespace {

WallTime Asn1ToWall(const ASN1_TIME* t) {
  struct tm tm {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return WallTime{};
  return FromUnixSeconds(static_cast<int64_t>(timegm(&tm)));
}

std::string Hex(const unsigned char* data, size_t len, bool upper) {
  static const char* lower_digits = "0123456789abcdef";
  static const char* upper_digits = "0123456789ABCDEF";
  const char* d = upper ? upper_digits : lower_digits;
  std::string out;
  out.reserve(len * 2);
  for (size_t i = 0; i < len; ++i) {
    out += d[data[i] >> 4];
    out += d[data[i] & 15];
  }
  return out;
}

}  // namespace

Result<X509Ptr> CertFromDer(std::string_view der) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  if (cert == nullptr) return Error(OpenSslStatus(Code::kInvalidArgument, "not a DER certificate"));
  X509Ptr owned(cert);
  if (p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return Error(Code::kInvalidArgument, "trailing data after DER certificate");
  }
  return owned;
}

Result<X509Ptr> CertFromPem(std::string_view pem) {
  auto certs = CertsFromPem(pem);
  if (!certs) return Error(certs.error());
  return std::move(certs->front());
}

Result<std::vector<X509Ptr>> CertsFromPem(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509Ptr> out;
  for (;;) {
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr);
    if (cert == nullptr) break;
    out.emplace_back(cert);
  }
  DrainOpenSslErrors();  // the loop always ends with a "no start line" error
  if (out.empty()) return Error(Code::kInvalidArgument, "no PEM certificate found");
  return out;
}

std::string CertToDer(X509* cert) {
  unsigned char* der = nullptr;
  int len = i2d_X509(cert, &der);
  if (len <= 0) return {};
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string CertsToPem(const std::vector<X509Ptr>& certs) {
  std::string out;
  for (const auto& c : certs) out += CertToPem(c.get());
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  return Hex(md, sizeof md, false);
}

Result<std::string> RandomHex(size_t bytes) {
  std::string buf(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(buf.data()), static_cast<int>(bytes)) != 1) {
    return Error(OpenSslStatus(Code::kInternal, "RAND_bytes"));
  }
  return Hex(reinterpret_cast<const unsigned char*>(buf.data()), buf.size(), false);
}

std::string CertFingerprint(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  return Hex(md, len, false);
}

std::string NameCommonName(const X509_NAME* name) {
  if (name == nullptr) return {};
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return {};
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) return {};
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

std::string NameToString(const X509_NAME* name) {
  if (name == nullptr) return {};
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::vector<std::string> CanonicalSans(const GENERAL_NAMES* names) {
  std::vector<std::string> out;
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
    int type = 0;
    const ASN1_STRING* s = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(gn, &type));
    switch (type) {
      case GEN_DNS:
      case GEN_URI:
      case GEN_EMAIL: {
        std::string v(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
        out.push_back(std::string(type == GEN_DNS ? "DNS:" : type == GEN_URI ? "URI:" : "email:") + v);
        break;
      }
      case GEN_IPADD: {
        const unsigned char* d = ASN1_STRING_get0_data(s);
        int len = ASN1_STRING_length(s);
        char buf[64] = {0};
        if (len == 4) {
          std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", d[0], d[1], d[2], d[3]);
          out.push_back(std::string("IP:") + buf);
        } else {
          out.push_back("IP:" + Hex(d, static_cast<size_t>(len), false));
        }
        break;
      }
      default: {
        unsigned char* der = nullptr;
        int len = i2d_GENERAL_NAME(const_cast<GENERAL_NAME*>(gn), &der);
        if (len > 0) {
          out.push_back("other:" + Hex(der, static_cast<size_t>(len), false));
          OPENSSL_free(der);
        }
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> CertSans(X509* cert) {
  GeneralNamesPtr names(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  return CanonicalSans(names.get());
}

CertInfo DescribeCert(X509* cert) {
  CertInfo info;
  info.id = CertFingerprint(cert);
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  BignumPtr bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (bn) {
    OpenSslStringPtr hex(BN_bn2hex(bn.get()));
    info.serial = hex.get();
  }
  info.subject = NameToString(X509_get_subject_name(cert));
  info.issuer = NameToString(X509_get_issuer_name(cert));
  info.common_name = NameCommonName(X509_get_subject_name(cert));
  for (const auto& san : CertSans(cert)) {
    if (san.rfind("DNS:", 0) == 0) info.dns_names.push_back(san.substr(4));
    if (san.rfind("IP:", 0) == 0) info.ip_addresses.push_back(san.substr(3));
  }
  info.not_before = Asn1ToWall(X509_get0_notBefore(cert));
  info.not_after = Asn1ToWall(X509_get0_notAfter(cert));
  info.is_ca = X509_check_ca(cert) > 0;
  return info;
}

Result<TrustStore> TrustStore::FromPem(std::string_view pem) {
  auto certs = CertsFromPem(pem);
  if (!certs) return Error(certs.error().WithContext("trust anchors"));
  std::vector<X509*> raw;
  for (auto& c : *certs) raw.push_back(c.get());
  return FromCerts(raw);
}

Result<TrustStore> TrustStore::FromCerts(const std::vector<X509*>& certs) {
  TrustStore ts;
  ts.store_.reset(X509_STORE_new());
  if (!ts.store_) return Error(OpenSslStatus(Code::kInternal, "X509_STORE_new"));
  for (X509* c : certs) {
    X509_up_ref(c);
    ts.anchors_.emplace_back(c);
    if (X509_STORE_add_cert(ts.store_.get(), c) != 1) {
      return Error(OpenSslStatus(Code::kInvalidArgument, "adding trust anchor"));
    }
  }
  return ts;
}

Status TrustStore::Verify(X509* leaf, STACK_OF(X509) * untrusted, WallTime at, bool ignore_time) const {
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store_.get(), leaf, untrusted) != 1) {
    return OpenSslStatus(Code::kInternal, "X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_ANY);
  if (ignore_time) {
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME);
  } else {
    X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(ToUnixSeconds(at)));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    DrainOpenSslErrors();
    return Status(Code::kUnauthenticated, std::string("certificate verification failed: ") +
                                              X509_verify_cert_error_string(err));
  }
  return Status::Ok();
}

Status TrustStore::VerifyExpiredLeaf(X509* leaf, STACK_OF(X509) * untrusted, WallTime now) const {
  const WallTime at = DescribeCert(leaf).not_after - std::chrono::seconds(1);
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store_.get(), leaf, untrusted) != 1) {
    return OpenSslStatus(Code::kInternal, "X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_ANY);
  X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(ToUnixSeconds(at)));
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    DrainOpenSslErrors();
    return Status(Code::kUnauthenticated, std::string("certificate verification failed at its notAfter: ") +
                                              X509_verify_cert_error_string(err));
  }
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());  // borrowed
  time_t t = static_cast<time_t>(ToUnixSeconds(now));
  for (int i = 1; i < sk_X509_num(chain); ++i) {
    X509* ca = sk_X509_value(chain, i);
    if (X509_cmp_time(X509_get0_notBefore(ca), &t) >= 0 || X509_cmp_time(X509_get0_notAfter(ca), &t) <= 0) {
      return Status(Code::kUnauthenticated,
                    "certificate verification failed: CA certificate '" + NameToString(X509_get_subject_name(ca)) +
                        "' is not valid now");
    }
  }
  return Status::Ok();
}

}  // namespace certfleet::shared
