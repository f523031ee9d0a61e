// Owning smart pointers for C library handles, each with a stateless deleter.
// OpenSSL naming tells ownership: get0 borrows, get1/new returns an owned reference
// that goes into one of these.
#pragma once

#include <memory>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pkcs7.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>

namespace certfleet::shared {

template <auto Fn>
struct FnDeleter {
  template <class T>
  void operator()(T* p) const noexcept {
    if (p != nullptr) Fn(p);
  }
};

inline void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
inline void FreeX509StackShallow(STACK_OF(X509) * s) { sk_X509_free(s); }
inline void FreeGeneralNames(GENERAL_NAMES* n) { GENERAL_NAMES_free(n); }
inline void FreeOpenSslString(char* s) { OPENSSL_free(s); }

using X509Ptr = std::unique_ptr<X509, FnDeleter<X509_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, FnDeleter<X509_REQ_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, FnDeleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, FnDeleter<X509_STORE_CTX_free>>;
using X509CrlPtr = std::unique_ptr<X509_CRL, FnDeleter<X509_CRL_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, FnDeleter<X509_NAME_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, FnDeleter<X509_EXTENSION_free>>;
// Owns the stack and the certificates in it.
using X509StackPtr = std::unique_ptr<STACK_OF(X509), FnDeleter<FreeX509Stack>>;
// Owns the stack only; the certificates are borrowed (e.g. an "untrusted" chain
// built from certificates that live elsewhere).
using X509StackRefPtr = std::unique_ptr<STACK_OF(X509), FnDeleter<FreeX509StackShallow>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, FnDeleter<FreeGeneralNames>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, FnDeleter<EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, FnDeleter<EVP_PKEY_CTX_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, FnDeleter<EVP_MD_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, FnDeleter<BIO_free_all>>;
using Pkcs7Ptr = std::unique_ptr<PKCS7, FnDeleter<PKCS7_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, FnDeleter<BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, FnDeleter<ASN1_INTEGER_free>>;
using Asn1TimePtr = std::unique_ptr<ASN1_TIME, FnDeleter<ASN1_TIME_free>>;
using OpenSslStringPtr = std::unique_ptr<char, FnDeleter<FreeOpenSslString>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, FnDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, FnDeleter<SSL_free>>;
using CurlPtr = std::unique_ptr<CURL, FnDeleter<curl_easy_cleanup>>;
using CurlSlistPtr = std::unique_ptr<curl_slist, FnDeleter<curl_slist_free_all>>;
using SqlitePtr = std::unique_ptr<sqlite3, FnDeleter<sqlite3_close_v2>>;
using SqliteStmtPtr = std::unique_ptr<sqlite3_stmt, FnDeleter<sqlite3_finalize>>;

}  // namespace certfleet::shared
