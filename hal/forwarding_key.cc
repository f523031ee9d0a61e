// The OpenSSL key methods used here (EC_KEY_METHOD, RSA_METHOD, ex_data on EC_KEY and
// RSA) are deprecated in OpenSSL 3 in favour of providers, but they are what OpenSSL 3.0
// offers for a key whose private half lives elsewhere short of writing a provider.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "hal/forwarding_key.h"

#include <algorithm>
#include <mutex>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include "shared/x509/openssl_error.h"

namespace certfleet::hal {

using shared::Code;
using shared::EvpPkeyPtr;
using shared::Status;

namespace {

struct SignerRef {
  std::shared_ptr<RemoteSigner> signer;
};

void FreeRef(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<SignerRef*>(ptr); }
// EC_KEY_dup / RSA copies duplicate ex_data: each copy gets its own reference.
int DupRef(CRYPTO_EX_DATA*, const CRYPTO_EX_DATA*, void** from_d, int, long, void*) {
  if (*from_d != nullptr) *from_d = new SignerRef(*static_cast<SignerRef*>(*from_d));
  return 1;
}

void RaiseSignError(const Status& st) { ERR_raise_data(ERR_LIB_USER, ERR_R_INTERNAL_ERROR, "%s", st.ToString().c_str()); }

int g_ec_index = -1;
int g_rsa_index = -1;
EC_KEY_METHOD* g_ec_method = nullptr;
RSA_METHOD* g_rsa_method = nullptr;

ECDSA_SIG* EcSignSig(const unsigned char* dgst, int dlen, const BIGNUM*, const BIGNUM*, EC_KEY* ec) {
  auto* ref = static_cast<SignerRef*>(EC_KEY_get_ex_data(ec, g_ec_index));
  if (ref == nullptr) {
    RaiseSignError(Status(Code::kInternal, "hardware key without its device reference"));
    return nullptr;
  }
  auto der = ref->signer->EcdsaSign(std::string_view(reinterpret_cast<const char*>(dgst), static_cast<size_t>(dlen)));
  if (!der) {
    RaiseSignError(der.error());
    return nullptr;
  }
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der->data());
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der->size()));
  if (sig == nullptr) RaiseSignError(Status(Code::kInternal, "the device returned a malformed ECDSA signature"));
  return sig;
}

int EcSign(int, const unsigned char* dgst, int dlen, unsigned char* out, unsigned int* out_len, const BIGNUM* kinv,
           const BIGNUM* r, EC_KEY* ec) {
  ECDSA_SIG* sig = EcSignSig(dgst, dlen, kinv, r, ec);
  if (sig == nullptr) return 0;
  unsigned char* p = out;
  int n = i2d_ECDSA_SIG(sig, &p);
  ECDSA_SIG_free(sig);
  if (n <= 0) return 0;
  *out_len = static_cast<unsigned int>(n);
  return 1;
}

int EcSignSetup(EC_KEY*, BN_CTX*, BIGNUM**, BIGNUM**) { return 1; }

int RsaPrivEnc(int flen, const unsigned char* from, unsigned char* to, RSA* rsa, int padding) {
  auto* ref = static_cast<SignerRef*>(RSA_get_ex_data(rsa, g_rsa_index));
  if (ref == nullptr) {
    RaiseSignError(Status(Code::kInternal, "hardware key without its device reference"));
    return -1;
  }
  if (padding != RSA_PKCS1_PADDING && padding != RSA_NO_PADDING) {
    RaiseSignError(Status(Code::kUnimplemented, "RSA padding not supported for hardware keys"));
    return -1;
  }
  auto sig = ref->signer->RsaPrivate(std::string_view(reinterpret_cast<const char*>(from), static_cast<size_t>(flen)),
                                     padding == RSA_PKCS1_PADDING);
  if (!sig) {
    RaiseSignError(sig.error());
    return -1;
  }
  if (sig->size() > static_cast<size_t>(RSA_size(rsa))) return -1;
  std::copy(sig->begin(), sig->end(), to);
  return static_cast<int>(sig->size());
}

void InitMethods() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_ec_index = EC_KEY_get_ex_new_index(0, nullptr, nullptr, DupRef, FreeRef);
    g_rsa_index = RSA_get_ex_new_index(0, nullptr, nullptr, DupRef, FreeRef);
    g_ec_method = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    EC_KEY_METHOD_set_sign(g_ec_method, EcSign, EcSignSetup, EcSignSig);
    g_rsa_method = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    RSA_meth_set1_name(g_rsa_method, "certfleet hardware key");
    RSA_meth_set_priv_enc(g_rsa_method, RsaPrivEnc);
  });
}

}  // namespace

shared::Result<EvpPkeyPtr> MakeForwardingKey(EVP_PKEY* public_key, std::shared_ptr<RemoteSigner> signer) {
  InitMethods();
  EvpPkeyPtr pkey(EVP_PKEY_new());
  if (!pkey) return shared::Error(shared::OpenSslStatus(Code::kInternal, "EVP_PKEY_new"));
  if (EVP_PKEY_get_base_id(public_key) == EVP_PKEY_EC) {
    // A copy of the public key; the method must be set before the key is assigned so
    // that OpenSSL sees a foreign key and keeps it on the legacy path.
    EC_KEY* ec = EVP_PKEY_get1_EC_KEY(public_key);
    if (ec == nullptr) return shared::Error(shared::OpenSslStatus(Code::kInternal, "EC public key"));
    if (EC_KEY_set_method(ec, g_ec_method) != 1 ||
        EC_KEY_set_ex_data(ec, g_ec_index, new SignerRef{std::move(signer)}) != 1 ||
        EVP_PKEY_assign_EC_KEY(pkey.get(), ec) != 1) {
      EC_KEY_free(ec);
      return shared::Error(shared::OpenSslStatus(Code::kInternal, "hardware EC key"));
    }
    return pkey;
  }
  if (EVP_PKEY_get_base_id(public_key) == EVP_PKEY_RSA) {
    const RSA* pub = EVP_PKEY_get0_RSA(public_key);
    const BIGNUM* n = nullptr;
    const BIGNUM* e = nullptr;
    if (pub != nullptr) RSA_get0_key(pub, &n, &e, nullptr);
    RSA* rsa = RSA_new();
    BIGNUM* n2 = n != nullptr ? BN_dup(n) : nullptr;
    BIGNUM* e2 = e != nullptr ? BN_dup(e) : nullptr;
    if (rsa == nullptr || n2 == nullptr || e2 == nullptr || RSA_set0_key(rsa, n2, e2, nullptr) != 1) {
      BN_free(n2);
      BN_free(e2);
      RSA_free(rsa);
      return shared::Error(shared::OpenSslStatus(Code::kInternal, "RSA public key"));
    }
    RSA_set_flags(rsa, RSA_FLAG_EXT_PKEY);
    if (RSA_set_method(rsa, g_rsa_method) != 1 ||
        RSA_set_ex_data(rsa, g_rsa_index, new SignerRef{std::move(signer)}) != 1 ||
        EVP_PKEY_assign_RSA(pkey.get(), rsa) != 1) {
      RSA_free(rsa);
      return shared::Error(shared::OpenSslStatus(Code::kInternal, "hardware RSA key"));
    }
    return pkey;
  }
  return shared::Error(Code::kUnimplemented, "hardware keys are EC or RSA");
}

}  // namespace certfleet::hal
