// Building public keys from PKCS#11 attributes uses the EC_KEY / RSA level API, which is
// deprecated in OpenSSL 3 but is what forwarding_key.cc builds on anyway.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "hal/pkcs11_keystore.h"

#include <dlfcn.h>

#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "hal/forwarding_key.h"
#include "hal/pkcs11_uri.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::hal {

using shared::Code;
using shared::EvpPkeyPtr;

namespace {

std::string RvName(CK_RV rv) {
  switch (rv) {
    case CKR_OK: return "CKR_OK";
    case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
    case CKR_PIN_LOCKED: return "CKR_PIN_LOCKED";
    case CKR_PIN_LEN_RANGE: return "CKR_PIN_LEN_RANGE";
    case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
    case CKR_TOKEN_NOT_PRESENT: return "CKR_TOKEN_NOT_PRESENT";
    case CKR_DEVICE_ERROR: return "CKR_DEVICE_ERROR";
    case CKR_DEVICE_REMOVED: return "CKR_DEVICE_REMOVED";
    case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
    case CKR_OBJECT_HANDLE_INVALID: return "CKR_OBJECT_HANDLE_INVALID";
    case CKR_KEY_HANDLE_INVALID: return "CKR_KEY_HANDLE_INVALID";
    case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
    case CKR_ATTRIBUTE_TYPE_INVALID: return "CKR_ATTRIBUTE_TYPE_INVALID";
    case CKR_ATTRIBUTE_SENSITIVE: return "CKR_ATTRIBUTE_SENSITIVE";
    case CKR_TEMPLATE_INCONSISTENT: return "CKR_TEMPLATE_INCONSISTENT";
    case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
    case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
    default: break;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "CKR 0x%lx", static_cast<unsigned long>(rv));
  return buf;
}

Code RvCode(CK_RV rv) {
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_LEN_RANGE:
    case CKR_USER_NOT_LOGGED_IN: return Code::kUnauthenticated;
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED: return Code::kPermissionDenied;
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED: return Code::kUnavailable;
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID: return Code::kNotFound;
    default: return Code::kInternal;
  }
}

Status RvStatus(CK_RV rv, std::string_view what) {
  return Status(RvCode(rv), std::string(what) + ": " + RvName(rv));
}

// A loaded and initialised module. Modules are shared by every store in the process
// that names the same path: PKCS#11 allows one C_Initialize per process.
struct Pkcs11Module {
  std::string path;
  CK_FUNCTION_LIST* fl = nullptr;
  bool finalize = false;
  ~Pkcs11Module() {
    // The library stays mapped: modules often register process-exit handlers.
    if (finalize && fl != nullptr) fl->C_Finalize(nullptr);
  }
};

std::mutex g_modules_mu;
std::map<std::string, std::weak_ptr<Pkcs11Module>>& Modules() {
  static auto* modules = new std::map<std::string, std::weak_ptr<Pkcs11Module>>();
  return *modules;
}

Result<std::shared_ptr<Pkcs11Module>> LoadModule(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_modules_mu);
  if (auto m = Modules()[path].lock()) return m;
  void* dl = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (dl == nullptr) {
    const char* why = ::dlerror();
    return shared::Error(Code::kNotFound, "cannot load PKCS#11 module " + path + ": " + (why ? why : "?"));
  }
  auto get = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(dl, "C_GetFunctionList"));
  if (get == nullptr) return shared::Error(Code::kInvalidArgument, path + " is not a PKCS#11 module");
  auto m = std::make_shared<Pkcs11Module>();
  m->path = path;
  CK_RV rv = get(&m->fl);
  if (rv != CKR_OK || m->fl == nullptr) return shared::Error(RvStatus(rv, "C_GetFunctionList of " + path));
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  rv = m->fl->C_Initialize(&args);
  if (rv == CKR_OK) {
    m->finalize = true;
  } else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    return shared::Error(RvStatus(rv, "C_Initialize of " + path));
  }
  Modules()[path] = m;
  return m;
}

std::string Trim(const unsigned char* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

// One logged-in R/W session. Every call into the token goes through `mu`.
struct Pkcs11Session {
  std::shared_ptr<Pkcs11Module> module;
  CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  std::mutex mu;

  CK_FUNCTION_LIST* fl() const { return module->fl; }
  ~Pkcs11Session() {
    if (handle != CK_INVALID_HANDLE) fl()->C_CloseSession(handle);
  }

  // Requires mu.
  Result<std::vector<CK_OBJECT_HANDLE>> Find(std::vector<CK_ATTRIBUTE> tmpl) {
    CK_RV rv = fl()->C_FindObjectsInit(handle, tmpl.data(), tmpl.size());
    if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_FindObjectsInit"));
    std::vector<CK_OBJECT_HANDLE> out;
    CK_OBJECT_HANDLE batch[32];
    for (;;) {
      CK_ULONG n = 0;
      rv = fl()->C_FindObjects(handle, batch, 32, &n);
      if (rv != CKR_OK) break;
      out.insert(out.end(), batch, batch + n);
      if (n < 32) break;
    }
    fl()->C_FindObjectsFinal(handle);
    if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_FindObjects"));
    return out;
  }

  // Requires mu.
  Result<std::string> Attribute(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type) {
    CK_ATTRIBUTE a{type, nullptr, 0};
    CK_RV rv = fl()->C_GetAttributeValue(handle, obj, &a, 1);
    if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
      return shared::Error(RvStatus(rv == CKR_OK ? CKR_ATTRIBUTE_TYPE_INVALID : rv, "C_GetAttributeValue"));
    }
    std::string value(a.ulValueLen, '\0');
    a.pValue = value.data();
    rv = fl()->C_GetAttributeValue(handle, obj, &a, 1);
    if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_GetAttributeValue"));
    value.resize(a.ulValueLen);
    return value;
  }

  Result<std::string> Sign(CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech, const unsigned char* data, size_t len) {
    std::lock_guard<std::mutex> lock(mu);
    CK_MECHANISM m{mech, nullptr, 0};
    CK_RV rv = fl()->C_SignInit(handle, &m, key);
    if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_SignInit"));
    CK_ULONG sig_len = 0;
    rv = fl()->C_Sign(handle, const_cast<unsigned char*>(data), len, nullptr, &sig_len);
    if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_Sign"));
    std::string sig(sig_len, '\0');
    rv = fl()->C_Sign(handle, const_cast<unsigned char*>(data), len, reinterpret_cast<unsigned char*>(sig.data()),
                      &sig_len);
    if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_Sign"));
    sig.resize(sig_len);
    return sig;
  }
};

namespace {

// Signs with one private key object of the token.
class Pkcs11Signer final : public RemoteSigner {
 public:
  Pkcs11Signer(std::shared_ptr<Pkcs11Session> session, CK_OBJECT_HANDLE key) : session_(std::move(session)), key_(key) {}

  Result<std::string> EcdsaSign(std::string_view digest) override {
    CF_ASSIGN_OR_RETURN(std::string raw, session_->Sign(key_, CKM_ECDSA, Bytes(digest), digest.size()));
    // PKCS#11 returns r || s, each as long as the order; OpenSSL wants DER.
    if (raw.empty() || raw.size() % 2 != 0) return shared::Error(Code::kInternal, "malformed ECDSA signature from the token");
    size_t half = raw.size() / 2;
    const unsigned char* p = Bytes(raw);
    BIGNUM* r = BN_bin2bn(p, static_cast<int>(half), nullptr);
    BIGNUM* s = BN_bin2bn(p + half, static_cast<int>(half), nullptr);
    ECDSA_SIG* sig = ECDSA_SIG_new();
    if (r == nullptr || s == nullptr || sig == nullptr || ECDSA_SIG_set0(sig, r, s) != 1) {
      BN_free(r);
      BN_free(s);
      ECDSA_SIG_free(sig);
      return shared::Error(shared::OpenSslStatus(Code::kInternal, "ECDSA signature"));
    }
    unsigned char* der = nullptr;
    int n = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    if (n <= 0) return shared::Error(shared::OpenSslStatus(Code::kInternal, "ECDSA signature"));
    std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
    return out;
  }

  Result<std::string> RsaPrivate(std::string_view input, bool pkcs1) override {
    return session_->Sign(key_, pkcs1 ? CKM_RSA_PKCS : CKM_RSA_X_509, Bytes(input), input.size());
  }

 private:
  static const unsigned char* Bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }
  std::shared_ptr<Pkcs11Session> session_;
  CK_OBJECT_HANDLE key_;
};

// The public key of `pub` (an object holding the public attributes) bound to the
// token's private key `priv`. Requires s->mu.
Result<EvpPkeyPtr> TokenKey(const std::shared_ptr<Pkcs11Session>& s, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub,
                            CK_KEY_TYPE type) {
  EvpPkeyPtr public_key(EVP_PKEY_new());
  if (!public_key) return shared::Error(shared::OpenSslStatus(Code::kInternal, "EVP_PKEY_new"));
  if (type == CKK_EC) {
    CF_ASSIGN_OR_RETURN(std::string params, s->Attribute(pub, CKA_EC_PARAMS));
    CF_ASSIGN_OR_RETURN(std::string point, s->Attribute(pub, CKA_EC_POINT));
    const unsigned char* p = reinterpret_cast<const unsigned char*>(params.data());
    ASN1_OBJECT* oid = d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(params.size()));
    int nid = oid != nullptr ? OBJ_obj2nid(oid) : NID_undef;
    ASN1_OBJECT_free(oid);
    if (nid == NID_undef) return shared::Error(Code::kDataLoss, "PKCS#11 EC key on an unknown curve");
    EC_KEY* ec = EC_KEY_new_by_curve_name(nid);
    if (ec == nullptr) return shared::Error(shared::OpenSslStatus(Code::kDataLoss, "EC curve"));
    // CKA_EC_POINT is a DER OCTET STRING; some modules return the bare point.
    p = reinterpret_cast<const unsigned char*>(point.data());
    ASN1_OCTET_STRING* os = d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(point.size()));
    bool ok = false;
    if (os != nullptr) ok = EC_KEY_oct2key(ec, ASN1_STRING_get0_data(os), ASN1_STRING_length(os), nullptr) == 1;
    ASN1_OCTET_STRING_free(os);
    if (!ok) ok = EC_KEY_oct2key(ec, reinterpret_cast<const unsigned char*>(point.data()), point.size(), nullptr) == 1;
    if (!ok || EVP_PKEY_assign_EC_KEY(public_key.get(), ec) != 1) {
      EC_KEY_free(ec);
      return shared::Error(shared::OpenSslStatus(Code::kDataLoss, "PKCS#11 EC public key"));
    }
  } else if (type == CKK_RSA) {
    CF_ASSIGN_OR_RETURN(std::string n, s->Attribute(pub, CKA_MODULUS));
    CF_ASSIGN_OR_RETURN(std::string e, s->Attribute(pub, CKA_PUBLIC_EXPONENT));
    RSA* rsa = RSA_new();
    BIGNUM* bn_n = BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()), nullptr);
    BIGNUM* bn_e = BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()), nullptr);
    if (rsa == nullptr || bn_n == nullptr || bn_e == nullptr || RSA_set0_key(rsa, bn_n, bn_e, nullptr) != 1) {
      BN_free(bn_n);
      BN_free(bn_e);
      RSA_free(rsa);
      return shared::Error(shared::OpenSslStatus(Code::kDataLoss, "PKCS#11 RSA public key"));
    }
    if (EVP_PKEY_assign_RSA(public_key.get(), rsa) != 1) {
      RSA_free(rsa);
      return shared::Error(shared::OpenSslStatus(Code::kDataLoss, "PKCS#11 RSA public key"));
    }
  } else {
    return shared::Error(Code::kUnimplemented, "PKCS#11 key of a type other than EC or RSA");
  }
  return MakeForwardingKey(public_key.get(), std::make_shared<Pkcs11Signer>(s, priv));
}


CK_BBOOL kTrue = CK_TRUE;
CK_BBOOL kFalse = CK_FALSE;

CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, const void* value, size_t len) {
  return CK_ATTRIBUTE{type, const_cast<void*>(value), static_cast<CK_ULONG>(len)};
}

}  // namespace

Result<Pkcs11Options> Pkcs11OptionsFromConfig(const KeyStoreConfig& config) {
  Pkcs11Options o;
  Pkcs11Uri uri;
  if (!config.uri.empty()) {
    auto parsed = ParsePkcs11Uri(config.uri);
    if (!parsed) return shared::Error(parsed.error().WithContext("keystore.uri"));
    uri = std::move(*parsed);
  }
  o.module_path = config.module.empty() ? uri.module_path : config.module;
  o.token_label = uri.token;
  if (o.module_path.empty()) {
    return shared::Error(Code::kInvalidArgument, "keystore 'pkcs11' needs a module (keystore.module or module-path)");
  }
  if (o.token_label.empty()) {
    return shared::Error(Code::kInvalidArgument, "keystore 'pkcs11' needs a token label (keystore.uri = \"pkcs11:token=...\")");
  }
  std::string pin_file = config.pin_file.empty() ? uri.pin_source : config.pin_file;
  if (!pin_file.empty()) {
    CF_ASSIGN_OR_RETURN(o.pin, ReadPinFile(pin_file));
  } else if (!uri.pin_value.empty()) {
    o.pin = std::move(uri.pin_value);
    OPENSSL_cleanse(uri.pin_value.data(), uri.pin_value.size());
  } else {
    return shared::Error(Code::kInvalidArgument, "keystore 'pkcs11' needs a PIN (keystore.pin_file or pin-source)");
  }
  return o;
}

Result<std::unique_ptr<Pkcs11KeyStore>> Pkcs11KeyStore::Open(Pkcs11Options options) {
  struct ScrubPin {
    std::string& pin;
    ~ScrubPin() { OPENSSL_cleanse(pin.data(), pin.size()); }
  } scrub{options.pin};
  CF_ASSIGN_OR_RETURN(auto module, LoadModule(options.module_path));
  CK_FUNCTION_LIST* fl = module->fl;
  CK_ULONG count = 0;
  CK_RV rv = fl->C_GetSlotList(CK_TRUE, nullptr, &count);
  if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_GetSlotList"));
  std::vector<CK_SLOT_ID> slots(count);
  rv = fl->C_GetSlotList(CK_TRUE, slots.data(), &count);
  if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_GetSlotList"));
  slots.resize(count);
  std::optional<CK_SLOT_ID> found;
  for (CK_SLOT_ID id : slots) {
    CK_TOKEN_INFO info{};
    if (fl->C_GetTokenInfo(id, &info) != CKR_OK) continue;
    if (Trim(info.label, sizeof(info.label)) == options.token_label) {
      found = id;
      break;
    }
  }
  if (!found) {
    return shared::Error(Code::kNotFound, "no PKCS#11 token labelled '" + options.token_label + "' in " + options.module_path);
  }
  auto session = std::make_shared<Pkcs11Session>();
  session->module = module;
  rv = fl->C_OpenSession(*found, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session->handle);
  if (rv != CKR_OK) return shared::Error(RvStatus(rv, "C_OpenSession on token '" + options.token_label + "'"));
  rv = fl->C_Login(session->handle, CKU_USER, reinterpret_cast<unsigned char*>(options.pin.data()), options.pin.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    std::string what = rv == CKR_PIN_INCORRECT ? "wrong PIN for PKCS#11 token '" + options.token_label + "'"
                                               : "login to PKCS#11 token '" + options.token_label + "'";
    return shared::Error(RvStatus(rv, what));
  }
  return std::unique_ptr<Pkcs11KeyStore>(new Pkcs11KeyStore(std::move(session), options.token_label));
}

Pkcs11KeyStore::~Pkcs11KeyStore() = default;

std::string Pkcs11KeyStore::UriOf(std::string_view slot) const {
  return "pkcs11:token=" + Pkcs11Escape(token_) + ";object=" + Pkcs11Escape(slot) + ";type=private";
}

namespace {

std::vector<CK_ATTRIBUTE> ByLabel(const CK_OBJECT_CLASS& cls, std::string_view label) {
  return {Attr(CKA_CLASS, &cls, sizeof(cls)), Attr(CKA_LABEL, label.data(), label.size())};
}

}  // namespace

Result<std::unique_ptr<KeyHandle>> Pkcs11KeyStore::Generate(std::string_view slot, KeyType type) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::unique_lock<std::mutex> lock(session_->mu);
  static const CK_OBJECT_CLASS kPriv = CKO_PRIVATE_KEY;
  CF_ASSIGN_OR_RETURN(auto existing, session_->Find(ByLabel(kPriv, slot)));
  if (!existing.empty()) return shared::Error(Code::kAlreadyExists, "key slot '" + std::string(slot) + "' is in use");

  unsigned char id[16];
  if (RAND_bytes(id, sizeof(id)) != 1) return shared::Error(shared::OpenSslStatus(Code::kInternal, "RAND_bytes"));
  std::vector<CK_ATTRIBUTE> pub = {
      Attr(CKA_TOKEN, &kTrue, sizeof(kTrue)),   Attr(CKA_PRIVATE, &kFalse, sizeof(kFalse)),
      Attr(CKA_VERIFY, &kTrue, sizeof(kTrue)),  Attr(CKA_LABEL, slot.data(), slot.size()),
      Attr(CKA_ID, id, sizeof(id)),
  };
  std::vector<CK_ATTRIBUTE> priv = {
      Attr(CKA_TOKEN, &kTrue, sizeof(kTrue)),       Attr(CKA_PRIVATE, &kTrue, sizeof(kTrue)),
      Attr(CKA_SENSITIVE, &kTrue, sizeof(kTrue)),   Attr(CKA_EXTRACTABLE, &kFalse, sizeof(kFalse)),
      Attr(CKA_SIGN, &kTrue, sizeof(kTrue)),        Attr(CKA_LABEL, slot.data(), slot.size()),
      Attr(CKA_ID, id, sizeof(id)),
  };
  CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  std::string ec_params;
  CK_ULONG bits = 0;
  static const unsigned char kF4[] = {0x01, 0x00, 0x01};
  CK_KEY_TYPE key_type = CKK_EC;
  switch (type) {
    case KeyType::kEcP256:
    case KeyType::kEcP384: {
      ASN1_OBJECT* oid = OBJ_nid2obj(type == KeyType::kEcP256 ? NID_X9_62_prime256v1 : NID_secp384r1);
      int len = i2d_ASN1_OBJECT(oid, nullptr);
      if (len <= 0) return shared::Error(shared::OpenSslStatus(Code::kInternal, "curve OID"));
      ec_params.resize(static_cast<size_t>(len));
      unsigned char* p = reinterpret_cast<unsigned char*>(ec_params.data());
      i2d_ASN1_OBJECT(oid, &p);
      pub.push_back(Attr(CKA_EC_PARAMS, ec_params.data(), ec_params.size()));
      break;
    }
    case KeyType::kRsa2048:
    case KeyType::kRsa3072:
      mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
      key_type = CKK_RSA;
      bits = type == KeyType::kRsa2048 ? 2048 : 3072;
      pub.push_back(Attr(CKA_MODULUS_BITS, &bits, sizeof(bits)));
      pub.push_back(Attr(CKA_PUBLIC_EXPONENT, kF4, sizeof(kF4)));
      break;
  }
  CK_OBJECT_HANDLE pub_obj = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE priv_obj = CK_INVALID_HANDLE;
  CK_RV rv = session_->fl()->C_GenerateKeyPair(session_->handle, &mech, pub.data(), pub.size(), priv.data(),
                                               priv.size(), &pub_obj, &priv_obj);
  if (rv != CKR_OK) {
    return shared::Error(RvStatus(rv, "generating a key in PKCS#11 token '" + token_ + "'"));
  }
  auto key = TokenKey(session_, priv_obj, pub_obj, key_type);
  if (!key) {
    session_->fl()->C_DestroyObject(session_->handle, priv_obj);
    session_->fl()->C_DestroyObject(session_->handle, pub_obj);
    return shared::Error(key.error());
  }
  return std::unique_ptr<KeyHandle>(std::make_unique<OwnedKeyHandle>(std::string(slot), UriOf(slot), std::move(*key)));
}

Result<std::unique_ptr<KeyHandle>> Pkcs11KeyStore::Load(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::unique_lock<std::mutex> lock(session_->mu);
  static const CK_OBJECT_CLASS kPriv = CKO_PRIVATE_KEY;
  static const CK_OBJECT_CLASS kPub = CKO_PUBLIC_KEY;
  CF_ASSIGN_OR_RETURN(auto privs, session_->Find(ByLabel(kPriv, slot)));
  if (privs.empty()) {
    return shared::Error(Code::kNotFound, "no key in slot '" + std::string(slot) + "' (" + UriOf(slot) + ")");
  }
  if (privs.size() > 1) {
    return shared::Error(Code::kDataLoss, "more than one private key labelled '" + std::string(slot) + "' in token '" + token_ + "'");
  }
  CK_OBJECT_HANDLE priv = privs.front();
  CF_ASSIGN_OR_RETURN(std::string kt, session_->Attribute(priv, CKA_KEY_TYPE));
  if (kt.size() != sizeof(CK_KEY_TYPE)) return shared::Error(Code::kDataLoss, "bad CKA_KEY_TYPE");
  CK_KEY_TYPE key_type;
  std::memcpy(&key_type, kt.data(), sizeof(key_type));
  // The public half: the public key object with the same CKA_ID (keys provisioned by
  // other tools may label only one of the pair), else the one with the same label.
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
  if (auto id = session_->Attribute(priv, CKA_ID); id && !id->empty()) {
    std::vector<CK_ATTRIBUTE> t = {Attr(CKA_CLASS, &kPub, sizeof(kPub)), Attr(CKA_ID, id->data(), id->size())};
    CF_ASSIGN_OR_RETURN(auto pubs, session_->Find(t));
    if (pubs.size() == 1) pub = pubs.front();
  }
  if (pub == CK_INVALID_HANDLE) {
    CF_ASSIGN_OR_RETURN(auto pubs, session_->Find(ByLabel(kPub, slot)));
    if (pubs.size() == 1) pub = pubs.front();
  }
  if (pub == CK_INVALID_HANDLE && key_type == CKK_RSA) pub = priv;  // RSA private objects carry n and e
  if (pub == CK_INVALID_HANDLE) {
    return shared::Error(Code::kDataLoss, "no public key object beside private key '" + std::string(slot) + "' in token '" + token_ + "'");
  }
  CF_ASSIGN_OR_RETURN(EvpPkeyPtr key, TokenKey(session_, priv, pub, key_type));
  return std::unique_ptr<KeyHandle>(std::make_unique<OwnedKeyHandle>(std::string(slot), UriOf(slot), std::move(key)));
}

Status Pkcs11KeyStore::Delete(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::unique_lock<std::mutex> lock(session_->mu);
  static const CK_OBJECT_CLASS kPriv = CKO_PRIVATE_KEY;
  static const CK_OBJECT_CLASS kPub = CKO_PUBLIC_KEY;
  CF_ASSIGN_OR_RETURN(auto privs, session_->Find(ByLabel(kPriv, slot)));
  if (privs.empty()) return Status(Code::kNotFound, "no key in slot '" + std::string(slot) + "'");
  CF_ASSIGN_OR_RETURN(auto pubs, session_->Find(ByLabel(kPub, slot)));
  // The private key first: once it is gone the slot is empty, whatever happens next.
  for (CK_OBJECT_HANDLE h : privs) {
    CK_RV rv = session_->fl()->C_DestroyObject(session_->handle, h);
    if (rv != CKR_OK) return RvStatus(rv, "destroying key '" + std::string(slot) + "'");
  }
  for (CK_OBJECT_HANDLE h : pubs) session_->fl()->C_DestroyObject(session_->handle, h);
  return Status::Ok();
}

Result<std::vector<std::string>> Pkcs11KeyStore::List() {
  std::unique_lock<std::mutex> lock(session_->mu);
  static const CK_OBJECT_CLASS kPriv = CKO_PRIVATE_KEY;
  std::vector<CK_ATTRIBUTE> t = {Attr(CKA_CLASS, &kPriv, sizeof(kPriv))};
  CF_ASSIGN_OR_RETURN(auto privs, session_->Find(t));
  std::set<std::string> names;
  for (CK_OBJECT_HANDLE h : privs) {
    auto label = session_->Attribute(h, CKA_LABEL);
    if (label && ValidateSlotName(*label).ok()) names.insert(*label);
  }
  return std::vector<std::string>(names.begin(), names.end());
}

Result<std::unique_ptr<KeyHandle>> Pkcs11KeyStore::Import(std::string_view slot, EVP_PKEY*) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  return shared::Error(Code::kUnimplemented,
                       "the pkcs11 key store does not import software keys: generate the key in the token");
}

}  // namespace certfleet::hal
