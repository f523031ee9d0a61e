#include "companion/init.h"

#include "shared/core/config.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::companion {

using shared::Code;
using shared::Status;
using shared::X509Ptr;
namespace sh = shared;

namespace {

constexpr auto kRootValidity = std::chrono::hours(24 * 365 * 20);
constexpr auto kIssuingValidity = std::chrono::hours(24 * 365 * 10);
constexpr auto kTlsValidity = std::chrono::hours(24 * 365);

// Loads the key in `slot`, or generates it if the slot is empty.
sh::Result<std::unique_ptr<hal::KeyHandle>> LoadOrGenerate(hal::KeyStore& keys, const std::string& slot,
                                                            sh::KeyType type) {
  auto key = keys.Load(slot);
  if (key) return std::move(*key);
  if (key.error().code() != Code::kNotFound) return sh::Error(key.error());
  return keys.Generate(slot, type);
}

sh::Result<std::vector<X509Ptr>> ReadChain(sh::Filesystem& fs, const std::string& path) {
  CF_ASSIGN_OR_RETURN(std::string pem, fs.ReadFile(path, 1 << 20));
  auto certs = sh::CertsFromPem(pem);
  if (!certs) return sh::Error(certs.error().WithContext(path));
  return std::move(*certs);
}

Status ImportCa(const InitOptions& o, const CompanionConfig& cfg, hal::KeyStore& keys, sh::Filesystem& fs,
                const sh::Clock& clock) {
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> chain, ReadChain(fs, o.import_ca_cert_file));
  CF_ASSIGN_OR_RETURN(std::string key_pem, fs.ReadFile(o.import_ca_key_file, 1 << 16));
  auto key = sh::PrivateKeyFromPem(key_pem);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  if (!key) return key.error().WithContext(o.import_ca_key_file);
  X509* issuing = chain.front().get();
  X509* root = chain.back().get();
  if (X509_check_private_key(issuing, key->get()) != 1) {
    sh::DrainOpenSslErrors();
    return Status(Code::kInvalidArgument, "the imported CA key does not match the first certificate of " +
                                              o.import_ca_cert_file);
  }
  if (X509_check_ca(issuing) <= 0) return Status(Code::kInvalidArgument, "the imported certificate is not a CA");
  if (X509_check_issued(root, root) != X509_V_OK) {
    return Status(Code::kInvalidArgument, "the last certificate of " + o.import_ca_cert_file + " is not self-signed");
  }
  CF_ASSIGN_OR_RETURN(sh::TrustStore ts, sh::TrustStore::FromCerts({root}));
  sh::X509StackRefPtr untrusted(sk_X509_new_null());
  for (size_t i = 1; i + 1 < chain.size(); ++i) sk_X509_push(untrusted.get(), chain[i].get());
  CF_RETURN_IF_ERROR(ts.Verify(issuing, untrusted.get(), clock.Now()).WithContext("imported CA chain"));
  CF_ASSIGN_OR_RETURN(auto handle, keys.Import(cfg.ca.issuing_key_slot, key->get()));
  (void)handle;
  std::string issuing_pem;
  for (size_t i = 0; i + 1 < chain.size(); ++i) issuing_pem += sh::CertToPem(chain[i].get());
  if (chain.size() == 1) issuing_pem = sh::CertToPem(issuing);
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(cfg.ca.root_cert_file, sh::CertToPem(root), 0644));
  return fs.WriteFileAtomic(cfg.ca.issuing_cert_file, issuing_pem, 0644);
}

Status GenerateCa(const InitOptions& o, const CompanionConfig& cfg, hal::KeyStore& keys, sh::Filesystem& fs,
                  const sh::Clock& clock, sh::Logger& log) {
  CF_ASSIGN_OR_RETURN(auto root_key, LoadOrGenerate(keys, "root-ca", o.ca_key_type));
  CF_ASSIGN_OR_RETURN(X509Ptr root, MakeRootCa(root_key->pkey(), o.organization + " root CA", kRootValidity, clock.Now()));
  CF_ASSIGN_OR_RETURN(auto issuing_key, LoadOrGenerate(keys, cfg.ca.issuing_key_slot, o.ca_key_type));
  CF_ASSIGN_OR_RETURN(X509Ptr issuing, MakeIntermediateCa(issuing_key->pkey(), o.organization + " issuing CA",
                                                          root.get(), root_key->pkey(), kIssuingValidity, clock.Now()));
  // The issuing certificate first: the root file's presence marks a finished CA.
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(cfg.ca.issuing_cert_file, sh::CertToPem(issuing.get()), 0644));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(cfg.ca.root_cert_file, sh::CertToPem(root.get()), 0644));
  sh::CertInfo info = sh::DescribeCert(root.get());
  log.Info("created root CA", {{"subject", info.subject}, {"fingerprint", info.id}, {"not_after", sh::FormatRfc3339(info.not_after)}});
  return Status::Ok();
}

Status MakeTlsCert(const InitOptions& o, const CompanionConfig& cfg, hal::KeyStore& keys, Issuer& issuer,
                   sh::Filesystem& fs, const sh::Clock& clock, sh::Logger& log) {
  CF_ASSIGN_OR_RETURN(auto key, LoadOrGenerate(keys, cfg.est.tls_key_slot, sh::KeyType::kEcP256));
  CF_ASSIGN_OR_RETURN(X509Ptr cert,
                      IssueServiceCert(issuer, key->pkey(), o.hostnames.empty() ? "certfleet-companion" : o.hostnames.front(),
                                       Usage::kServerAuth, o.hostnames, kTlsValidity, clock.Now()));
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(cfg.est.tls_cert_file, sh::CertToPem(cert.get()) + issuer.IntermediatesPem(), 0644));
  log.Info("created EST server certificate", {{"fingerprint", sh::CertFingerprint(cert.get())}});
  return Status::Ok();
}

}  // namespace

sh::Result<std::string> InitCompanion(const InitOptions& o, sh::Filesystem& fs, const sh::Clock& clock, sh::Logger& log) {
  CF_RETURN_IF_ERROR(sh::CheckAbsolutePath(o.state_dir).WithContext("--state-dir"));
  if (o.import_ca_cert_file.empty() != o.import_ca_key_file.empty()) {
    return sh::Error(Code::kInvalidArgument, "--import-ca-cert and --import-ca-key go together");
  }
  CF_RETURN_IF_ERROR(fs.MakeDirs(o.state_dir, 0750));
  std::string config_path = sh::JoinPath(o.state_dir, "companion.toml");
  CompanionConfig cfg;
  if (fs.Exists(config_path)) {
    CF_ASSIGN_OR_RETURN(cfg, LoadCompanionConfig(config_path, fs));
    log.Info("keeping existing config", {{"path", config_path}});
  } else {
    std::string text = DefaultCompanionConfigText(o.state_dir, o.est_listen);
    CF_ASSIGN_OR_RETURN(cfg, ParseCompanionConfig(text, config_path));
    Status st = fs.CreateFileExclusive(config_path, text, 0640);
    if (!st.ok() && st.code() != Code::kAlreadyExists) return sh::Error(st);
  }
  CF_RETURN_IF_ERROR(fs.MakeDirs(sh::DirName(cfg.ca.root_cert_file), 0755));
  CF_RETURN_IF_ERROR(fs.MakeDirs(sh::DirName(cfg.est.tls_cert_file), 0755));
  CF_ASSIGN_OR_RETURN(auto keys, hal::OpenKeyStore(cfg.keystore, fs));

  if (fs.Exists(cfg.ca.root_cert_file)) {
    if (!o.import_ca_cert_file.empty()) {
      return sh::Error(Code::kAlreadyExists, "a CA already exists in " + o.state_dir + "; refusing to import another");
    }
    log.Info("keeping existing CA", {{"path", cfg.ca.root_cert_file}});
  } else if (!o.import_ca_cert_file.empty()) {
    CF_RETURN_IF_ERROR(ImportCa(o, cfg, *keys, fs, clock));
    log.Info("imported CA", {{"path", o.import_ca_cert_file}});
  } else {
    CF_RETURN_IF_ERROR(GenerateCa(o, cfg, *keys, fs, clock, log));
  }

  LoadOptions lo;
  lo.open_registry = true;
  CF_ASSIGN_OR_RETURN(CompanionState state, LoadCompanionState(cfg, fs, lo));
  if (!fs.Exists(cfg.est.tls_cert_file)) {
    CF_RETURN_IF_ERROR(MakeTlsCert(o, cfg, *keys, *state.issuer, fs, clock, log));
  }
  return config_path;
}

sh::Result<CompanionState> LoadCompanionState(const CompanionConfig& config, sh::Filesystem& fs,
                                               const LoadOptions& options) {
  CompanionState s;
  s.config = config;
  CF_ASSIGN_OR_RETURN(s.keys, hal::OpenKeyStore(config.keystore, fs));
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> roots, ReadChain(fs, config.ca.root_cert_file));
  s.root = std::move(roots.front());
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> issuing_chain, ReadChain(fs, config.ca.issuing_cert_file));
  // Production certificates chain to our root through our issuing CA(s); both are ours,
  // so the store holds them all and a client need not send intermediates.
  std::vector<X509*> trusted{s.root.get()};
  for (const auto& c : issuing_chain) trusted.push_back(c.get());
  CF_ASSIGN_OR_RETURN(s.device_trust, sh::TrustStore::FromCerts(trusted));
  if (!config.est.bootstrap_trust_file.empty()) {
    CF_ASSIGN_OR_RETURN(std::string pem, fs.ReadFile(config.est.bootstrap_trust_file, 1 << 20));
    auto ts = sh::TrustStore::FromPem(pem);
    if (!ts) return sh::Error(ts.error().WithContext(config.est.bootstrap_trust_file));
    s.bootstrap_trust = std::move(*ts);
  }
  if (options.load_issuer) {
    CF_ASSIGN_OR_RETURN(auto key, s.keys->Load(config.ca.issuing_key_slot));
    if (X509_check_private_key(issuing_chain.front().get(), key->pkey()) != 1) {
      sh::DrainOpenSslErrors();
      return sh::Error(Code::kFailedPrecondition, "issuing CA key in slot '" + config.ca.issuing_key_slot +
                                                      "' does not match " + config.ca.issuing_cert_file);
    }
    X509Ptr issuing = std::move(issuing_chain.front());
    std::vector<X509Ptr> above;
    for (size_t i = 1; i < issuing_chain.size(); ++i) above.push_back(std::move(issuing_chain[i]));
    if (X509_cmp(issuing.get(), s.root.get()) != 0) {
      X509_up_ref(s.root.get());
      above.emplace_back(s.root.get());
    }
    s.issuer = std::make_unique<Issuer>(std::move(issuing), std::move(key), std::move(above));
  }
  if (options.open_registry) {
    SqliteRegistryOptions ro;
    ro.read_only = options.registry_read_only;
    CF_ASSIGN_OR_RETURN(s.registry, OpenSqliteRegistry(config.registry_path, ro));
  }
  return s;
}

}  // namespace certfleet::companion
