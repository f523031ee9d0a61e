// Fleet provisioning templates: load an AWS IoT fleet provisioning template (JSON) once,
// then apply it to each RegisterThing request.
//
// The supported subset of the AWS format, the certfleet extension and every error are
// described in docs/provisioning-templates.md. In short:
//   - Parameters: Type String or Number, optional Default, AllowedValues, AllowedPattern.
//   - Resources: exactly one AWS::IoT::Thing, at most one AWS::IoT::Certificate and one
//     AWS::IoT::Policy; unknown types and properties are refused.
//   - Values: strings or the intrinsic functions Ref, Fn::Join, Fn::Sub and Fn::If, with
//     Conditions built from Fn::Equals, Fn::Not, Fn::And and Fn::Or. Any other intrinsic
//     function is refused at load ("unsupported intrinsic function").
//   - DeviceConfiguration: a map of string values.
//   - "certfleet": {"allowReprovisioning": bool, "claimSubjects": [glob, ...]}, a certfleet
//     extension that AWS does not know.
//
// Certificate-derived parameters (AWS::IoT::Certificate::Id, ::CommonName, ::SerialNumber,
// ::Country) always come from the certificate being registered (CertificateFacts). A
// device or a hook that tries to supply one is refused (kInvalidArgument), not ignored:
// a device that tries it is misbehaving and the operator should see it.
//
// Ownership and threads: a ProvisioningTemplate is a plain value, immutable after
// ParseProvisioningTemplate returns it; copies share only immutable compiled patterns.
// ParseProvisioningTemplate, ApplyTemplate and ClaimSubjectAllowed are pure functions and
// may run concurrently on any threads, including on the same template.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/filesystem.h"
#include "shared/core/status.h"

namespace certfleet::companion {

inline constexpr size_t kMaxTemplateBytes = 256 * 1024;  // the JSON text
inline constexpr size_t kMaxTemplateNameLength = 36;
inline constexpr size_t kMaxParameterValueBytes = 1024;  // each supplied parameter value
inline constexpr size_t kMaxAllowedPatternLength = 128;
inline constexpr size_t kMaxPatternValueBytes = 256;  // a value checked against an AllowedPattern

inline constexpr char kCertificateIdParameter[] = "AWS::IoT::Certificate::Id";
inline constexpr char kCertificateCommonNameParameter[] = "AWS::IoT::Certificate::CommonName";
inline constexpr char kCertificateSerialNumberParameter[] = "AWS::IoT::Certificate::SerialNumber";
inline constexpr char kCertificateCountryParameter[] = "AWS::IoT::Certificate::Country";

// True for the four certificate-derived parameter names above.
bool IsCertificateParameter(std::string_view name);

// A string-valued expression: a literal or an intrinsic function, checked at load
// (every Ref names a declared parameter, every Fn::If a declared condition). Fn::Sub is
// compiled into a Fn::Join with an empty delimiter. Evaluated by ApplyTemplate.
struct TemplateValue {
  enum class Kind { kLiteral, kRef, kJoin, kIf };
  Kind kind = Kind::kLiteral;
  std::string text;                 // kLiteral: the value; kRef: the parameter; kJoin: the
                                    // delimiter; kIf: the condition
  std::vector<TemplateValue> args;  // kJoin: the parts; kIf: {value if true, value if false}
};

// A boolean expression from the Conditions section.
struct TemplateCondition {
  enum class Kind { kEquals, kNot, kAnd, kOr };
  Kind kind = Kind::kEquals;
  std::vector<TemplateValue> operands;        // kEquals: exactly two
  std::vector<TemplateCondition> conditions;  // kNot: one; kAnd, kOr: 2 to 10
};

struct CompiledPattern;  // an AllowedPattern, compiled once at load

struct TemplateParameter {
  enum class Type { kString, kNumber };
  Type type = Type::kString;
  std::optional<std::string> default_value;  // already valid for the type and constraints
  std::vector<std::string> allowed_values;   // empty: any value
  std::string allowed_pattern;               // "": any value; else the whole value must match
  std::shared_ptr<const CompiledPattern> compiled_pattern;
};

struct ThingResource {
  std::string logical_name;  // the key under Resources
  TemplateValue thing_name;
  std::map<std::string, TemplateValue> attributes;  // AttributePayload
  std::vector<TemplateValue> groups;                // ThingGroups
  std::optional<TemplateValue> thing_type;          // ThingTypeName
  std::map<std::string, std::string> override_settings;  // property -> DO_NOTHING|REPLACE|FAIL|MERGE
};

struct CertificateResource {
  std::string logical_name;
  std::string condition;  // "": unconditional
  TemplateValue status;   // evaluates to ACTIVE or INACTIVE
};

struct PolicyResource {
  std::string logical_name;
  std::string condition;  // "": unconditional
  TemplateValue policy_name;
};

// The certfleet extension: top-level key "certfleet".
struct CertfleetTemplateOptions {
  // May a thing that already has a current certificate be provisioned again through
  // this template (e.g. a gateway restored from its claim identity)? Default: no.
  bool allow_reprovisioning = false;
  // Claim certificate common names allowed to use this template, as `*` globs.
  // Empty (the key absent): any claim certificate.
  std::vector<std::string> claim_subjects;
};

struct ProvisioningTemplate {
  std::string name;
  std::string description;
  std::map<std::string, TemplateParameter> parameters;
  std::map<std::string, TemplateCondition> conditions;
  ThingResource thing;
  std::optional<CertificateResource> certificate;
  std::optional<PolicyResource> policy;
  std::map<std::string, TemplateValue> device_configuration;
  CertfleetTemplateOptions certfleet;
};

// Parses and validates a template. Every problem is kInvalidArgument with a message of
// the form "template '<name>': <JSON path>: <what is wrong>", e.g.
//   template 'gw': Resources.thing.Properties.ThingName: Ref to unknown parameter 'Serial'
// `name`: 1-36 characters of A-Z a-z 0-9 _ -. `json_text`: at most kMaxTemplateBytes.
// JSON objects with a repeated key keep the last value (the JSON parser's behaviour).
shared::Result<ProvisioningTemplate> ParseProvisioningTemplate(std::string_view name, std::string_view json_text);

// Reads `path` through `fs` and parses it; errors carry the path as context.
// kNotFound (and other Filesystem errors) from reading; kInvalidArgument for a file
// larger than kMaxTemplateBytes and for every parse error.
shared::Result<ProvisioningTemplate> LoadProvisioningTemplate(const std::string& name, const std::string& path,
                                                              shared::Filesystem& fs);

// The certificate being registered; the values of the certificate-derived parameters.
struct CertificateFacts {
  std::string id;             // AWS::IoT::Certificate::Id: SHA-256 of the DER, 64 hex digits
  std::string common_name;    // AWS::IoT::Certificate::CommonName
  std::string serial_number;  // AWS::IoT::Certificate::SerialNumber
  std::string country;        // AWS::IoT::Certificate::Country; "" if the subject has none
};

struct ProvisioningResult {
  std::string thing_name;                         // 1-128 of A-Z a-z 0-9 : _ . -
  std::map<std::string, std::string> attributes;  // AttributePayload
  std::vector<std::string> groups;                // ThingGroups, in order, duplicates removed
  std::string thing_type;                         // "": none
  std::string policy_name;                        // "": no policy resource (or its condition was false)
  std::string certificate_status;                 // ACTIVE, INACTIVE, or "": the template leaves it alone
  std::map<std::string, std::string> device_configuration;
  // Only the keys the template sets (AttributePayload, ThingGroups, ThingTypeName);
  // a missing key means DO_NOTHING for an existing thing.
  std::map<std::string, std::string> override_settings;
};

// Applies `t` to one RegisterThing request.
// Parameter values, by precedence: certificate-derived parameters from `cert`; then
// `parameter_overrides` (the pre-provisioning hook's parameterOverrides); then
// `device_parameters` (the request's parameters); then the declared Default.
// kInvalidArgument (message names the parameter or the JSON path) when
//   - `device_parameters` or `parameter_overrides` names an undeclared parameter or a
//     certificate-derived one, or has a value longer than kMaxParameterValueBytes;
//   - a declared parameter without Default has no value ("missing required parameter");
//   - a value breaks its Type (Number: decimal integer or float), AllowedValues or AllowedPattern
//     (a value checked against an AllowedPattern is at most kMaxPatternValueBytes long);
//   - a result breaks AWS's rules: thing name 1-128 of A-Z a-z 0-9 : _ . -, attribute
//     values, group, thing type and policy names, certificate Status ACTIVE or INACTIVE.
shared::Result<ProvisioningResult> ApplyTemplate(const ProvisioningTemplate& t,
                                                 const std::map<std::string, std::string>& device_parameters,
                                                 const CertificateFacts& cert,
                                                 const std::map<std::string, std::string>& parameter_overrides = {});

// Whether a claim certificate with common name `claim_subject_cn` may use `t`: true if
// the template lists no claimSubjects, else if any glob matches the whole name. In a
// glob, `*` matches any run of characters (also none); everything else matches itself,
// case-sensitively.
bool ClaimSubjectAllowed(const ProvisioningTemplate& t, std::string_view claim_subject_cn);

// `*`-only glob match of the whole `text`; exposed for tests. Linear memory, O(n*m) time.
bool GlobMatch(std::string_view pattern, std::string_view text);

}  // namespace certfleet::companion
