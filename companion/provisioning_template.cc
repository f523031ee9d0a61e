#include "companion/provisioning_template.h"

#include <algorithm>
#include <exception>
#include <initializer_list>
#include <regex>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

namespace certfleet::companion {

struct CompiledPattern {
  std::regex re;
};

namespace {

using nlohmann::json;
using shared::Code;
using shared::Result;
using shared::Status;

constexpr int kMaxDepth = 16;             // nesting of intrinsic functions and conditions
constexpr size_t kMaxValueNodes = 10000;  // literals + intrinsic functions in one template
constexpr size_t kMaxPatternAtoms = 128;  // an AllowedPattern after expanding {n,m}
constexpr size_t kMaxQuoted = 64;

// 'text' for a message: at most kMaxQuoted bytes, anything but printable ASCII as '?'.
std::string Quote(std::string_view s) {
  std::string out = "'";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == kMaxQuoted) {
      out += "...";
      break;
    }
    auto c = static_cast<unsigned char>(s[i]);
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  return out + "'";
}

Status Invalid(const std::string& path, const std::string& message) {
  return Status(Code::kInvalidArgument, path.empty() ? message : path + ": " + message);
}

std::string Index(size_t i) { return "[" + std::to_string(i) + "]"; }

bool IsAlnum(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// A name made of A-Z a-z 0-9 and the characters in `extra`, of bounded length.
struct NameRule {
  const char* what;
  size_t min_length;
  size_t max_length;
  std::string_view extra;
};
constexpr NameRule kTemplateNameRule{"template name", 1, kMaxTemplateNameLength, "_-"};
constexpr NameRule kParameterNameRule{"parameter name", 1, 128, "_.-"};
constexpr NameRule kLogicalNameRule{"name", 1, 255, "_-"};
constexpr NameRule kThingNameRule{"thing name", 1, 128, ":_.-"};
constexpr NameRule kAttributeNameRule{"attribute name", 1, 128, "_.,@/:#-"};
constexpr NameRule kAttributeValueRule{"attribute value", 0, 800, "_.,@/:#=[]-"};
constexpr NameRule kGroupNameRule{"thing group name", 1, 128, ":_-"};
constexpr NameRule kThingTypeRule{"thing type name", 1, 128, ":_-"};
constexpr NameRule kPolicyNameRule{"policy name", 1, 128, "_+=,.@-"};

bool Matches(const NameRule& rule, std::string_view s) {
  return s.size() >= rule.min_length && s.size() <= rule.max_length &&
         std::all_of(s.begin(), s.end(), [&](char c) { return IsAlnum(c) || rule.extra.find(c) != std::string_view::npos; });
}

Status CheckName(const NameRule& rule, std::string_view s, const std::string& path) {
  if (Matches(rule, s)) return Status::Ok();
  std::string chars;
  for (char c : rule.extra) (chars += ' ') += c;
  return Invalid(path, std::string(rule.what) + " " + Quote(s) + " is invalid: must be " + std::to_string(rule.min_length) +
                           "-" + std::to_string(rule.max_length) + " characters of A-Z a-z 0-9" + chars);
}

// Checks an output value; run at load on literals and at apply on every result.
using Check = Status (*)(std::string_view, const std::string&);
Status CheckThingName(std::string_view v, const std::string& path) { return CheckName(kThingNameRule, v, path); }
Status CheckAttributeValue(std::string_view v, const std::string& path) { return CheckName(kAttributeValueRule, v, path); }
Status CheckGroupName(std::string_view v, const std::string& path) { return CheckName(kGroupNameRule, v, path); }
Status CheckThingType(std::string_view v, const std::string& path) { return CheckName(kThingTypeRule, v, path); }
Status CheckPolicyName(std::string_view v, const std::string& path) { return CheckName(kPolicyNameRule, v, path); }
Status CheckCertificateStatus(std::string_view v, const std::string& path) {
  if (v == "ACTIVE" || v == "INACTIVE") return Status::Ok();
  return Invalid(path, "certificate Status " + Quote(v) + " is invalid: must be ACTIVE or INACTIVE");
}

// A decimal integer or float: -?digits(.digits)?([eE][+-]?digits)?
bool IsNumber(std::string_view s) {
  if (s.size() > 64) return false;
  size_t i = 0;
  auto digits = [&] {
    size_t start = i;
    while (i < s.size() && IsDigit(s[i])) ++i;
    return i > start;
  };
  if (i < s.size() && s[i] == '-') ++i;
  if (!digits()) return false;
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == s.size();
}

// Refuses patterns whose counted repetitions ({n}, {n,}, {n,m}) would expand to more
// than kMaxPatternAtoms atoms: libstdc++ copies the repeated part into its automaton.
Status CheckPatternSize(std::string_view p, const std::string& path) {
  std::vector<size_t> open = {0};  // atoms in each open group
  size_t last = 0;                 // atoms of the last atom, for a following {n,m}
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\') {
      ++i;
      last = 1;
      open.back() += 1;
    } else if (c == '[') {
      size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      if (j < p.size() && p[j] == ']') ++j;
      while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2 : 1;
      i = j;
      last = 1;
      open.back() += 1;
    } else if (c == '(') {
      open.push_back(0);
      last = 0;
    } else if (c == ')') {
      if (open.size() < 2) return Invalid(path, "unbalanced ')' in AllowedPattern");
      last = open.back();
      open.pop_back();
      open.back() += last;
    } else if (c == '{') {
      size_t close = p.find('}', i);
      if (close == std::string_view::npos) return Invalid(path, "unterminated '{' in AllowedPattern");
      std::string_view body = p.substr(i + 1, close - i - 1);
      size_t comma = body.find(',');
      std::string_view low = body.substr(0, comma);
      std::string_view high = comma == std::string_view::npos ? low : body.substr(comma + 1);
      auto small_number = [](std::string_view n) {
        return !n.empty() && n.size() <= 4 && std::all_of(n.begin(), n.end(), IsDigit);
      };
      if (!small_number(low) || !(high.empty() || small_number(high))) {
        return Invalid(path, "AllowedPattern: a repetition must be {n}, {n,} or {n,m} with n, m below 10000");
      }
      size_t copies = high.empty() ? std::stoul(std::string(low)) + 1 : std::stoul(std::string(high));
      open.back() = open.back() - last + last * copies;
      last *= copies;
      i = close;
    } else if (c == '|') {
      last = 0;
    } else if (c != '*' && c != '+' && c != '?') {
      last = 1;
      open.back() += 1;
    }
    if (open.back() > kMaxPatternAtoms || last > kMaxPatternAtoms) {
      return Invalid(path, "AllowedPattern is too complex: its repetitions expand to more than " +
                               std::to_string(kMaxPatternAtoms) + " atoms");
    }
  }
  return Status::Ok();
}

Result<std::shared_ptr<const CompiledPattern>> CompilePattern(const std::string& pattern, const std::string& path) {
  if (pattern.size() > kMaxAllowedPatternLength) {
    return shared::Error(Invalid(path, "AllowedPattern is longer than " + std::to_string(kMaxAllowedPatternLength) +
                                           " characters"));
  }
  CF_RETURN_IF_ERROR(CheckPatternSize(pattern, path));
  try {
    auto flags = std::regex::ECMAScript;
#if defined(__GLIBCXX__)
    // libstdc++'s breadth-first matcher: time linear in the value, no backtracking
    // blow-up; it refuses back-references.
    flags |= std::regex_constants::__polynomial;
#endif
    auto compiled = std::make_shared<CompiledPattern>();
    compiled->re = std::regex(pattern, flags);
    return std::shared_ptr<const CompiledPattern>(std::move(compiled));
  } catch (const std::exception& e) {
    return shared::Error(
        Invalid(path, "invalid or unsupported AllowedPattern " + Quote(pattern) + ": " + Quote(e.what())));
  }
}

bool PatternMatches(const CompiledPattern& p, std::string_view value) {
  try {
    return std::regex_match(value.begin(), value.end(), p.re);
  } catch (const std::exception&) {
    return false;
  }
}

// `where` names the value in a message: "Parameters.X.Default" or "parameter 'X'".
Status CheckParameterValue(const TemplateParameter& p, std::string_view value, const std::string& where) {
  if (value.size() > kMaxParameterValueBytes) {
    return Invalid(where, "value longer than " + std::to_string(kMaxParameterValueBytes) + " bytes");
  }
  if (p.type == TemplateParameter::Type::kNumber && !IsNumber(value)) {
    return Invalid(where, "value " + Quote(value) + " is not a Number (a decimal integer or float)");
  }
  if (!p.allowed_values.empty() &&
      std::find(p.allowed_values.begin(), p.allowed_values.end(), value) == p.allowed_values.end()) {
    return Invalid(where, "value " + Quote(value) + " is not one of AllowedValues");
  }
  if (p.compiled_pattern && value.size() > kMaxPatternValueBytes) {
    // Matching time grows with length times pattern size: both are bounded.
    return Invalid(where, "value longer than " + std::to_string(kMaxPatternValueBytes) +
                              " bytes, the limit for a value checked against AllowedPattern");
  }
  if (p.compiled_pattern && !PatternMatches(*p.compiled_pattern, value)) {
    return Invalid(where, "value " + Quote(value) + " does not match AllowedPattern " + Quote(p.allowed_pattern));
  }
  return Status::Ok();
}

const json* Member(const json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

Status ExpectType(const json& j, json::value_t type, const char* what, const std::string& path) {
  if (j.type() == type) return Status::Ok();
  return Invalid(path, std::string("expected ") + what + ", got " + j.type_name());
}
Status ExpectObject(const json& j, const std::string& path) { return ExpectType(j, json::value_t::object, "an object", path); }
Status ExpectArray(const json& j, const std::string& path) { return ExpectType(j, json::value_t::array, "an array", path); }
Status ExpectString(const json& j, const std::string& path) { return ExpectType(j, json::value_t::string, "a string", path); }

// Refuses keys of `object` outside `allowed`; `what` is "key", "property", "section".
Status CheckKeys(const json& object, std::initializer_list<std::string_view> allowed, const char* what,
                 const std::string& path) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) != allowed.end()) continue;
    std::string list;
    for (std::string_view a : allowed) (list += list.empty() ? "" : ", ") += a;
    return Invalid(path, std::string("unknown or unsupported ") + what + " " + Quote(it.key()) + " (supported: " + list + ")");
  }
  return Status::Ok();
}

size_t CountNodes(const TemplateValue& v) {
  size_t n = 1;
  for (const auto& a : v.args) n += CountNodes(a);
  return n;
}

TemplateValue Literal(std::string text) {
  TemplateValue v;
  v.text = std::move(text);
  return v;
}

class TemplateParser {
 public:
  explicit TemplateParser(ProvisioningTemplate& t) : t_(t) {}

  Status Parse(const json& root) {
    if (!root.is_object()) return Invalid("", std::string("the template must be a JSON object, got ") + root.type_name());
    CF_RETURN_IF_ERROR(CheckKeys(
        root, {"Description", "Parameters", "Conditions", "Resources", "DeviceConfiguration", "certfleet"}, "section", ""));
    if (const json* j = Member(root, "Description")) {
      CF_RETURN_IF_ERROR(ExpectString(*j, "Description"));
      t_.description = j->get<std::string>();
    }
    if (const json* j = Member(root, "Parameters")) CF_RETURN_IF_ERROR(ParseParameters(*j));
    if (const json* j = Member(root, "Conditions")) CF_RETURN_IF_ERROR(ParseConditions(*j));
    const json* resources = Member(root, "Resources");
    if (resources == nullptr) return Invalid("", "missing required section 'Resources'");
    CF_RETURN_IF_ERROR(ParseResources(*resources));
    if (const json* j = Member(root, "DeviceConfiguration")) CF_RETURN_IF_ERROR(ParseDeviceConfiguration(*j));
    if (const json* j = Member(root, "certfleet")) CF_RETURN_IF_ERROR(ParseCertfleet(*j));
    return Status::Ok();
  }

 private:
  Status ParseParameters(const json& j) {
    CF_RETURN_IF_ERROR(ExpectObject(j, "Parameters"));
    for (auto it = j.begin(); it != j.end(); ++it) CF_RETURN_IF_ERROR(ParseParameter(it.key(), it.value()));
    return Status::Ok();
  }

  Status ParseParameter(const std::string& name, const json& j) {
    const std::string path = "Parameters." + name;
    const bool from_certificate = IsCertificateParameter(name);
    if (!from_certificate && name.rfind("AWS::", 0) == 0) {
      return Invalid(path, "unsupported pseudo parameter; the supported AWS:: parameters are the certificate-derived ones");
    }
    if (!from_certificate) CF_RETURN_IF_ERROR(CheckName(kParameterNameRule, name, "Parameters"));
    CF_RETURN_IF_ERROR(ExpectObject(j, path));
    CF_RETURN_IF_ERROR(CheckKeys(j, {"Type", "Default", "Description", "AllowedValues", "AllowedPattern"}, "key", path));
    TemplateParameter p;
    const json* type = Member(j, "Type");
    if (type == nullptr) return Invalid(path, "missing required key 'Type'");
    CF_RETURN_IF_ERROR(ExpectString(*type, path + ".Type"));
    if (*type == "String") {
      p.type = TemplateParameter::Type::kString;
    } else if (*type == "Number") {
      p.type = TemplateParameter::Type::kNumber;
    } else {
      return Invalid(path + ".Type", "unsupported Type " + Quote(type->get<std::string>()) + " (supported: String, Number)");
    }
    if (from_certificate && p.type != TemplateParameter::Type::kString) {
      return Invalid(path + ".Type", "a certificate-derived parameter must be a String");
    }
    if (const json* d = Member(j, "Description")) CF_RETURN_IF_ERROR(ExpectString(*d, path + ".Description"));
    if (const json* values = Member(j, "AllowedValues")) {
      CF_RETURN_IF_ERROR(ExpectArray(*values, path + ".AllowedValues"));
      if (values->empty()) return Invalid(path + ".AllowedValues", "must not be empty");
      for (size_t i = 0; i < values->size(); ++i) {
        const std::string item_path = path + ".AllowedValues" + Index(i);
        CF_RETURN_IF_ERROR(ExpectString((*values)[i], item_path));
        std::string value = (*values)[i].get<std::string>();
        if (p.type == TemplateParameter::Type::kNumber && !IsNumber(value)) {
          return Invalid(item_path, Quote(value) + " is not a Number");
        }
        p.allowed_values.push_back(std::move(value));
      }
    }
    if (const json* pattern = Member(j, "AllowedPattern")) {
      CF_RETURN_IF_ERROR(ExpectString(*pattern, path + ".AllowedPattern"));
      p.allowed_pattern = pattern->get<std::string>();
      CF_ASSIGN_OR_RETURN(p.compiled_pattern, CompilePattern(p.allowed_pattern, path + ".AllowedPattern"));
    }
    if (const json* d = Member(j, "Default")) {
      if (from_certificate) return Invalid(path + ".Default", "a certificate-derived parameter cannot have a Default");
      if (d->is_string()) {
        p.default_value = d->get<std::string>();
      } else if (d->is_number() && p.type == TemplateParameter::Type::kNumber) {
        p.default_value = d->dump();
      } else {
        return Invalid(path + ".Default", std::string("expected a string, got ") + d->type_name());
      }
      CF_RETURN_IF_ERROR(CheckParameterValue(p, *p.default_value, path + ".Default"));
    }
    t_.parameters.emplace(name, std::move(p));
    return Status::Ok();
  }

  Status ParseConditions(const json& j) {
    CF_RETURN_IF_ERROR(ExpectObject(j, "Conditions"));
    in_conditions_ = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
      CF_RETURN_IF_ERROR(CheckName(kLogicalNameRule, it.key(), "Conditions"));
      CF_ASSIGN_OR_RETURN(TemplateCondition c, ParseCondition(it.value(), "Conditions." + it.key(), 0));
      t_.conditions.emplace(it.key(), std::move(c));
    }
    in_conditions_ = false;
    return Status::Ok();
  }

  Result<TemplateCondition> ParseCondition(const json& j, const std::string& path, int depth) {
    CF_RETURN_IF_ERROR(Budget(path, depth));
    if (!j.is_object() || j.size() != 1) {
      return shared::Error(Invalid(path, "expected a condition function: one of Fn::Equals, Fn::Not, Fn::And, Fn::Or"));
    }
    const std::string& key = j.begin().key();
    const json& arg = j.begin().value();
    const std::string fn_path = path + "." + key;
    TemplateCondition c;
    size_t min_args = 0;
    size_t max_args = 0;
    if (key == "Fn::Equals") {
      c.kind = TemplateCondition::Kind::kEquals;
      min_args = max_args = 2;
    } else if (key == "Fn::Not") {
      c.kind = TemplateCondition::Kind::kNot;
      min_args = max_args = 1;
    } else if (key == "Fn::And" || key == "Fn::Or") {
      c.kind = key == "Fn::And" ? TemplateCondition::Kind::kAnd : TemplateCondition::Kind::kOr;
      min_args = 2;
      max_args = 10;
    } else if (key == "Condition") {
      return shared::Error(Invalid(path, "unsupported: a condition cannot refer to another condition"));
    } else {
      return shared::Error(Invalid(path, "unsupported condition function " + Quote(key) +
                                             " (supported: Fn::Equals, Fn::Not, Fn::And, Fn::Or)"));
    }
    if (!arg.is_array() || arg.size() < min_args || arg.size() > max_args) {
      std::string count = min_args == max_args ? std::to_string(min_args)
                                               : std::to_string(min_args) + " to " + std::to_string(max_args);
      return shared::Error(Invalid(fn_path, "expects an array of " + count + " arguments"));
    }
    for (size_t i = 0; i < arg.size(); ++i) {
      if (c.kind == TemplateCondition::Kind::kEquals) {
        CF_ASSIGN_OR_RETURN(TemplateValue v, ParseValue(arg[i], fn_path + Index(i), depth + 1));
        c.operands.push_back(std::move(v));
      } else {
        CF_ASSIGN_OR_RETURN(TemplateCondition sub, ParseCondition(arg[i], fn_path + Index(i), depth + 1));
        c.conditions.push_back(std::move(sub));
      }
    }
    return c;
  }

  Status ParseResources(const json& j) {
    CF_RETURN_IF_ERROR(ExpectObject(j, "Resources"));
    bool have_thing = false;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string path = "Resources." + it.key();
      CF_RETURN_IF_ERROR(CheckName(kLogicalNameRule, it.key(), "Resources"));
      const json& res = it.value();
      CF_RETURN_IF_ERROR(ExpectObject(res, path));
      const json* type = Member(res, "Type");
      if (type == nullptr) return Invalid(path, "missing required key 'Type'");
      CF_RETURN_IF_ERROR(ExpectString(*type, path + ".Type"));
      if (*type == "AWS::IoT::Thing") {
        if (have_thing) {
          return Invalid(path, "a second AWS::IoT::Thing resource (the template must have exactly one; the first is " +
                                   Quote(t_.thing.logical_name) + ")");
        }
        have_thing = true;
        CF_RETURN_IF_ERROR(ParseThing(it.key(), res, path));
      } else if (*type == "AWS::IoT::Certificate") {
        if (t_.certificate) return Invalid(path, "a second AWS::IoT::Certificate resource (at most one is allowed)");
        CF_RETURN_IF_ERROR(ParseCertificate(it.key(), res, path));
      } else if (*type == "AWS::IoT::Policy") {
        if (t_.policy) return Invalid(path, "a second AWS::IoT::Policy resource (at most one is allowed)");
        CF_RETURN_IF_ERROR(ParsePolicy(it.key(), res, path));
      } else {
        return Invalid(path + ".Type", "unknown or unsupported resource type " + Quote(type->get<std::string>()) +
                                           " (supported: AWS::IoT::Thing, AWS::IoT::Certificate, AWS::IoT::Policy)");
      }
    }
    if (!have_thing) return Invalid("Resources", "no AWS::IoT::Thing resource (the template must have exactly one)");
    return Status::Ok();
  }

  // The Properties object of a resource, checked against `allowed`.
  Result<const json*> Properties(const json& res, std::initializer_list<std::string_view> allowed,
                                 const std::string& path) {
    const json* props = Member(res, "Properties");
    if (props == nullptr) return shared::Error(Invalid(path, "missing required key 'Properties'"));
    CF_RETURN_IF_ERROR(ExpectObject(*props, path + ".Properties"));
    CF_RETURN_IF_ERROR(CheckKeys(*props, allowed, "property", path + ".Properties"));
    return props;
  }

  Result<std::string> ResourceCondition(const json& res, const std::string& path) {
    const json* c = Member(res, "Condition");
    if (c == nullptr) return std::string();
    CF_RETURN_IF_ERROR(ExpectString(*c, path + ".Condition"));
    std::string name = c->get<std::string>();
    if (t_.conditions.count(name) == 0) return shared::Error(Invalid(path + ".Condition", "unknown condition " + Quote(name)));
    return name;
  }

  Status ParseThing(const std::string& logical_name, const json& res, const std::string& path) {
    if (Member(res, "Condition") != nullptr) {
      return Invalid(path + ".Condition", "unsupported: the AWS::IoT::Thing resource cannot be conditional");
    }
    CF_RETURN_IF_ERROR(CheckKeys(res, {"Type", "Properties", "OverrideSettings"}, "key", path));
    CF_ASSIGN_OR_RETURN(const json* props,
                        Properties(res, {"ThingName", "AttributePayload", "ThingGroups", "ThingTypeName"}, path));
    const std::string props_path = path + ".Properties";
    ThingResource& thing = t_.thing;
    thing.logical_name = logical_name;
    const json* name = Member(*props, "ThingName");
    if (name == nullptr) return Invalid(props_path, "missing required property 'ThingName'");
    CF_ASSIGN_OR_RETURN(thing.thing_name, ParseChecked(*name, props_path + ".ThingName", CheckThingName));
    if (const json* attrs = Member(*props, "AttributePayload")) {
      const std::string attrs_path = props_path + ".AttributePayload";
      CF_RETURN_IF_ERROR(ExpectObject(*attrs, attrs_path));
      for (auto it = attrs->begin(); it != attrs->end(); ++it) {
        CF_RETURN_IF_ERROR(CheckName(kAttributeNameRule, it.key(), attrs_path));
        CF_ASSIGN_OR_RETURN(TemplateValue v, ParseChecked(it.value(), attrs_path + "." + it.key(), CheckAttributeValue));
        thing.attributes.emplace(it.key(), std::move(v));
      }
    }
    if (const json* groups = Member(*props, "ThingGroups")) {
      const std::string groups_path = props_path + ".ThingGroups";
      CF_RETURN_IF_ERROR(ExpectArray(*groups, groups_path));
      for (size_t i = 0; i < groups->size(); ++i) {
        CF_ASSIGN_OR_RETURN(TemplateValue v, ParseChecked((*groups)[i], groups_path + Index(i), CheckGroupName));
        thing.groups.push_back(std::move(v));
      }
    }
    if (const json* type = Member(*props, "ThingTypeName")) {
      CF_ASSIGN_OR_RETURN(thing.thing_type, ParseChecked(*type, props_path + ".ThingTypeName", CheckThingType));
    }
    if (const json* overrides = Member(res, "OverrideSettings")) {
      const std::string o_path = path + ".OverrideSettings";
      CF_RETURN_IF_ERROR(ExpectObject(*overrides, o_path));
      CF_RETURN_IF_ERROR(CheckKeys(*overrides, {"AttributePayload", "ThingGroups", "ThingTypeName"}, "key", o_path));
      for (auto it = overrides->begin(); it != overrides->end(); ++it) {
        const std::string v_path = o_path + "." + it.key();
        CF_RETURN_IF_ERROR(ExpectString(it.value(), v_path));
        std::string v = it.value().get<std::string>();
        if (v != "DO_NOTHING" && v != "REPLACE" && v != "FAIL" && v != "MERGE") {
          return Invalid(v_path, Quote(v) + " is invalid: must be DO_NOTHING, REPLACE, FAIL or MERGE");
        }
        if (v == "MERGE" && it.key() == "ThingTypeName") {
          return Invalid(v_path, "MERGE does not apply to ThingTypeName: use DO_NOTHING, REPLACE or FAIL");
        }
        thing.override_settings.emplace(it.key(), std::move(v));
      }
    }
    return Status::Ok();
  }

  Status ParseCertificate(const std::string& logical_name, const json& res, const std::string& path) {
    CF_RETURN_IF_ERROR(CheckKeys(res, {"Type", "Properties", "Condition"}, "key", path));
    CF_ASSIGN_OR_RETURN(const json* props, Properties(res, {"CertificateId", "Status"}, path));
    const std::string props_path = path + ".Properties";
    CertificateResource cert;
    cert.logical_name = logical_name;
    CF_ASSIGN_OR_RETURN(cert.condition, ResourceCondition(res, path));
    const json* id = Member(*props, "CertificateId");
    if (id == nullptr) return Invalid(props_path, "missing required property 'CertificateId'");
    CF_ASSIGN_OR_RETURN(TemplateValue id_value, ParseValue(*id, props_path + ".CertificateId", 0));
    if (id_value.kind != TemplateValue::Kind::kRef || id_value.text != kCertificateIdParameter) {
      return Invalid(props_path + ".CertificateId",
                     std::string("must be {\"Ref\": \"") + kCertificateIdParameter +
                         "\"}: fleet provisioning registers the certificate of the request");
    }
    const json* status = Member(*props, "Status");
    if (status == nullptr) return Invalid(props_path, "missing required property 'Status'");
    CF_ASSIGN_OR_RETURN(cert.status, ParseChecked(*status, props_path + ".Status", CheckCertificateStatus));
    t_.certificate = std::move(cert);
    return Status::Ok();
  }

  Status ParsePolicy(const std::string& logical_name, const json& res, const std::string& path) {
    CF_RETURN_IF_ERROR(CheckKeys(res, {"Type", "Properties", "Condition"}, "key", path));
    CF_ASSIGN_OR_RETURN(const json* props, Properties(res, {"PolicyName"}, path));
    PolicyResource policy;
    policy.logical_name = logical_name;
    CF_ASSIGN_OR_RETURN(policy.condition, ResourceCondition(res, path));
    const json* name = Member(*props, "PolicyName");
    if (name == nullptr) return Invalid(path + ".Properties", "missing required property 'PolicyName'");
    CF_ASSIGN_OR_RETURN(policy.policy_name, ParseChecked(*name, path + ".Properties.PolicyName", CheckPolicyName));
    t_.policy = std::move(policy);
    return Status::Ok();
  }

  Status ParseDeviceConfiguration(const json& j) {
    CF_RETURN_IF_ERROR(ExpectObject(j, "DeviceConfiguration"));
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key().empty() || it.key().size() > 128) {
        return Invalid("DeviceConfiguration", "key " + Quote(it.key()) + " is invalid: must be 1-128 bytes");
      }
      CF_ASSIGN_OR_RETURN(TemplateValue v, ParseValue(it.value(), "DeviceConfiguration." + it.key(), 0));
      t_.device_configuration.emplace(it.key(), std::move(v));
    }
    return Status::Ok();
  }

  Status ParseCertfleet(const json& j) {
    CF_RETURN_IF_ERROR(ExpectObject(j, "certfleet"));
    CF_RETURN_IF_ERROR(CheckKeys(j, {"allowReprovisioning", "claimSubjects"}, "key", "certfleet"));
    if (const json* allow = Member(j, "allowReprovisioning")) {
      CF_RETURN_IF_ERROR(ExpectType(*allow, json::value_t::boolean, "a boolean", "certfleet.allowReprovisioning"));
      t_.certfleet.allow_reprovisioning = allow->get<bool>();
    }
    if (const json* subjects = Member(j, "claimSubjects")) {
      const std::string path = "certfleet.claimSubjects";
      CF_RETURN_IF_ERROR(ExpectArray(*subjects, path));
      if (subjects->empty()) return Invalid(path, "must not be empty (leave the key out to allow any claim certificate)");
      for (size_t i = 0; i < subjects->size(); ++i) {
        CF_RETURN_IF_ERROR(ExpectString((*subjects)[i], path + Index(i)));
        std::string glob = (*subjects)[i].get<std::string>();
        if (glob.empty() || glob.size() > 256) return Invalid(path + Index(i), "must be 1-256 bytes");
        t_.certfleet.claim_subjects.push_back(std::move(glob));
      }
    }
    return Status::Ok();
  }

  Status Budget(const std::string& path, int depth) {
    if (depth > kMaxDepth) return Invalid(path, "nested more than " + std::to_string(kMaxDepth) + " levels deep");
    if (++nodes_ > kMaxValueNodes) {
      return Invalid(path, "too complex: more than " + std::to_string(kMaxValueNodes) + " values and functions");
    }
    return Status::Ok();
  }

  // A value; if it is a literal, `check` runs on it now rather than on every apply.
  Result<TemplateValue> ParseChecked(const json& j, const std::string& path, Check check) {
    CF_ASSIGN_OR_RETURN(TemplateValue v, ParseValue(j, path, 0));
    if (v.kind == TemplateValue::Kind::kLiteral) CF_RETURN_IF_ERROR(check(v.text, path));
    return v;
  }

  Result<TemplateValue> ParseValue(const json& j, const std::string& path, int depth) {
    CF_RETURN_IF_ERROR(Budget(path, depth));
    if (j.is_string()) return Literal(j.get<std::string>());
    if (!j.is_object()) {
      return shared::Error(Invalid(path, std::string("expected a string or an intrinsic function, got ") + j.type_name()));
    }
    if (j.size() != 1) {
      return shared::Error(Invalid(path, "expected a string or an intrinsic function (an object with exactly one key)"));
    }
    const std::string& key = j.begin().key();
    const json& arg = j.begin().value();
    if (key == "Ref") return ParseRef(arg, path);
    if (key == "Fn::Join") return ParseJoin(arg, path + ".Fn::Join", depth);
    if (key == "Fn::Sub") return ParseSub(arg, path + ".Fn::Sub", depth);
    if (key == "Fn::If") return ParseIf(arg, path + ".Fn::If", depth);
    if (key.rfind("Fn::", 0) == 0) {
      return shared::Error(Invalid(path, "unsupported intrinsic function " + Quote(key) +
                                             " (supported: Ref, Fn::Join, Fn::Sub, Fn::If)"));
    }
    return shared::Error(Invalid(path, "expected a string or an intrinsic function, got an object with key " + Quote(key)));
  }

  Status CheckRef(const std::string& name, const std::string& path) {
    if (t_.parameters.count(name) != 0) return Status::Ok();
    if (name.rfind("AWS::", 0) == 0 && !IsCertificateParameter(name)) {
      return Invalid(path, "unsupported pseudo parameter " + Quote(name));
    }
    return Invalid(path, "Ref to unknown parameter " + Quote(name));
  }

  Result<TemplateValue> ParseRef(const json& arg, const std::string& path) {
    if (!arg.is_string()) return shared::Error(Invalid(path, "Ref expects a parameter name"));
    TemplateValue v;
    v.kind = TemplateValue::Kind::kRef;
    v.text = arg.get<std::string>();
    CF_RETURN_IF_ERROR(CheckRef(v.text, path));
    return v;
  }

  Result<TemplateValue> ParseJoin(const json& arg, const std::string& path, int depth) {
    if (!arg.is_array() || arg.size() != 2 || !arg[0].is_string() || !arg[1].is_array()) {
      return shared::Error(Invalid(path, "expects [delimiter, [value, ...]]"));
    }
    TemplateValue v;
    v.kind = TemplateValue::Kind::kJoin;
    v.text = arg[0].get<std::string>();
    for (size_t i = 0; i < arg[1].size(); ++i) {
      CF_ASSIGN_OR_RETURN(TemplateValue part, ParseValue(arg[1][i], path + "[1]" + Index(i), depth + 1));
      v.args.push_back(std::move(part));
    }
    return v;
  }

  // "text ${Param} ${!Literal}" or ["text ${var}", {"var": value}], compiled to a Join.
  Result<TemplateValue> ParseSub(const json& arg, const std::string& path, int depth) {
    std::string_view text;
    std::string text_path = path;
    std::map<std::string, TemplateValue> vars;
    if (arg.is_string()) {
      text = arg.get_ref<const std::string&>();
    } else if (arg.is_array() && arg.size() == 2 && arg[0].is_string() && arg[1].is_object()) {
      text = arg[0].get_ref<const std::string&>();
      text_path += "[0]";
      for (auto it = arg[1].begin(); it != arg[1].end(); ++it) {
        CF_ASSIGN_OR_RETURN(TemplateValue v, ParseValue(it.value(), path + "[1]." + it.key(), depth + 1));
        vars.emplace(it.key(), std::move(v));
      }
    } else {
      return shared::Error(Invalid(path, "expects a string or [string, {variable: value, ...}]"));
    }
    TemplateValue join;
    join.kind = TemplateValue::Kind::kJoin;
    std::string literal;
    size_t i = 0;
    while (i < text.size()) {
      if (text.compare(i, 2, "${") != 0) {
        literal += text[i++];
        continue;
      }
      size_t close = text.find('}', i + 2);
      if (close == std::string_view::npos) return shared::Error(Invalid(text_path, "unterminated '${'"));
      std::string name(text.substr(i + 2, close - i - 2));
      i = close + 1;
      if (!name.empty() && name[0] == '!') {  // ${!x} is the literal text ${x}
        literal += "${" + name.substr(1) + "}";
        continue;
      }
      if (!literal.empty()) join.args.push_back(Literal(std::move(literal)));
      literal.clear();
      if (auto var = vars.find(name); var != vars.end()) {
        nodes_ += CountNodes(var->second);
        CF_RETURN_IF_ERROR(Budget(text_path, depth + 1));
        join.args.push_back(var->second);
      } else {
        CF_RETURN_IF_ERROR(Budget(text_path, depth + 1));
        CF_RETURN_IF_ERROR(CheckRef(name, text_path));
        TemplateValue ref;
        ref.kind = TemplateValue::Kind::kRef;
        ref.text = std::move(name);
        join.args.push_back(std::move(ref));
      }
    }
    if (!literal.empty()) join.args.push_back(Literal(std::move(literal)));
    if (join.args.empty()) return Literal("");
    if (join.args.size() == 1) return std::move(join.args[0]);
    return join;
  }

  Result<TemplateValue> ParseIf(const json& arg, const std::string& path, int depth) {
    if (in_conditions_) return shared::Error(Invalid(path, "unsupported: Fn::If inside a condition"));
    if (!arg.is_array() || arg.size() != 3 || !arg[0].is_string()) {
      return shared::Error(Invalid(path, "expects [condition, value if true, value if false]"));
    }
    TemplateValue v;
    v.kind = TemplateValue::Kind::kIf;
    v.text = arg[0].get<std::string>();
    if (t_.conditions.count(v.text) == 0) return shared::Error(Invalid(path, "unknown condition " + Quote(v.text)));
    for (size_t i = 1; i < 3; ++i) {
      CF_ASSIGN_OR_RETURN(TemplateValue branch, ParseValue(arg[i], path + Index(i), depth + 1));
      v.args.push_back(std::move(branch));
    }
    return v;
  }

  ProvisioningTemplate& t_;
  size_t nodes_ = 0;
  bool in_conditions_ = false;  // Fn::If may not appear inside Conditions
};

// Records where a JSON text stops being JSON (the DOM parser, without exceptions, cannot).
class ErrorLocator : public nlohmann::json_sax<json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    std::string_view what = ex.what();
    if (size_t bracket = what.find("] "); bracket != std::string_view::npos) what.remove_prefix(bracket + 2);
    message_ = std::string(what.substr(0, 200));
    for (char& c : message_) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return false;
  }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

struct Environment {
  std::map<std::string, std::string> parameters;
  std::map<std::string, bool> conditions;
};

std::string Evaluate(const TemplateValue& v, const Environment& env) {
  switch (v.kind) {
    case TemplateValue::Kind::kLiteral:
      return v.text;
    case TemplateValue::Kind::kRef: {
      auto it = env.parameters.find(v.text);
      return it == env.parameters.end() ? std::string() : it->second;
    }
    case TemplateValue::Kind::kJoin: {
      std::string out;
      for (size_t i = 0; i < v.args.size(); ++i) {
        if (i > 0) out += v.text;
        out += Evaluate(v.args[i], env);
      }
      return out;
    }
    case TemplateValue::Kind::kIf: {
      if (v.args.size() != 2) return std::string();
      auto it = env.conditions.find(v.text);
      return Evaluate(v.args[it != env.conditions.end() && it->second ? 0 : 1], env);
    }
  }
  return std::string();
}

bool EvaluateCondition(const TemplateCondition& c, const Environment& env) {
  auto eval = [&](const TemplateCondition& sub) { return EvaluateCondition(sub, env); };
  switch (c.kind) {
    case TemplateCondition::Kind::kEquals:
      return c.operands.size() == 2 && Evaluate(c.operands[0], env) == Evaluate(c.operands[1], env);
    case TemplateCondition::Kind::kNot:
      return c.conditions.size() == 1 && !eval(c.conditions[0]);
    case TemplateCondition::Kind::kAnd:
      return std::all_of(c.conditions.begin(), c.conditions.end(), eval);
    case TemplateCondition::Kind::kOr:
      return std::any_of(c.conditions.begin(), c.conditions.end(), eval);
  }
  return false;
}

bool ConditionHolds(const std::string& name, const Environment& env) {
  if (name.empty()) return true;
  auto it = env.conditions.find(name);
  return it != env.conditions.end() && it->second;
}

// `source` is "parameters" (the device's) or "parameterOverrides" (the hook's).
Status CheckSupplied(const ProvisioningTemplate& t, const std::map<std::string, std::string>& supplied,
                     const std::string& source) {
  for (const auto& [name, value] : supplied) {
    if (IsCertificateParameter(name)) {
      return Invalid(source, "parameter " + Quote(name) + " is derived from the certificate and cannot be supplied");
    }
    if (t.parameters.count(name) == 0) {
      return Invalid(source, "unknown parameter " + Quote(name) + " (not declared by template " + Quote(t.name) + ")");
    }
    if (value.size() > kMaxParameterValueBytes) {
      return Invalid(source, "parameter " + Quote(name) + ": value longer than " +
                                 std::to_string(kMaxParameterValueBytes) + " bytes");
    }
  }
  return Status::Ok();
}

std::string CertificateValue(const CertificateFacts& cert, std::string_view name) {
  if (name == kCertificateIdParameter) return cert.id;
  if (name == kCertificateCommonNameParameter) return cert.common_name;
  if (name == kCertificateSerialNumberParameter) return cert.serial_number;
  if (name == kCertificateCountryParameter) return cert.country;
  return std::string();
}

}  // namespace

bool IsCertificateParameter(std::string_view name) {
  return name == kCertificateIdParameter || name == kCertificateCommonNameParameter ||
         name == kCertificateSerialNumberParameter || name == kCertificateCountryParameter;
}

Result<ProvisioningTemplate> ParseProvisioningTemplate(std::string_view name, std::string_view json_text) {
  if (!Matches(kTemplateNameRule, name)) return shared::Error(CheckName(kTemplateNameRule, name, ""));
  const std::string context = "template " + Quote(name);
  if (json_text.size() > kMaxTemplateBytes) {
    return shared::Error(Code::kInvalidArgument, context + ": larger than " + std::to_string(kMaxTemplateBytes) +
                                                     " bytes (" + std::to_string(json_text.size()) + ")");
  }
  json root = json::parse(json_text.begin(), json_text.end(), nullptr, false);
  if (root.is_discarded()) {
    ErrorLocator locator;
    (void)json::sax_parse(json_text.begin(), json_text.end(), &locator);
    return shared::Error(Code::kInvalidArgument,
                         context + ": malformed JSON" + (locator.message().empty() ? "" : ": " + locator.message()));
  }
  ProvisioningTemplate t;
  t.name = std::string(name);
  Status parsed = TemplateParser(t).Parse(root);
  if (!parsed.ok()) return shared::Error(parsed.WithContext(context));
  return t;
}

Result<ProvisioningTemplate> LoadProvisioningTemplate(const std::string& name, const std::string& path,
                                                      shared::Filesystem& fs) {
  auto text = fs.ReadFile(path, kMaxTemplateBytes);
  if (!text) {
    if (text.error().code() == Code::kResourceExhausted) {
      return shared::Error(Code::kInvalidArgument, path + ": provisioning template " + Quote(name) +
                                                       " is larger than " + std::to_string(kMaxTemplateBytes) + " bytes");
    }
    return shared::Error(text.error().WithContext("provisioning template " + Quote(name)));
  }
  auto t = ParseProvisioningTemplate(name, *text);
  if (!t) return shared::Error(t.error().WithContext(path));
  return t;
}

Result<ProvisioningResult> ApplyTemplate(const ProvisioningTemplate& t,
                                         const std::map<std::string, std::string>& device_parameters,
                                         const CertificateFacts& cert,
                                         const std::map<std::string, std::string>& parameter_overrides) {
  CF_RETURN_IF_ERROR(CheckSupplied(t, device_parameters, "parameters"));
  CF_RETURN_IF_ERROR(CheckSupplied(t, parameter_overrides, "parameterOverrides"));

  Environment env;
  std::vector<std::string> missing;
  for (const auto& [name, p] : t.parameters) {
    std::string value;
    if (IsCertificateParameter(name)) {
      value = CertificateValue(cert, name);
    } else if (auto o = parameter_overrides.find(name); o != parameter_overrides.end()) {
      value = o->second;
    } else if (auto d = device_parameters.find(name); d != device_parameters.end()) {
      value = d->second;
    } else if (p.default_value) {
      value = *p.default_value;
    } else {
      missing.push_back(Quote(name));
      continue;
    }
    CF_RETURN_IF_ERROR(CheckParameterValue(p, value, "parameter " + Quote(name)));
    env.parameters.emplace(name, std::move(value));
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) (list += list.empty() ? "" : ", ") += m;
    return shared::Error(Code::kInvalidArgument,
                         (missing.size() == 1 ? "missing required parameter " : "missing required parameters ") + list);
  }
  for (const auto& [name, c] : t.conditions) env.conditions.emplace(name, EvaluateCondition(c, env));

  ProvisioningResult r;
  const std::string props = "Resources." + t.thing.logical_name + ".Properties.";
  r.thing_name = Evaluate(t.thing.thing_name, env);
  CF_RETURN_IF_ERROR(CheckThingName(r.thing_name, props + "ThingName"));
  for (const auto& [key, value] : t.thing.attributes) {
    std::string v = Evaluate(value, env);
    CF_RETURN_IF_ERROR(CheckAttributeValue(v, props + "AttributePayload." + key));
    r.attributes.emplace(key, std::move(v));
  }
  std::set<std::string> seen_groups;
  for (size_t i = 0; i < t.thing.groups.size(); ++i) {
    std::string g = Evaluate(t.thing.groups[i], env);
    CF_RETURN_IF_ERROR(CheckGroupName(g, props + "ThingGroups" + Index(i)));
    if (seen_groups.insert(g).second) r.groups.push_back(std::move(g));
  }
  if (t.thing.thing_type) {
    r.thing_type = Evaluate(*t.thing.thing_type, env);
    CF_RETURN_IF_ERROR(CheckThingType(r.thing_type, props + "ThingTypeName"));
  }
  r.override_settings = t.thing.override_settings;
  if (t.certificate && ConditionHolds(t.certificate->condition, env)) {
    r.certificate_status = Evaluate(t.certificate->status, env);
    CF_RETURN_IF_ERROR(CheckCertificateStatus(r.certificate_status,
                                              "Resources." + t.certificate->logical_name + ".Properties.Status"));
  }
  if (t.policy && ConditionHolds(t.policy->condition, env)) {
    r.policy_name = Evaluate(t.policy->policy_name, env);
    CF_RETURN_IF_ERROR(CheckPolicyName(r.policy_name, "Resources." + t.policy->logical_name + ".Properties.PolicyName"));
  }
  for (const auto& [key, value] : t.device_configuration) r.device_configuration.emplace(key, Evaluate(value, env));
  return r;
}

bool GlobMatch(std::string_view pattern, std::string_view text) {
  size_t p = 0;
  size_t i = 0;
  size_t star = std::string_view::npos;  // position of the last '*' seen
  size_t resume = 0;                     // where in `text` that '*' is tried next
  while (i < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = i;
    } else if (p < pattern.size() && pattern[p] == text[i]) {
      ++p;
      ++i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool ClaimSubjectAllowed(const ProvisioningTemplate& t, std::string_view claim_subject_cn) {
  if (t.certfleet.claim_subjects.empty()) return true;
  return std::any_of(t.certfleet.claim_subjects.begin(), t.certfleet.claim_subjects.end(),
                     [&](const std::string& glob) { return GlobMatch(glob, claim_subject_cn); });
}

}  // namespace certfleet::companion
