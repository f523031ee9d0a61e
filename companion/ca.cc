#include "companion/ca.h"

#include <openssl/rand.h>

#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
using shared::X509Ptr;
namespace sh = shared;

namespace {

Status AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  sh::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return sh::OpenSslStatus(Code::kInternal, std::string("adding extension ") + OBJ_nid2sn(nid));
  }
  return Status::Ok();
}

Status SetRandomSerial(X509* cert) {
  unsigned char bytes[20];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return sh::OpenSslStatus(Code::kInternal, "RAND_bytes");
  bytes[0] &= 0x7f;  // positive
  bytes[0] |= 0x40;  // always 20 octets, never a leading zero
  sh::BignumPtr bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return sh::OpenSslStatus(Code::kInternal, "setting serial");
  }
  return Status::Ok();
}

Status SetValidity(X509* cert, sh::WallTime not_before, sh::WallTime not_after) {
  if (ASN1_TIME_set(X509_getm_notBefore(cert), static_cast<time_t>(sh::ToUnixSeconds(not_before))) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(cert), static_cast<time_t>(sh::ToUnixSeconds(not_after))) == nullptr) {
    return sh::OpenSslStatus(Code::kInternal, "setting validity");
  }
  return Status::Ok();
}

const EVP_MD* DigestFor(EVP_PKEY* key) {
  int id = EVP_PKEY_get_base_id(key);
  if (id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448) return nullptr;
  if (EVP_PKEY_get_bits(key) >= 384 && id == EVP_PKEY_EC) return EVP_sha384();
  return EVP_sha256();
}

Status SignCert(X509* cert, EVP_PKEY* key) {
  if (X509_sign(cert, key, DigestFor(key)) <= 0) return sh::OpenSslStatus(Code::kInternal, "signing certificate");
  return Status::Ok();
}

Result<X509Ptr> MakeCa(EVP_PKEY* subject_key, const std::string& cn, X509* issuer_cert, EVP_PKEY* issuer_key,
                       std::chrono::seconds validity, sh::WallTime now, const char* path_len) {
  X509Ptr cert(X509_new());
  CF_ASSIGN_OR_RETURN(sh::X509NamePtr name, NameFromCommonName(cn));
  X509_set_version(cert.get(), 2);
  CF_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  X509_set_subject_name(cert.get(), name.get());
  X509_set_issuer_name(cert.get(), issuer_cert ? X509_get_subject_name(issuer_cert) : name.get());
  CF_RETURN_IF_ERROR(SetValidity(cert.get(), now - std::chrono::minutes(5), now + validity));
  if (X509_set_pubkey(cert.get(), subject_key) != 1) return sh::Error(sh::OpenSslStatus(Code::kInternal, "set pubkey"));
  X509* issuer = issuer_cert ? issuer_cert : cert.get();
  CF_RETURN_IF_ERROR(AddExt(cert.get(), issuer, NID_basic_constraints, path_len));
  CF_RETURN_IF_ERROR(AddExt(cert.get(), issuer, NID_key_usage, "critical,keyCertSign,cRLSign"));
  CF_RETURN_IF_ERROR(AddExt(cert.get(), issuer, NID_subject_key_identifier, "hash"));
  if (issuer_cert) CF_RETURN_IF_ERROR(AddExt(cert.get(), issuer, NID_authority_key_identifier, "keyid:always"));
  CF_RETURN_IF_ERROR(SignCert(cert.get(), issuer_key));
  return cert;
}

}  // namespace

Result<sh::X509NamePtr> NameFromCommonName(const std::string& common_name) {
  sh::X509NamePtr name(X509_NAME_new());
  if (common_name.empty() || common_name.size() > 64 ||
      X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0) != 1) {
    sh::DrainOpenSslErrors();
    return sh::Error(Code::kInvalidArgument, "bad common name '" + common_name + "' (1-64 characters)");
  }
  return name;
}

Result<X509Ptr> MakeRootCa(EVP_PKEY* key, const std::string& common_name, std::chrono::seconds validity,
                           sh::WallTime now) {
  return MakeCa(key, common_name, nullptr, key, validity, now, "critical,CA:TRUE,pathlen:1");
}

Result<X509Ptr> MakeIntermediateCa(EVP_PKEY* subject_key, const std::string& common_name, X509* issuer_cert,
                                   EVP_PKEY* issuer_key, std::chrono::seconds validity, sh::WallTime now) {
  return MakeCa(subject_key, common_name, issuer_cert, issuer_key, validity, now, "critical,CA:TRUE,pathlen:0");
}

Status CheckKeyPolicy(EVP_PKEY* key, const std::vector<sh::KeyType>& allowed) {
  sh::KeyInfo info = sh::DescribeKey(key);
  if (info.algorithm == "RSA" && info.bits < 2048) {
    return Status(Code::kInvalidArgument, "RSA key of " + std::to_string(info.bits) + " bits is too weak (minimum 2048)");
  }
  for (sh::KeyType t : allowed) {
    switch (t) {
      case sh::KeyType::kEcP256:
        if (info.algorithm == "EC" && info.curve == "prime256v1") return Status::Ok();
        break;
      case sh::KeyType::kEcP384:
        if (info.algorithm == "EC" && info.curve == "secp384r1") return Status::Ok();
        break;
      case sh::KeyType::kRsa2048:
        if (info.algorithm == "RSA" && info.bits == 2048) return Status::Ok();
        break;
      case sh::KeyType::kRsa3072:
        if (info.algorithm == "RSA" && info.bits == 3072) return Status::Ok();
        break;
    }
  }
  std::string what = info.algorithm + (info.curve.empty() ? "" : " " + info.curve) + " " + std::to_string(info.bits);
  return Status(Code::kInvalidArgument, "key type " + what + " is not allowed by the certificate profile");
}

Result<X509Ptr> Issuer::Issue(const CertTemplate& tmpl, sh::WallTime now) {
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  CF_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  if (X509_set_subject_name(cert.get(), tmpl.subject.get()) != 1 ||
      X509_set_issuer_name(cert.get(), X509_get_subject_name(cert_.get())) != 1 ||
      X509_set_pubkey(cert.get(), tmpl.public_key) != 1) {
    return sh::Error(sh::OpenSslStatus(Code::kInternal, "building certificate"));
  }
  sh::WallTime not_after = now + tmpl.validity;
  struct tm ca_tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert_.get()), &ca_tm) == 1) {
    sh::WallTime ca_not_after = sh::FromUnixSeconds(static_cast<int64_t>(timegm(&ca_tm)));
    if (not_after > ca_not_after) not_after = ca_not_after;
  }
  if (not_after <= now) return sh::Error(Code::kFailedPrecondition, "the issuing CA has expired");
  CF_RETURN_IF_ERROR(SetValidity(cert.get(), now - tmpl.backdate, not_after));
  CF_RETURN_IF_ERROR(AddExt(cert.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE"));
  bool rsa = EVP_PKEY_get_base_id(tmpl.public_key) == EVP_PKEY_RSA;
  CF_RETURN_IF_ERROR(AddExt(cert.get(), cert_.get(), NID_key_usage,
                            rsa ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature"));
  CF_RETURN_IF_ERROR(AddExt(cert.get(), cert_.get(), NID_ext_key_usage,
                            tmpl.usage == Usage::kServerAuth ? "serverAuth" : "clientAuth"));
  CF_RETURN_IF_ERROR(AddExt(cert.get(), cert_.get(), NID_subject_key_identifier, "hash"));
  CF_RETURN_IF_ERROR(AddExt(cert.get(), cert_.get(), NID_authority_key_identifier, "keyid:always"));
  if (tmpl.sans && sk_GENERAL_NAME_num(tmpl.sans.get()) > 0) {
    if (X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, tmpl.sans.get(), 0, X509V3_ADD_DEFAULT) != 1) {
      return sh::Error(sh::OpenSslStatus(Code::kInternal, "adding subjectAltName"));
    }
  }
  std::lock_guard lock(mu_);
  CF_RETURN_IF_ERROR(SignCert(cert.get(), key_->pkey()));
  return cert;
}

Result<sh::X509CrlPtr> Issuer::MakeCrl(const std::vector<Revoked>& revoked, sh::WallTime now,
                                       std::chrono::seconds validity) {
  sh::X509CrlPtr crl(X509_CRL_new());
  if (!crl || X509_CRL_set_version(crl.get(), 1) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(cert_.get())) != 1) {
    return sh::Error(sh::OpenSslStatus(Code::kInternal, "building CRL"));
  }
  sh::Asn1TimePtr last(ASN1_TIME_set(nullptr, static_cast<time_t>(sh::ToUnixSeconds(now))));
  sh::Asn1TimePtr next(ASN1_TIME_set(nullptr, static_cast<time_t>(sh::ToUnixSeconds(now + validity))));
  if (!last || !next || X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1) {
    return sh::Error(sh::OpenSslStatus(Code::kInternal, "setting CRL times"));
  }
  for (const auto& r : revoked) {
    BIGNUM* raw = nullptr;
    if (BN_hex2bn(&raw, r.serial_hex.c_str()) == 0) {
      return sh::Error(Code::kDataLoss, "bad serial in revocation list: " + r.serial_hex);
    }
    sh::BignumPtr bn(raw);
    X509_REVOKED* entry = X509_REVOKED_new();
    sh::Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    sh::Asn1TimePtr when(ASN1_TIME_set(nullptr, static_cast<time_t>(sh::ToUnixSeconds(r.revoked_at))));
    if (entry == nullptr || !serial || !when || X509_REVOKED_set_serialNumber(entry, serial.get()) != 1 ||
        X509_REVOKED_set_revocationDate(entry, when.get()) != 1 || X509_CRL_add0_revoked(crl.get(), entry) != 1) {
      X509_REVOKED_free(entry);
      return sh::Error(sh::OpenSslStatus(Code::kInternal, "adding CRL entry"));
    }
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert_.get(), nullptr, nullptr, crl.get(), 0);
  sh::X509ExtPtr aki(X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!aki || X509_CRL_add_ext(crl.get(), aki.get(), -1) != 1) {
    return sh::Error(sh::OpenSslStatus(Code::kInternal, "adding CRL extension"));
  }
  X509_CRL_sort(crl.get());
  std::lock_guard lock(mu_);
  if (X509_CRL_sign(crl.get(), key_->pkey(), DigestFor(key_->pkey())) <= 0) {
    return sh::Error(sh::OpenSslStatus(Code::kInternal, "signing CRL"));
  }
  return crl;
}

std::string Issuer::IntermediatesPem() const {
  std::string out;
  for (X509* ca : Chain()) {
    if (X509_check_issued(ca, ca) != X509_V_OK) out += sh::CertToPem(ca);
  }
  return out;
}

Result<X509Ptr> IssueServiceCert(Issuer& issuer, EVP_PKEY* key, const std::string& common_name, Usage usage,
                                 const std::vector<std::string>& hostnames, std::chrono::seconds validity,
                                 sh::WallTime now) {
  CertTemplate tmpl;
  CF_ASSIGN_OR_RETURN(tmpl.subject, NameFromCommonName(common_name));
  if (!hostnames.empty()) {
    sh::CsrRequest names;
    for (const auto& h : hostnames) {
      bool address = h.find_first_not_of("0123456789.") == std::string::npos || h.find(':') != std::string::npos;
      (address ? names.ip_addresses : names.dns_names).push_back(h);
    }
    // The CSR builder already turns names into a GENERAL_NAMES list.
    CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsr(key, names));
    tmpl.sans = sh::CsrSans(csr.get());
  }
  tmpl.public_key = key;
  tmpl.validity = validity;
  tmpl.backdate = std::chrono::minutes(5);
  tmpl.usage = usage;
  return issuer.Issue(tmpl, now);
}

std::vector<X509*> Issuer::Chain() const {
  std::vector<X509*> out{cert_.get()};
  for (const auto& c : chain_above_) out.push_back(c.get());
  return out;
}

}  // namespace certfleet::companion
