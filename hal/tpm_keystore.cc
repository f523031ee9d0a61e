#include "hal/tpm_keystore.h"

#include <cstdlib>
#include <map>
#include <mutex>

#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/encoder.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include "hal/forwarding_key.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::hal {

using shared::Code;
using shared::EvpPkeyPtr;

namespace {
constexpr std::string_view kSuffix = ".tpm.pem";
constexpr const char* kTpmProps = "provider=tpm2";
}  // namespace

// A library context with the tpm2 provider (connected to one TPM) and the default
// provider beside it. Every call into the provider holds `mu`.
struct TpmContext {
  std::string tcti;
  OSSL_LIB_CTX* libctx = nullptr;
  OSSL_PROVIDER* tpm2 = nullptr;
  OSSL_PROVIDER* fallback = nullptr;
  std::mutex mu;
  ~TpmContext() {
    if (fallback != nullptr) OSSL_PROVIDER_unload(fallback);
    if (tpm2 != nullptr) OSSL_PROVIDER_unload(tpm2);
    if (libctx != nullptr) OSSL_LIB_CTX_free(libctx);
  }
};

namespace {

std::mutex g_contexts_mu;
std::map<std::string, std::weak_ptr<TpmContext>>& Contexts() {
  static auto* contexts = new std::map<std::string, std::weak_ptr<TpmContext>>();
  return *contexts;
}

Result<std::shared_ptr<TpmContext>> Connect(const std::string& tcti) {
  std::lock_guard<std::mutex> lock(g_contexts_mu);
  if (auto c = Contexts()[tcti].lock()) return c;
  auto c = std::make_shared<TpmContext>();
  c->tcti = tcti;
  c->libctx = OSSL_LIB_CTX_new();
  if (c->libctx == nullptr) return shared::Error(shared::OpenSslStatus(Code::kInternal, "OSSL_LIB_CTX_new"));
  // The provider reads its TCTI from the environment when it initialises (OpenSSL 3.0
  // has no API to pass provider parameters); the variable is set under the lock,
  // before the provider is loaded, and read only then.
  if (::setenv("TPM2OPENSSL_TCTI", tcti.c_str(), 1) != 0) return shared::Error(Code::kInternal, "setenv");
  c->tpm2 = OSSL_PROVIDER_load(c->libctx, "tpm2");
  if (c->tpm2 == nullptr) {
    return shared::Error(shared::OpenSslStatus(Code::kUnavailable, "cannot reach the TPM at '" + tcti + "' (tpm2 provider)"));
  }
  c->fallback = OSSL_PROVIDER_load(c->libctx, "default");
  if (c->fallback == nullptr) return shared::Error(shared::OpenSslStatus(Code::kInternal, "default provider"));
  Contexts()[tcti] = c;
  return c;
}

const EVP_MD* DigestFor(size_t len) {
  switch (len) {
    case 32: return EVP_sha256();
    case 48: return EVP_sha384();
    case 64: return EVP_sha512();
    default: return nullptr;
  }
}

// Decodes a TSS2 PRIVATE KEY blob through the provider, which loads it into the TPM
// (under the storage primary key). Requires tpm.mu.
Result<EvpPkeyPtr> DecodeBlob(TpmContext& tpm, const std::string& pem, const std::string& what) {
  EVP_PKEY* raw = nullptr;
  OSSL_DECODER_CTX* dec = OSSL_DECODER_CTX_new_for_pkey(&raw, "PEM", nullptr, nullptr, EVP_PKEY_KEYPAIR, tpm.libctx, kTpmProps);
  const auto* data = reinterpret_cast<const unsigned char*>(pem.data());
  size_t len = pem.size();
  bool ok = dec != nullptr && OSSL_DECODER_from_data(dec, &data, &len) == 1 && raw != nullptr;
  OSSL_DECODER_CTX_free(dec);
  if (!ok) {
    EVP_PKEY_free(raw);
    return shared::Error(shared::OpenSslStatus(Code::kDataLoss, what + " is not a key of this TPM"));
  }
  return EvpPkeyPtr(raw);
}

// Signs with one TPM key through the provider. The key is loaded into the TPM for each
// signature and flushed after it: a TPM holds only a few loaded objects, and without a
// resource manager (swtpm, /dev/tpm0) keys kept loaded would exhaust them.
class TpmSigner final : public RemoteSigner {
 public:
  TpmSigner(std::shared_ptr<TpmContext> tpm, std::string blob, std::string what)
      : tpm_(std::move(tpm)), blob_(std::move(blob)), what_(std::move(what)) {}

  Result<std::string> EcdsaSign(std::string_view digest) override {
    const EVP_MD* md = DigestFor(digest.size());
    if (md == nullptr) return shared::Error(Code::kUnimplemented, "TPM signature over a digest of unsupported length");
    std::lock_guard<std::mutex> lock(tpm_->mu);
    CF_ASSIGN_OR_RETURN(EvpPkeyPtr key, DecodeBlob(*tpm_, blob_, what_));
    shared::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(tpm_->libctx, key.get(), kTpmProps));
    size_t len = 0;
    const auto* in = reinterpret_cast<const unsigned char*>(digest.data());
    if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 || EVP_PKEY_CTX_set_signature_md(ctx.get(), md) != 1 ||
        EVP_PKEY_sign(ctx.get(), nullptr, &len, in, digest.size()) != 1) {
      return shared::Error(shared::OpenSslStatus(Code::kUnavailable, "TPM sign"));
    }
    std::string sig(len, '\0');
    if (EVP_PKEY_sign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in, digest.size()) != 1) {
      return shared::Error(shared::OpenSslStatus(Code::kUnavailable, "TPM sign"));
    }
    sig.resize(len);
    return sig;
  }

  Result<std::string> RsaPrivate(std::string_view, bool) override {
    return shared::Error(Code::kUnimplemented, "the tpm key store holds EC keys only");
  }

 private:
  std::shared_ptr<TpmContext> tpm_;
  std::string blob_;
  std::string what_;
};


}  // namespace

Result<std::unique_ptr<TpmKeyStore>> TpmKeyStore::Open(const std::string& dir, const std::string& tcti,
                                                       shared::Filesystem& fs) {
  if (tcti.empty()) return shared::Error(Code::kInvalidArgument, "keystore 'tpm' needs a TCTI (keystore.tcti)");
  CF_RETURN_IF_ERROR(fs.MakeDirs(dir, 0700).WithContext("key directory"));
  CF_ASSIGN_OR_RETURN(auto tpm, Connect(tcti));
  return std::unique_ptr<TpmKeyStore>(new TpmKeyStore(std::move(tpm), dir, fs));
}

TpmKeyStore::~TpmKeyStore() = default;

std::string TpmKeyStore::PathOf(std::string_view slot) const {
  return shared::JoinPath(dir_, std::string(slot) + std::string(kSuffix));
}

Result<std::unique_ptr<KeyHandle>> TpmKeyStore::HandleFor(std::string_view slot, EvpPkeyPtr tpm_key, std::string blob) {
  // The public half, as a software key in the default library context.
  unsigned char* der = nullptr;
  int n;
  {
    std::lock_guard<std::mutex> lock(tpm_->mu);
    n = i2d_PUBKEY(tpm_key.get(), &der);
    tpm_key.reset();  // flushed from the TPM; signing loads it again
  }
  if (n <= 0) return shared::Error(shared::OpenSslStatus(Code::kDataLoss, "TPM public key"));
  const unsigned char* p = der;
  EvpPkeyPtr pub(d2i_PUBKEY(nullptr, &p, n));
  OPENSSL_free(der);
  if (!pub) return shared::Error(shared::OpenSslStatus(Code::kDataLoss, "TPM public key"));
  CF_ASSIGN_OR_RETURN(EvpPkeyPtr key, MakeForwardingKey(pub.get(), std::make_shared<TpmSigner>(tpm_, std::move(blob), "key " + PathOf(slot))));
  return std::unique_ptr<KeyHandle>(
      std::make_unique<OwnedKeyHandle>(std::string(slot), "tpm:" + PathOf(slot), std::move(key)));
}

Result<std::unique_ptr<KeyHandle>> TpmKeyStore::Generate(std::string_view slot, KeyType type) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  const char* group = nullptr;
  if (type == KeyType::kEcP256) group = "P-256";
  if (type == KeyType::kEcP384) group = "P-384";
  if (group == nullptr) return shared::Error(Code::kUnimplemented, "the tpm key store generates EC keys only (ec-p256, ec-p384)");
  std::string path = PathOf(slot);
  if (fs_.Exists(path)) return shared::Error(Code::kAlreadyExists, "key slot '" + std::string(slot) + "' is in use");

  EvpPkeyPtr key;
  std::string pem;
  {
    std::lock_guard<std::mutex> lock(tpm_->mu);
    shared::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(tpm_->libctx, "EC", kTpmProps));
    EVP_PKEY* raw = nullptr;
    if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_CTX_set_group_name(ctx.get(), group) != 1 ||
        EVP_PKEY_generate(ctx.get(), &raw) != 1) {
      return shared::Error(shared::OpenSslStatus(Code::kUnavailable, "generating a key in the TPM"));
    }
    key.reset(raw);
    // The wrapped blob: encrypted by the TPM's storage key, useless without this TPM.
    OSSL_ENCODER_CTX* enc = OSSL_ENCODER_CTX_new_for_pkey(key.get(), EVP_PKEY_KEYPAIR, "PEM", nullptr, kTpmProps);
    unsigned char* data = nullptr;
    size_t len = 0;
    bool ok = enc != nullptr && OSSL_ENCODER_CTX_get_num_encoders(enc) > 0 && OSSL_ENCODER_to_data(enc, &data, &len) == 1;
    OSSL_ENCODER_CTX_free(enc);
    if (!ok) return shared::Error(shared::OpenSslStatus(Code::kInternal, "encoding the TPM key blob"));
    pem.assign(reinterpret_cast<char*>(data), len);
    OPENSSL_free(data);
  }
  if (pem.rfind("-----BEGIN TSS2 PRIVATE KEY-----", 0) != 0) {
    return shared::Error(Code::kInternal, "the tpm2 provider did not produce a TSS2 key blob");
  }
  Status st = fs_.CreateFileExclusive(path, pem, 0600);
  if (st.code() == Code::kAlreadyExists) {
    return shared::Error(Code::kAlreadyExists, "key slot '" + std::string(slot) + "' is in use");
  }
  CF_RETURN_IF_ERROR(st);
  return HandleFor(slot, std::move(key), std::move(pem));
}

Result<std::unique_ptr<KeyHandle>> TpmKeyStore::Load(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  std::string path = PathOf(slot);
  auto pem = fs_.ReadFile(path, 64 << 10);
  if (!pem) {
    if (pem.error().code() == Code::kNotFound) {
      return shared::Error(Code::kNotFound, "no key in slot '" + std::string(slot) + "' (" + path + ")");
    }
    return shared::Error(pem.error());
  }
  EvpPkeyPtr key;
  {
    std::lock_guard<std::mutex> lock(tpm_->mu);
    CF_ASSIGN_OR_RETURN(key, DecodeBlob(*tpm_, *pem, "key file " + path));
  }
  return HandleFor(slot, std::move(key), std::move(*pem));
}

Status TpmKeyStore::Delete(std::string_view slot) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  return DeleteSlotFile(fs_, PathOf(slot), slot);
}

Result<std::vector<std::string>> TpmKeyStore::List() { return ListSlotFiles(fs_, dir_, kSuffix); }

Result<std::unique_ptr<KeyHandle>> TpmKeyStore::Import(std::string_view slot, EVP_PKEY*) {
  CF_RETURN_IF_ERROR(ValidateSlotName(slot));
  return shared::Error(Code::kUnimplemented, "the tpm key store does not import software keys: generate the key in the TPM");
}

}  // namespace certfleet::hal
