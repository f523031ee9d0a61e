#include "companion/broker_plugin/claim_policy.h"

#include <algorithm>
#include <array>
#include <set>

#include <nlohmann/json.hpp>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "shared/wire/topics.h"
#include "shared/x509/cert.h"

namespace certfleet::broker_plugin {

using shared::Code;
using shared::Error;
using shared::Result;
using shared::Status;
using Json = nlohmann::json;

namespace {

constexpr std::string_view kAnyTemplate = "*";

Status Invalid(std::string message) { return Status(Code::kInvalidArgument, std::move(message)); }

Status CheckRuleName(std::string_view name) {
  if (name.empty() || name.size() > 64 ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
          std::string_view::npos) {
    return Invalid("rule name must be 1-64 characters of A-Z a-z 0-9 . _ -");
  }
  return Status::Ok();
}

Status CheckFingerprint(std::string_view fp) {
  if (fp.size() != 64 || fp.find_first_not_of("0123456789abcdef") != std::string_view::npos) {
    return Invalid("a certificate fingerprint must be 64 lowercase hex characters (SHA-256 of the DER)");
  }
  return Status::Ok();
}

Status CheckTemplate(std::string_view name) {
  if (name == kAnyTemplate) return Status::Ok();
  Status st = shared::ValidateTemplateName(name);
  if (!st.ok()) return Invalid("a template must be \"*\" or a template name (1-36 of A-Z a-z 0-9 _ -)");
  return Status::Ok();
}

// The string array at obj[key] (absent = empty).
Result<std::vector<std::string>> StringArray(const Json& obj, const char* key) {
  std::vector<std::string> out;
  auto it = obj.find(key);
  if (it == obj.end()) return out;
  if (!it->is_array()) return Error(Invalid(std::string(key) + " must be an array of strings"));
  for (const Json& el : *it) {
    if (!el.is_string()) return Error(Invalid(std::string(key) + " must be an array of strings"));
    out.push_back(el.get<std::string>());
  }
  return out;
}

Result<ClaimRule> ParseRule(const Json& j) {
  if (!j.is_object()) return Error(Invalid("a rule must be an object"));
  static constexpr std::array<std::string_view, 4> kKeys = {"name", "issuer_certificates",
                                                            "certificate_fingerprints", "templates"};
  for (const auto& [key, value] : j.items()) {
    if (std::find(kKeys.begin(), kKeys.end(), key) == kKeys.end()) return Error(Invalid("unknown key in a rule"));
  }
  auto name = j.find("name");
  if (name == j.end() || !name->is_string()) return Error(Invalid("a rule needs a string \"name\""));
  CF_ASSIGN_OR_RETURN(std::vector<std::string> pems, StringArray(j, "issuer_certificates"));
  CF_ASSIGN_OR_RETURN(std::vector<std::string> fps, StringArray(j, "certificate_fingerprints"));
  CF_ASSIGN_OR_RETURN(std::vector<std::string> templates, StringArray(j, "templates"));
  std::string bundle;
  for (const std::string& pem : pems) {
    // One certificate per entry, so that the entries map 1:1 to issuers.
    auto certs = shared::CertsFromPem(pem);
    if (!certs || certs->size() != 1) {
      return Error(Invalid("each issuer_certificates entry must be exactly one PEM certificate")
                       .WithContext("rule '" + name->get<std::string>() + "'"));
    }
    bundle += pem;
  }
  return MakeClaimRule(name->get<std::string>(), bundle, std::move(fps), std::move(templates));
}

bool IssuedBy(X509* issuer, X509* cert) {
  if (X509_check_issued(issuer, cert) != X509_V_OK) return false;
  EVP_PKEY* key = X509_get0_pubkey(issuer);  // borrowed
  bool ok = key != nullptr && X509_verify(cert, key) == 1;
  ERR_clear_error();  // a failed verify is an answer, not an error to report
  return ok;
}

std::vector<std::string_view> Levels(std::string_view topic) {
  std::vector<std::string_view> levels;
  for (size_t start = 0;;) {
    size_t slash = topic.find('/', start);
    levels.push_back(topic.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return levels;
}

// The template level of a RegisterThing request or reply topic (or a filter over one):
//   certfleet/provisioning/<claim>/<client>/provisioning-templates/<template>/...
//   $aws/provisioning-templates/<template>/...
// False if the topic has another shape. `template_name` may be empty or a wildcard.
bool RegisterThingTemplate(std::string_view topic, std::string_view* template_name) {
  std::vector<std::string_view> l = Levels(topic);
  if (l.size() >= 5 && l[0] == "certfleet" && l[1] == "provisioning" && l[4] == "provisioning-templates") {
    *template_name = l.size() > 5 ? l[5] : std::string_view();
    return true;
  }
  if (l.size() >= 2 && l[0] == "$aws" && l[1] == "provisioning-templates") {
    *template_name = l.size() > 2 ? l[2] : std::string_view();
    return true;
  }
  return false;
}

}  // namespace

bool ClaimRule::AllowsTemplate(std::string_view template_name) const {
  for (const std::string& t : templates) {
    if (t == kAnyTemplate || t == template_name) return true;
  }
  return false;
}

Result<ClaimRule> MakeClaimRule(std::string name, std::string_view issuer_pem_bundle,
                                std::vector<std::string> fingerprints, std::vector<std::string> templates) {
  CF_RETURN_IF_ERROR(CheckRuleName(name));
  const std::string where = "rule '" + name + "'";
  ClaimRule rule;
  rule.name = std::move(name);
  if (issuer_pem_bundle.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    auto certs = shared::CertsFromPem(issuer_pem_bundle);
    if (!certs) return Error(Invalid("issuer certificates are not valid PEM certificates").WithContext(where));
    for (shared::X509Ptr& c : *certs) {
      rule.issuer_pems.push_back(shared::CertToPem(c.get()));
      rule.issuers.push_back(std::move(c));
    }
  }
  for (const std::string& fp : fingerprints) CF_RETURN_IF_ERROR(CheckFingerprint(fp).WithContext(where));
  rule.fingerprints = std::move(fingerprints);
  if (rule.issuers.empty() && rule.fingerprints.empty()) {
    return Error(Invalid("a rule needs issuer certificates or certificate fingerprints").WithContext(where));
  }
  if (templates.empty()) return Error(Invalid("a rule needs templates (names, or \"*\")").WithContext(where));
  for (const std::string& t : templates) CF_RETURN_IF_ERROR(CheckTemplate(t).WithContext(where));
  rule.templates = std::move(templates);
  return rule;
}

Result<ClaimPolicy> ParseClaimPolicy(std::string_view json) {
  if (json.size() > kMaxClaimPolicyBytes) return Error(Invalid("claim policy larger than 4 MiB"));
  Json doc = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Error(Invalid("claim policy is not valid JSON"));
  if (!doc.is_object()) return Error(Invalid("claim policy must be a JSON object"));
  for (const auto& [key, value] : doc.items()) {
    if (key != "version" && key != "rules") return Error(Invalid("unknown key in the claim policy"));
  }
  auto version = doc.find("version");
  if (version == doc.end() || !version->is_number_integer() || version->get<int64_t>() != 1) {
    return Error(Invalid("claim policy \"version\" must be 1"));
  }
  auto rules = doc.find("rules");
  if (rules == doc.end() || !rules->is_array()) return Error(Invalid("claim policy needs a \"rules\" array"));
  if (rules->size() > kMaxClaimRules) return Error(Invalid("claim policy has more than 1024 rules"));
  ClaimPolicy policy;
  std::set<std::string> names;
  for (size_t i = 0; i < rules->size(); ++i) {
    auto rule = ParseRule((*rules)[i]);
    if (!rule) return Error(rule.error().WithContext("rules[" + std::to_string(i) + "]"));
    if (!names.insert(rule->name).second) return Error(Invalid("duplicate rule name '" + rule->name + "'"));
    policy.rules.push_back(std::move(*rule));
  }
  return policy;
}

std::string ClaimPolicyToJson(const ClaimPolicy& policy) {
  Json rules = Json::array();
  for (const ClaimRule& r : policy.rules) {
    Json j = {{"name", r.name}, {"templates", r.templates}};
    if (!r.issuer_pems.empty()) j["issuer_certificates"] = r.issuer_pems;
    if (!r.fingerprints.empty()) j["certificate_fingerprints"] = r.fingerprints;
    rules.push_back(std::move(j));
  }
  return Json{{"version", 1}, {"rules", std::move(rules)}}.dump(2) + "\n";
}

std::vector<size_t> MatchingRules(const ClaimPolicy& policy, X509* cert, std::string_view fingerprint) {
  std::vector<size_t> out;
  if (cert == nullptr) return out;
  for (size_t i = 0; i < policy.rules.size(); ++i) {
    const ClaimRule& r = policy.rules[i];
    bool match = std::find(r.fingerprints.begin(), r.fingerprints.end(), fingerprint) != r.fingerprints.end();
    for (size_t k = 0; !match && k < r.issuers.size(); ++k) match = IssuedBy(r.issuers[k].get(), cert);
    if (match) out.push_back(i);
  }
  return out;
}

ClaimDecision DecideClaimAccess(const ClaimPolicy& policy, const std::vector<size_t>& matching,
                                std::string_view topic, ClaimAccess access) {
  if (matching.empty()) return {ClaimVerdict::kDeny, "no claim rule matches the certificate"};
  if (access == ClaimAccess::kUnsubscribe) return {ClaimVerdict::kDefer, "unsubscribe"};
  std::string_view template_name;
  if (!RegisterThingTemplate(topic, &template_name)) return {ClaimVerdict::kDefer, "not a RegisterThing topic"};
  bool wildcard = template_name.empty() || template_name == "+" || template_name == "#";
  for (size_t i : matching) {
    if (i >= policy.rules.size()) continue;
    const ClaimRule& r = policy.rules[i];
    bool any = std::find(r.templates.begin(), r.templates.end(), kAnyTemplate) != r.templates.end();
    if (wildcard ? any : r.AllowsTemplate(template_name)) {
      return {ClaimVerdict::kDefer, "template allowed"};
    }
  }
  return {ClaimVerdict::kDeny, "template not allowed for this claim certificate"};
}

ClaimDecision DecideClaimAccessForCert(const ClaimPolicy& policy, X509* cert, std::string_view topic,
                                       ClaimAccess access) {
  if (cert == nullptr) return {ClaimVerdict::kDeny, "no client certificate"};
  return DecideClaimAccess(policy, MatchingRules(policy, cert, shared::CertFingerprint(cert)), topic, access);
}

}  // namespace certfleet::broker_plugin
