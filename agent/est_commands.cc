#include "agent/est_commands.h"

#include "agent/failpoint.h"
#include "agent/issuance.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/openssl_error.h"

namespace certfleet::agent {

using shared::Code;
using shared::X509Ptr;
namespace sh = shared;

namespace {

EstClientOptions ClientOptions(const EstCommandOptions& o, std::string anchor_pem) {
  EstClientOptions c;
  c.server = o.server;
  c.trust_anchor_pem = std::move(anchor_pem);
  c.tls12_only = o.tls12_only;
  c.sleep = o.sleep;
  return c;
}

Result<std::string> ReadAnchor(const EstCommandOptions& o, sh::Filesystem& fs) {
  if (o.server.empty()) return sh::Error(Code::kInvalidArgument, "no EST server given (--server)");
  if (o.trust_anchor_file.empty()) return sh::Error(Code::kInvalidArgument, "no trust anchor given (--trust-anchor)");
  CF_ASSIGN_OR_RETURN(std::string pem, fs.ReadFile(o.trust_anchor_file, 1 << 20));
  auto certs = sh::CertsFromPem(pem);
  if (!certs) return sh::Error(certs.error().WithContext(o.trust_anchor_file));
  return pem;
}

EnrollOutcome Outcome(X509* cert, const std::string& slot) {
  sh::CertInfo info = sh::DescribeCert(cert);
  return EnrollOutcome{sh::CertToPem(cert), slot, info.serial, info.id, info.not_after, {}};
}

}  // namespace

std::string OtherSlot(const std::string& slot) {
  if (slot.size() >= 2 && slot.compare(slot.size() - 2, 2, "-a") == 0) return slot.substr(0, slot.size() - 2) + "-b";
  if (slot.size() >= 2 && slot.compare(slot.size() - 2, 2, "-b") == 0) return slot.substr(0, slot.size() - 2) + "-a";
  return slot + "-b";
}

Result<std::string> RunCaCerts(const EstCommandOptions& o, sh::Filesystem& fs) {
  CF_ASSIGN_OR_RETURN(std::string anchor, ReadAnchor(o, fs));
  EstClient client(ClientOptions(o, anchor));
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> certs, client.CaCerts());
  return sh::CertsToPem(certs);
}

Result<EnrollOutcome> RunEnroll(const EstCommandOptions& o, sh::Filesystem& fs, const sh::Clock& clock, sh::Logger& log) {
  if (o.common_name.empty()) return sh::Error(Code::kInvalidArgument, "no common name given (--common-name)");
  if (o.out_file.empty()) return sh::Error(Code::kInvalidArgument, "no output file given (--out)");
  bool basic = !o.user.empty();
  bool mtls = !o.client_cert_file.empty();
  if (basic == mtls) {
    return sh::Error(Code::kInvalidArgument,
                     "give either --user/--password or --client-cert/--client-key-slot for enrollment");
  }
  CF_ASSIGN_OR_RETURN(std::string anchor, ReadAnchor(o, fs));
  CF_ASSIGN_OR_RETURN(auto keys, hal::OpenKeyStore(o.keystore, fs));
  EstClientOptions co = ClientOptions(o, anchor);
  std::unique_ptr<hal::KeyHandle> claim_key;
  if (basic) {
    co.user = o.user;
    co.password = o.password;
  } else {
    if (o.client_key_slot.empty()) return sh::Error(Code::kInvalidArgument, "--client-cert needs --client-key-slot");
    CF_ASSIGN_OR_RETURN(co.client_cert_pem, fs.ReadFile(o.client_cert_file, 1 << 20));
    CF_ASSIGN_OR_RETURN(claim_key, keys->Load(o.client_key_slot));
    co.client_key = claim_key->pkey();
  }
  if (o.key_slot == o.client_key_slot) {
    return sh::Error(Code::kInvalidArgument, "the new key cannot go into the claim key's slot");
  }
  // Refuse to enroll over a working identity: that is what reenroll is for. After a
  // rotation its key is in the other A/B slot.
  std::string certified = SlotCertifiedBy(fs, *keys, o.out_file, {o.key_slot, OtherSlot(o.key_slot)});
  if (!certified.empty()) {
    return sh::Error(Code::kAlreadyExists, o.out_file + " already holds a certificate for the key in slot '" +
                                               certified + "'; use reenroll");
  }

  EstClient client(std::move(co));
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> ca_certs, client.CaCerts());
  CF_ASSIGN_OR_RETURN(auto key, KeyForSlot(*keys, o.key_slot, o.key_type, log));
  Failpoint(kFpEnrollKeyGenerated);
  sh::CsrRequest req;
  req.common_name = o.common_name;
  CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsr(key->pkey(), req));
  CF_ASSIGN_OR_RETURN(X509Ptr cert, client.SimpleEnroll(sh::CsrToDer(csr.get())));
  Failpoint(kFpEnrollCertReceived);
  CF_RETURN_IF_ERROR(VerifyIssued(cert.get(), key->pkey(), anchor, ca_certs, clock.Now()));
  if (sh::NameCommonName(X509_get_subject_name(cert.get())) != o.common_name) {
    return sh::Error(Code::kDataLoss, "the issued certificate's common name is not '" + o.common_name + "'");
  }
  EnrollOutcome out = Outcome(cert.get(), o.key_slot);
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(o.out_file, out.pem, 0644));
  Failpoint(kFpEnrollCertFileWritten);
  log.Info("enrolled", {{"common_name", o.common_name}, {"serial", out.serial}, {"fingerprint", out.fingerprint},
                        {"not_after", sh::FormatRfc3339(out.not_after)}, {"key", key->uri()}});
  return out;
}

Result<EnrollOutcome> RunReenroll(const EstCommandOptions& o, sh::Filesystem& fs, const sh::Clock& clock,
                                  sh::Logger& log) {
  if (o.cert_file.empty()) return sh::Error(Code::kInvalidArgument, "no current certificate given (--cert)");
  if (o.out_file.empty()) return sh::Error(Code::kInvalidArgument, "no output file given (--out)");
  CF_ASSIGN_OR_RETURN(std::string anchor, ReadAnchor(o, fs));
  CF_ASSIGN_OR_RETURN(auto keys, hal::OpenKeyStore(o.keystore, fs));
  CF_ASSIGN_OR_RETURN(std::string current_pem, fs.ReadFile(o.cert_file, 1 << 20));
  auto current = sh::CertFromPem(current_pem);
  if (!current) return sh::Error(current.error().WithContext(o.cert_file));

  // Find the key that goes with the current certificate.
  std::unique_ptr<hal::KeyHandle> current_key;
  CF_ASSIGN_OR_RETURN(std::vector<std::string> slots, keys->List());
  for (const auto& slot : slots) {
    auto k = keys->Load(slot);
    if (k && sh::SamePublicKey((*k)->pkey(), X509_get0_pubkey(current->get()))) {
      current_key = std::move(*k);
      break;
    }
  }
  if (!current_key) {
    return sh::Error(Code::kNotFound, "no key in the key store matches " + o.cert_file);
  }

  EstClientOptions co = ClientOptions(o, anchor);
  co.client_cert_pem = current_pem;
  co.client_key = current_key->pkey();
  EstClient client(std::move(co));
  CF_ASSIGN_OR_RETURN(std::vector<X509Ptr> ca_certs, client.CaCerts());

  std::unique_ptr<hal::KeyHandle> new_key;
  if (o.keep_key) {
    CF_ASSIGN_OR_RETURN(new_key, keys->Load(current_key->slot()));
  } else {
    // In-place rotation (--out is --cert) deletes the old key after each commit, so a
    // key in the other slot can only be left by an interrupted attempt and is reused.
    // Otherwise it may belong to a certificate kept elsewhere: never touch it.
    std::string slot = OtherSlot(current_key->slot());
    if (o.out_file != o.cert_file && keys->Load(slot)) {
      return sh::Error(Code::kAlreadyExists, "key slot '" + slot +
                                                 "' is in use; re-enroll in place (--out equal to --cert) or free the slot");
    }
    CF_ASSIGN_OR_RETURN(new_key, KeyForSlot(*keys, slot, o.key_type, log));
  }
  sh::GeneralNamesPtr sans(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(current->get(), NID_subject_alt_name, nullptr, nullptr)));
  CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsrWithName(new_key->pkey(), X509_get_subject_name(current->get()), sans.get()));
  CF_ASSIGN_OR_RETURN(X509Ptr cert, client.SimpleReenroll(sh::CsrToDer(csr.get())));
  CF_RETURN_IF_ERROR(VerifyIssued(cert.get(), new_key->pkey(), anchor, ca_certs, clock.Now()));
  if (X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_subject_name(current->get())) != 0) {
    return sh::Error(Code::kDataLoss, "the re-issued certificate's subject differs from the current one");
  }
  EnrollOutcome out = Outcome(cert.get(), new_key->slot());
  CF_RETURN_IF_ERROR(fs.WriteFileAtomic(o.out_file, out.pem, 0644));
  log.Info("re-enrolled", {{"serial", out.serial}, {"fingerprint", out.fingerprint},
                           {"not_after", sh::FormatRfc3339(out.not_after)}, {"key", new_key->uri()},
                           {"rekey", o.keep_key ? "false" : "true"}});
  // The old key goes only once the new identity has replaced the old one on disk.
  if (!o.keep_key && o.out_file == o.cert_file) {
    std::string old_slot = current_key->slot();
    current_key.reset();
    Status st = keys->Delete(old_slot);
    if (st.ok()) {
      out.deleted_key_slot = old_slot;
    } else {
      log.Warn("could not delete the old key", {{"slot", old_slot}, {"error", st.ToString()}});
    }
  }
  return out;
}

}  // namespace certfleet::agent
