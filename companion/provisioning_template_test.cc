#include "companion/provisioning_template.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "shared/core/filesystem.h"

namespace certfleet::companion {
namespace {

using nlohmann::json;
using shared::Code;
using Params = std::map<std::string, std::string>;

// The example of the AWS fleet provisioning documentation, in certfleet's words.
const char kExample[] = R"json({
  "Parameters": {
    "SerialNumber": {"Type": "String"},
    "Model": {"Type": "String", "Default": "gw-100"},
    "AWS::IoT::Certificate::Id": {"Type": "String"},
    "AWS::IoT::Certificate::CommonName": {"Type": "String"}
  },
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": {"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]},
        "AttributePayload": {"model": {"Ref": "Model"}, "fw": "1.0"},
        "ThingGroups": ["gateways", {"Ref": "Model"}],
        "ThingTypeName": "gateway"
      },
      "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING", "ThingTypeName": "REPLACE"}
    },
    "certificate": {
      "Type": "AWS::IoT::Certificate",
      "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}
    },
    "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "gateway-policy"}}
  },
  "DeviceConfiguration": {"FallbackUrl": "https://example.com", "LocationUrl": {"Ref": "Model"}}
})json";

const CertificateFacts kCert{std::string(64, 'a'), "claim-batch-7", "0A1B2C", "DE"};

json Example() { return json::parse(kExample); }

// A template with one parameter `P` of the given declaration and the thing name `Ref P`.
json OneParameter(const json& declaration) {
  json t;
  t["Parameters"]["P"] = declaration;
  t["Resources"]["thing"] = {{"Type", "AWS::IoT::Thing"}, {"Properties", {{"ThingName", {{"Ref", "P"}}}}}};
  return t;
}

// A template whose thing name is `value` (and that declares the example's parameters).
json WithThingName(const json& value) {
  json t = Example();
  t["Resources"]["thing"]["Properties"]["ThingName"] = value;
  return t;
}

shared::Result<ProvisioningTemplate> Parse(const std::string& text) { return ParseProvisioningTemplate("gw", text); }
shared::Result<ProvisioningTemplate> Parse(const json& j) { return Parse(j.dump()); }

ProvisioningTemplate MustParse(const json& j) {
  auto t = Parse(j);
  EXPECT_TRUE(t) << t.error().ToString() << "\n" << j.dump(2);
  return t ? *t : ProvisioningTemplate{};
}

void ExpectMessage(const shared::Status& status, const std::vector<std::string>& needles) {
  EXPECT_EQ(status.code(), Code::kInvalidArgument) << status.ToString();
  for (const auto& n : needles) {
    EXPECT_NE(status.message().find(n), std::string::npos) << "'" << n << "' not in: " << status.message();
  }
}

// Expects the template to be refused with kInvalidArgument and every needle in the message.
void ExpectParseError(const std::string& text, const std::vector<std::string>& needles) {
  auto t = Parse(text);
  ASSERT_FALSE(t) << "accepted:\n" << text;
  EXPECT_EQ(t.error().message().rfind("template 'gw': ", 0), 0u) << t.error().message();
  ExpectMessage(t.error(), needles);
}
void ExpectParseError(const json& j, const std::vector<std::string>& needles) { ExpectParseError(j.dump(), needles); }

void ExpectApplyError(const ProvisioningTemplate& t, const Params& params, const std::vector<std::string>& needles,
                      const Params& overrides = {}) {
  auto r = ApplyTemplate(t, params, kCert, overrides);
  ASSERT_FALSE(r) << "accepted; thing name " << r->thing_name;
  ExpectMessage(r.error(), needles);
}

// ---- The example ----

TEST(ProvisioningTemplateTest, ExampleLoads) {
  auto t = Parse(std::string(kExample));
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->name, "gw");
  EXPECT_EQ(t->parameters.size(), 4u);
  ASSERT_TRUE(t->parameters.at("Model").default_value);
  EXPECT_EQ(*t->parameters.at("Model").default_value, "gw-100");
  EXPECT_FALSE(t->parameters.at("SerialNumber").default_value);
  EXPECT_EQ(t->thing.logical_name, "thing");
  EXPECT_EQ(t->thing.thing_name.kind, TemplateValue::Kind::kJoin);
  EXPECT_EQ(t->thing.attributes.size(), 2u);
  EXPECT_EQ(t->thing.groups.size(), 2u);
  ASSERT_TRUE(t->certificate);
  EXPECT_EQ(t->certificate->logical_name, "certificate");
  ASSERT_TRUE(t->policy);
  EXPECT_EQ(t->device_configuration.size(), 2u);
  EXPECT_FALSE(t->certfleet.allow_reprovisioning);
  EXPECT_TRUE(t->certfleet.claim_subjects.empty());
}

TEST(ProvisioningTemplateTest, ExampleApplies) {
  auto t = MustParse(Example());
  auto r = ApplyTemplate(t, {{"SerialNumber", "123"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_name, "gw-123");
  EXPECT_EQ(r->attributes, (Params{{"model", "gw-100"}, {"fw", "1.0"}}));
  EXPECT_EQ(r->groups, (std::vector<std::string>{"gateways", "gw-100"}));
  EXPECT_EQ(r->thing_type, "gateway");
  EXPECT_EQ(r->policy_name, "gateway-policy");
  EXPECT_EQ(r->certificate_status, "ACTIVE");
  EXPECT_EQ(r->device_configuration, (Params{{"FallbackUrl", "https://example.com"}, {"LocationUrl", "gw-100"}}));
  EXPECT_EQ(r->override_settings,
            (Params{{"AttributePayload", "MERGE"}, {"ThingGroups", "DO_NOTHING"}, {"ThingTypeName", "REPLACE"}}));
}

TEST(ProvisioningTemplateTest, DeviceValueReplacesDefaultAndGroupsAreDeduplicated) {
  auto t = MustParse(Example());
  auto r = ApplyTemplate(t, {{"SerialNumber", "9"}, {"Model", "gateways"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->attributes.at("model"), "gateways");
  EXPECT_EQ(r->groups, (std::vector<std::string>{"gateways"}));
}

TEST(ProvisioningTemplateTest, MinimalTemplateLeavesCertificateAndPolicyAlone) {
  auto t = MustParse(json::parse(R"({"Resources": {"t": {"Type": "AWS::IoT::Thing",
                                                          "Properties": {"ThingName": "fixed"}}}})"));
  auto r = ApplyTemplate(t, {}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_name, "fixed");
  EXPECT_EQ(r->certificate_status, "");
  EXPECT_EQ(r->policy_name, "");
  EXPECT_EQ(r->thing_type, "");
  EXPECT_TRUE(r->groups.empty());
  EXPECT_TRUE(r->override_settings.empty());
}

// ---- Loading from a file ----

TEST(ProvisioningTemplateTest, LoadsThroughTheFilesystem) {
  shared::MemFilesystem fs;
  ASSERT_TRUE(fs.WriteFileAtomic("/etc/certfleet/templates/gw.json", kExample, 0644).ok());
  auto t = LoadProvisioningTemplate("gw", "/etc/certfleet/templates/gw.json", fs);
  ASSERT_TRUE(t) << t.error().ToString();
  EXPECT_EQ(t->name, "gw");

  auto missing = LoadProvisioningTemplate("gw", "/etc/certfleet/templates/none.json", fs);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Code::kNotFound);

  ASSERT_TRUE(fs.WriteFileAtomic("/t/big.json", std::string(kMaxTemplateBytes + 1, ' '), 0644).ok());
  auto big = LoadProvisioningTemplate("gw", "/t/big.json", fs);
  ASSERT_FALSE(big);
  ExpectMessage(big.error(), {"/t/big.json", "larger than 262144 bytes"});

  ASSERT_TRUE(fs.WriteFileAtomic("/t/bad.json", "{\"Resources\": {}}", 0644).ok());
  auto bad = LoadProvisioningTemplate("gw", "/t/bad.json", fs);
  ASSERT_FALSE(bad);
  ExpectMessage(bad.error(), {"/t/bad.json: template 'gw': Resources: no AWS::IoT::Thing resource"});
}

// ---- Validation at load ----

TEST(ProvisioningTemplateTest, RefusesMalformedJson) {
  ExpectParseError(std::string("{\"Resources\": "), {"malformed JSON", "line 1"});
  ExpectParseError(std::string(""), {"malformed JSON"});
  ExpectParseError(std::string(kExample) + "}", {"malformed JSON"});
  ExpectParseError(std::string("{\"a\": \"\xff\"}"), {"malformed JSON"});
}

TEST(ProvisioningTemplateTest, RefusesANonObject) {
  ExpectParseError(std::string("[]"), {"the template must be a JSON object, got array"});
  ExpectParseError(std::string("\"x\""), {"must be a JSON object, got string"});
  ExpectParseError(std::string("null"), {"must be a JSON object, got null"});
}

TEST(ProvisioningTemplateTest, RefusesOversizeText) {
  std::string text = std::string(kExample) + std::string(kMaxTemplateBytes, ' ');
  ExpectParseError(text, {"larger than 262144 bytes"});
  // Exactly at the limit is fine.
  std::string padded = std::string(kExample);
  padded += std::string(kMaxTemplateBytes - padded.size(), ' ');
  EXPECT_TRUE(Parse(padded));
}

TEST(ProvisioningTemplateTest, RefusesBadTemplateNames) {
  for (const std::string& name :
       std::vector<std::string>{"", "a b", "gw/1", "gw.json", std::string(37, 'a'), std::string("gw\0", 3)}) {
    auto t = ParseProvisioningTemplate(name, kExample);
    ASSERT_FALSE(t) << name;
    ExpectMessage(t.error(), {"template name", "1-36 characters"});
  }
  for (const std::string& name : std::vector<std::string>{"a", "Gateway_v2-prod", std::string(36, 'z')}) {
    EXPECT_TRUE(ParseProvisioningTemplate(name, kExample)) << name;
  }
}

TEST(ProvisioningTemplateTest, RequiresExactlyOneThing) {
  json none = Example();
  none["Resources"].erase("thing");
  ExpectParseError(none, {"Resources: no AWS::IoT::Thing resource"});

  json two = Example();
  two["Resources"]["thing2"] = two["Resources"]["thing"];
  ExpectParseError(two, {"Resources.thing2: a second AWS::IoT::Thing resource", "the first is 'thing'"});

  json no_resources = Example();
  no_resources.erase("Resources");
  ExpectParseError(no_resources, {"missing required section 'Resources'"});
}

TEST(ProvisioningTemplateTest, AllowsAtMostOneCertificateAndPolicy) {
  json certs = Example();
  certs["Resources"]["zcert"] = certs["Resources"]["certificate"];
  ExpectParseError(certs, {"Resources.zcert: a second AWS::IoT::Certificate"});
  json policies = Example();
  policies["Resources"]["zpolicy"] = policies["Resources"]["policy"];
  ExpectParseError(policies, {"Resources.zpolicy: a second AWS::IoT::Policy"});
}

TEST(ProvisioningTemplateTest, RefusesUnknownResourceTypesPropertiesAndKeys) {
  json type = Example();
  type["Resources"]["job"] = {{"Type", "AWS::IoT::Job"}, {"Properties", json::object()}};
  ExpectParseError(type, {"Resources.job.Type: unknown or unsupported resource type 'AWS::IoT::Job'"});

  json property = Example();
  property["Resources"]["thing"]["Properties"]["BillingGroup"] = "b";
  ExpectParseError(property, {"Resources.thing.Properties: unknown or unsupported property 'BillingGroup'",
                              "supported: ThingName, AttributePayload, ThingGroups, ThingTypeName"});

  json doc = Example();
  doc["Resources"]["policy"]["Properties"]["PolicyDocument"] = "{}";
  ExpectParseError(doc, {"Resources.policy.Properties: unknown or unsupported property 'PolicyDocument'"});

  json pem = Example();
  pem["Resources"]["certificate"]["Properties"]["CertificatePem"] = "x";
  ExpectParseError(pem, {"unknown or unsupported property 'CertificatePem'"});

  json key = Example();
  key["Resources"]["thing"]["DependsOn"] = "policy";
  ExpectParseError(key, {"Resources.thing: unknown or unsupported key 'DependsOn'"});

  json section = Example();
  section["Mappings"] = json::object();
  ExpectParseError(section, {"unknown or unsupported section 'Mappings'"});

  json no_type = Example();
  no_type["Resources"]["policy"].erase("Type");
  ExpectParseError(no_type, {"Resources.policy: missing required key 'Type'"});

  json no_props = Example();
  no_props["Resources"]["policy"].erase("Properties");
  ExpectParseError(no_props, {"Resources.policy: missing required key 'Properties'"});

  json no_name = Example();
  no_name["Resources"]["thing"]["Properties"].erase("ThingName");
  ExpectParseError(no_name, {"Resources.thing.Properties: missing required property 'ThingName'"});

  json bad_logical = Example();
  bad_logical["Resources"]["my.thing"] = bad_logical["Resources"]["thing"];
  bad_logical["Resources"].erase("thing");
  ExpectParseError(bad_logical, {"Resources: name 'my.thing' is invalid"});
}

TEST(ProvisioningTemplateTest, RefusesRefToUnknownParameter) {
  auto t = Parse(WithThingName({{"Ref", "Serial"}}));
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(t.error().message(), "template 'gw': Resources.thing.Properties.ThingName: Ref to unknown parameter 'Serial'");

  json in_join = WithThingName({{"Fn::Join", {"", {"gw-", {{"Ref", "Serial"}}}}}});
  ExpectParseError(in_join, {"Resources.thing.Properties.ThingName.Fn::Join[1][1]: Ref to unknown parameter 'Serial'"});

  json config = Example();
  config["DeviceConfiguration"]["x"] = {{"Ref", "Nope"}};
  ExpectParseError(config, {"DeviceConfiguration.x: Ref to unknown parameter 'Nope'"});

  // Certificate-derived parameters must be declared too, like any other.
  json undeclared = Example();
  undeclared["Parameters"].erase("AWS::IoT::Certificate::Id");
  ExpectParseError(undeclared, {"Resources.certificate.Properties.CertificateId: Ref to unknown parameter "
                                "'AWS::IoT::Certificate::Id'"});

  ExpectParseError(WithThingName({{"Ref", "AWS::NoValue"}}), {"unsupported pseudo parameter 'AWS::NoValue'"});
  ExpectParseError(WithThingName({{"Ref", 5}}), {"Ref expects a parameter name"});
}

TEST(ProvisioningTemplateTest, RefusesBadOverrideSettings) {
  json bad = Example();
  bad["Resources"]["thing"]["OverrideSettings"]["ThingGroups"] = "KEEP";
  ExpectParseError(bad, {"Resources.thing.OverrideSettings.ThingGroups: 'KEEP' is invalid",
                         "DO_NOTHING, REPLACE, FAIL or MERGE"});
  json merge = Example();
  merge["Resources"]["thing"]["OverrideSettings"]["ThingTypeName"] = "MERGE";
  ExpectParseError(merge, {"MERGE does not apply to ThingTypeName"});
  json key = Example();
  key["Resources"]["thing"]["OverrideSettings"]["ThingName"] = "REPLACE";
  ExpectParseError(key, {"OverrideSettings: unknown or unsupported key 'ThingName'"});
  json not_string = Example();
  not_string["Resources"]["thing"]["OverrideSettings"]["ThingGroups"] = 1;
  ExpectParseError(not_string, {"OverrideSettings.ThingGroups: expected a string, got number"});
  for (const char* v : {"DO_NOTHING", "REPLACE", "FAIL", "MERGE"}) {
    json ok = Example();
    ok["Resources"]["thing"]["OverrideSettings"]["ThingGroups"] = v;
    EXPECT_TRUE(Parse(ok)) << v;
  }
}

TEST(ProvisioningTemplateTest, CertificateResourceRules) {
  json status = Example();
  status["Resources"]["certificate"]["Properties"]["Status"] = "REVOKED";
  ExpectParseError(status, {"Resources.certificate.Properties.Status: certificate Status 'REVOKED' is invalid",
                            "ACTIVE or INACTIVE"});
  json no_status = Example();
  no_status["Resources"]["certificate"]["Properties"].erase("Status");
  ExpectParseError(no_status, {"missing required property 'Status'"});

  json other_cert = Example();
  other_cert["Resources"]["certificate"]["Properties"]["CertificateId"] = "0123abcd";
  ExpectParseError(other_cert, {"CertificateId: must be {\"Ref\": \"AWS::IoT::Certificate::Id\"}"});
  json no_id = Example();
  no_id["Resources"]["certificate"]["Properties"].erase("CertificateId");
  ExpectParseError(no_id, {"missing required property 'CertificateId'"});

  json inactive = Example();
  inactive["Resources"]["certificate"]["Properties"]["Status"] = "INACTIVE";
  auto t = MustParse(inactive);
  auto r = ApplyTemplate(t, {{"SerialNumber", "1"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->certificate_status, "INACTIVE");

  // A Status computed from a parameter is checked on apply.
  json computed = Example();
  computed["Parameters"]["St"] = {{"Type", "String"}};
  computed["Resources"]["certificate"]["Properties"]["Status"] = {{"Ref", "St"}};
  auto ct = MustParse(computed);
  EXPECT_TRUE(ApplyTemplate(ct, {{"SerialNumber", "1"}, {"St", "ACTIVE"}}, kCert));
  ExpectApplyError(ct, {{"SerialNumber", "1"}, {"St", "PENDING_TRANSFER"}},
                   {"Resources.certificate.Properties.Status: certificate Status 'PENDING_TRANSFER' is invalid"});
}

TEST(ProvisioningTemplateTest, RefusesMalformedJoin) {
  const std::string path = "Resources.thing.Properties.ThingName.Fn::Join: expects [delimiter, [value, ...]]";
  ExpectParseError(WithThingName({{"Fn::Join", "gw"}}), {path});
  ExpectParseError(WithThingName({{"Fn::Join", {""}}}), {path});
  ExpectParseError(WithThingName({{"Fn::Join", {"", {"a"}, "extra"}}}), {path});
  ExpectParseError(WithThingName({{"Fn::Join", {1, {"a"}}}}), {path});
  ExpectParseError(WithThingName({{"Fn::Join", {"", "a"}}}), {path});
  ExpectParseError(WithThingName({{"Fn::Join", {"", {"a", 7}}}}),
                   {"ThingName.Fn::Join[1][1]: expected a string or an intrinsic function, got number"});
  ExpectParseError(WithThingName({{"Fn::Join", {"", {"a", json::object({{"Ref", "Model"}, {"Fn::Sub", "x"}})}}}}),
                   {"ThingName.Fn::Join[1][1]: expected a string or an intrinsic function (an object with exactly one key)"});
  // Nested Joins work.
  auto t = MustParse(WithThingName({{"Fn::Join", {"-", {"gw", {{"Fn::Join", {"_", {{{"Ref", "Model"}}, "x"}}}}}}}}));
  auto r = ApplyTemplate(t, {{"SerialNumber", "1"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_name, "gw-gw-100_x");
}

TEST(ProvisioningTemplateTest, RefusesUnsupportedIntrinsics) {
  for (const char* fn : {"Fn::Split", "Fn::Select", "Fn::FindInMap", "Fn::GetAtt", "Fn::Base64", "Fn::ImportValue"}) {
    ExpectParseError(WithThingName({{fn, {"a", "b"}}}),
                     {"Resources.thing.Properties.ThingName: unsupported intrinsic function '" + std::string(fn) + "'"});
  }
  ExpectParseError(WithThingName({{"Condition", "x"}}), {"got an object with key 'Condition'"});
  ExpectParseError(WithThingName(42), {"expected a string or an intrinsic function, got number"});
  ExpectParseError(WithThingName(nullptr), {"got null"});
}

TEST(ProvisioningTemplateTest, RefusesBadParameterDeclarations) {
  ExpectParseError(OneParameter({{"Type", "CommaDelimitedList"}}),
                   {"Parameters.P.Type: unsupported Type 'CommaDelimitedList' (supported: String, Number)"});
  ExpectParseError(OneParameter({{"Default", "x"}}), {"Parameters.P: missing required key 'Type'"});
  ExpectParseError(OneParameter("String"), {"Parameters.P: expected an object, got string"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"MinLength", 3}}),
                   {"Parameters.P: unknown or unsupported key 'MinLength'"});
  ExpectParseError(OneParameter({{"Type", "Number"}, {"Default", "ten"}}),
                   {"Parameters.P.Default: value 'ten' is not a Number"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"Default", 5}}),
                   {"Parameters.P.Default: expected a string, got number"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedValues", {"a", "b"}}, {"Default", "c"}}),
                   {"Parameters.P.Default: value 'c' is not one of AllowedValues"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedValues", json::array()}}),
                   {"Parameters.P.AllowedValues: must not be empty"});
  ExpectParseError(OneParameter({{"Type", "Number"}, {"AllowedValues", {"1", "x"}}}),
                   {"Parameters.P.AllowedValues[1]: 'x' is not a Number"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "[a-z]+"}, {"Default", "ABC"}}),
                   {"Parameters.P.Default: value 'ABC' does not match AllowedPattern '[a-z]+'"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "([a-z]"}}),
                   {"Parameters.P.AllowedPattern: invalid or unsupported AllowedPattern"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "(a)\\1"}}),
                   {"Parameters.P.AllowedPattern: invalid or unsupported AllowedPattern"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", std::string(kMaxAllowedPatternLength + 1, 'a')}}),
                   {"AllowedPattern is longer than 128 characters"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "((a{40}){40})"}}), {"too complex"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "a{99999}"}}), {"a repetition must be"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "a{2"}}), {"unterminated '{'"});

  json name = OneParameter({{"Type", "String"}});
  name["Parameters"]["bad name"] = {{"Type", "String"}};
  ExpectParseError(name, {"Parameters: parameter name 'bad name' is invalid"});
  json pseudo = OneParameter({{"Type", "String"}});
  pseudo["Parameters"]["AWS::Region"] = {{"Type", "String"}};
  ExpectParseError(pseudo, {"Parameters.AWS::Region: unsupported pseudo parameter"});
  json cert_default = Example();
  cert_default["Parameters"]["AWS::IoT::Certificate::Id"]["Default"] = "x";
  ExpectParseError(cert_default, {"a certificate-derived parameter cannot have a Default"});
  json cert_number = Example();
  cert_number["Parameters"]["AWS::IoT::Certificate::Id"]["Type"] = "Number";
  ExpectParseError(cert_number, {"a certificate-derived parameter must be a String"});
}

TEST(ProvisioningTemplateTest, ChecksLiteralOutputsAtLoad) {
  ExpectParseError(WithThingName("gw 1"), {"Resources.thing.Properties.ThingName: thing name 'gw 1' is invalid",
                                           "1-128 characters of A-Z a-z 0-9 : _ . -"});
  ExpectParseError(WithThingName(""), {"thing name '' is invalid"});
  json attr = Example();
  attr["Resources"]["thing"]["Properties"]["AttributePayload"]["fw"] = "1 0";
  ExpectParseError(attr, {"AttributePayload.fw: attribute value '1 0' is invalid"});
  json attr_name = Example();
  attr_name["Resources"]["thing"]["Properties"]["AttributePayload"]["a b"] = "x";
  ExpectParseError(attr_name, {"AttributePayload: attribute name 'a b' is invalid"});
  json group = Example();
  group["Resources"]["thing"]["Properties"]["ThingGroups"][0] = "a/b";
  ExpectParseError(group, {"ThingGroups[0]: thing group name 'a/b' is invalid"});
  json groups = Example();
  groups["Resources"]["thing"]["Properties"]["ThingGroups"] = "gateways";
  ExpectParseError(groups, {"ThingGroups: expected an array, got string"});
  json type = Example();
  type["Resources"]["thing"]["Properties"]["ThingTypeName"] = "gw type";
  ExpectParseError(type, {"ThingTypeName: thing type name 'gw type' is invalid"});
  json policy = Example();
  policy["Resources"]["policy"]["Properties"]["PolicyName"] = "a policy";
  ExpectParseError(policy, {"Resources.policy.Properties.PolicyName: policy name 'a policy' is invalid"});
  json config = Example();
  config["DeviceConfiguration"]["n"] = 3;
  ExpectParseError(config, {"DeviceConfiguration.n: expected a string or an intrinsic function, got number"});
}

TEST(ProvisioningTemplateTest, RefusesDeepNesting) {
  json v = {{"Ref", "Model"}};
  for (int i = 0; i < 20; ++i) v = {{"Fn::Join", {"", {v}}}};
  ExpectParseError(WithThingName(v), {"nested more than 16 levels deep"});
}

TEST(ProvisioningTemplateTest, RefusesTooManyValues) {
  json config = Example();
  for (int i = 0; i < 10001; ++i) config["DeviceConfiguration"]["k" + std::to_string(i)] = "v";
  ExpectParseError(config, {"too complex: more than 10000 values"});
}

TEST(ProvisioningTemplateTest, CertfleetExtension) {
  json ext = Example();
  ext["certfleet"] = {{"allowReprovisioning", true}, {"claimSubjects", {"claim-batch-*", "factory-?"}}};
  auto t = MustParse(ext);
  EXPECT_TRUE(t.certfleet.allow_reprovisioning);
  EXPECT_EQ(t.certfleet.claim_subjects, (std::vector<std::string>{"claim-batch-*", "factory-?"}));

  json unknown = Example();
  unknown["certfleet"] = {{"allowReprovision", true}};
  ExpectParseError(unknown, {"certfleet: unknown or unsupported key 'allowReprovision'"});
  json not_bool = Example();
  not_bool["certfleet"] = {{"allowReprovisioning", "yes"}};
  ExpectParseError(not_bool, {"certfleet.allowReprovisioning: expected a boolean, got string"});
  json empty = Example();
  empty["certfleet"] = {{"claimSubjects", json::array()}};
  ExpectParseError(empty, {"certfleet.claimSubjects: must not be empty"});
  json not_string = Example();
  not_string["certfleet"] = {{"claimSubjects", {"a", 1}}};
  ExpectParseError(not_string, {"certfleet.claimSubjects[1]: expected a string, got number"});
  json blank = Example();
  blank["certfleet"] = {{"claimSubjects", {""}}};
  ExpectParseError(blank, {"certfleet.claimSubjects[0]: must be 1-256 bytes"});
  json not_object = Example();
  not_object["certfleet"] = true;
  ExpectParseError(not_object, {"certfleet: expected an object, got boolean"});
}

// ---- Parameters on apply ----

TEST(ProvisioningTemplateTest, MissingRequiredParameter) {
  auto t = MustParse(Example());
  auto r = ApplyTemplate(t, {}, kCert);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.error().message(), "missing required parameter 'SerialNumber'");

  json two = Example();
  two["Parameters"]["Site"] = {{"Type", "String"}};
  ExpectApplyError(MustParse(two), {}, {"missing required parameters 'SerialNumber', 'Site'"});
}

TEST(ProvisioningTemplateTest, UnknownDeviceParameterIsRefused) {
  auto t = MustParse(Example());
  ExpectApplyError(t, {{"SerialNumber", "1"}, {"Colour", "red"}},
                   {"parameters: unknown parameter 'Colour' (not declared by template 'gw')"});
}

TEST(ProvisioningTemplateTest, OverlongParameterValueIsRefused) {
  auto t = MustParse(Example());
  ExpectApplyError(t, {{"SerialNumber", std::string(kMaxParameterValueBytes + 1, '1')}},
                   {"parameter 'SerialNumber': value longer than 1024 bytes"});
}

TEST(ProvisioningTemplateTest, NumberParameters) {
  json number = OneParameter({{"Type", "Number"}});
  number["Resources"]["thing"]["Properties"]["ThingName"] = "t";
  number["DeviceConfiguration"]["v"] = {{"Ref", "P"}};
  auto t = MustParse(number);
  for (const char* ok : {"42", "0", "-7", "1.5", "-0.25", "1e3", "2E-4", "6.02e+23", "007"}) {
    auto r = ApplyTemplate(t, {{"P", ok}}, kCert);
    ASSERT_TRUE(r) << ok << ": " << r.error().ToString();
    EXPECT_EQ(r->device_configuration.at("v"), ok);
  }
  for (const char* bad : {"", "abc", "1.", ".5", "+1", "1e", "0x10", " 1", "1 ", "inf", "nan", "1,5", "--1"}) {
    ExpectApplyError(t, {{"P", bad}}, {"parameter 'P': value", "is not a Number"});
  }
  // A JSON number is accepted as the Default of a Number.
  auto with_default = MustParse(OneParameter({{"Type", "Number"}, {"Default", 5}}));
  auto r = ApplyTemplate(with_default, {}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_name, "5");
}

TEST(ProvisioningTemplateTest, AllowedValuesAndPattern) {
  auto values = MustParse(OneParameter({{"Type", "String"}, {"AllowedValues", {"gw-100", "gw-200"}}}));
  EXPECT_TRUE(ApplyTemplate(values, {{"P", "gw-200"}}, kCert));
  ExpectApplyError(values, {{"P", "gw-300"}}, {"parameter 'P': value 'gw-300' is not one of AllowedValues"});

  auto pattern = MustParse(OneParameter({{"Type", "String"}, {"AllowedPattern", "[A-Z]{2}[0-9]{4}"}}));
  EXPECT_TRUE(ApplyTemplate(pattern, {{"P", "AB1234"}}, kCert));
  ExpectApplyError(pattern, {{"P", "ab1234"}}, {"does not match AllowedPattern '[A-Z]{2}[0-9]{4}'"});
  ExpectApplyError(pattern, {{"P", "AB12345"}}, {"does not match"});  // the whole value must match
  ExpectApplyError(pattern, {{"P", "xAB1234"}}, {"does not match"});

  // A pattern that backtracks exponentially elsewhere stays fast here.
  auto evil = MustParse(OneParameter({{"Type", "String"}, {"AllowedPattern", "(a|a)*(a*)*b"}}));
  ExpectApplyError(evil, {{"P", std::string(kMaxPatternValueBytes, 'a')}}, {"does not match"});
  json widest = OneParameter({{"Type", "String"}, {"AllowedPattern", "(.*){128}"}});
  widest["Resources"]["thing"]["Properties"]["ThingName"] = "t";
  auto parsed_widest = MustParse(widest);
  auto r = ApplyTemplate(parsed_widest, {{"P", std::string(kMaxPatternValueBytes, 'a')}}, kCert);
  EXPECT_TRUE(r) << r.error().ToString();
  // Values checked against a pattern are shorter than other values.
  ExpectApplyError(parsed_widest, {{"P", std::string(kMaxPatternValueBytes + 1, 'a')}},
                   {"parameter 'P': value longer than 256 bytes, the limit for a value checked against AllowedPattern"});

  // Counted repetitions may expand to 128 atoms, no more.
  EXPECT_TRUE(Parse(OneParameter({{"Type", "String"}, {"AllowedPattern", "a{128}"}})));
  EXPECT_TRUE(Parse(OneParameter({{"Type", "String"}, {"AllowedPattern", "[0-9a-f]{64}|([A-Z]{2}-[0-9]{6}){2,3}"}})));
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "a{129}"}}), {"too complex"});
  ExpectParseError(OneParameter({{"Type", "String"}, {"AllowedPattern", "(ab{16}){16}"}}), {"too complex"});
}

TEST(ProvisioningTemplateTest, CertificateDerivedParametersComeFromTheCertificate) {
  json t = Example();
  t["Parameters"]["AWS::IoT::Certificate::SerialNumber"] = {{"Type", "String"}};
  t["Parameters"]["AWS::IoT::Certificate::Country"] = {{"Type", "String"}};
  auto& attrs = t["Resources"]["thing"]["Properties"]["AttributePayload"];
  attrs["claim"] = {{"Ref", "AWS::IoT::Certificate::CommonName"}};
  attrs["serial"] = {{"Ref", "AWS::IoT::Certificate::SerialNumber"}};
  attrs["country"] = {{"Ref", "AWS::IoT::Certificate::Country"}};
  t["DeviceConfiguration"]["certificateId"] = {{"Ref", "AWS::IoT::Certificate::Id"}};
  auto parsed = MustParse(t);
  auto r = ApplyTemplate(parsed, {{"SerialNumber", "1"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->attributes.at("claim"), "claim-batch-7");
  EXPECT_EQ(r->attributes.at("serial"), "0A1B2C");
  EXPECT_EQ(r->attributes.at("country"), "DE");
  EXPECT_EQ(r->device_configuration.at("certificateId"), kCert.id);

  CertificateFacts no_country = kCert;
  no_country.country = "";
  auto r2 = ApplyTemplate(parsed, {{"SerialNumber", "1"}}, no_country);
  ASSERT_TRUE(r2) << r2.error().ToString();
  EXPECT_EQ(r2->attributes.at("country"), "");
}

TEST(ProvisioningTemplateTest, CertificateDerivedParametersCannotBeSupplied) {
  auto t = MustParse(Example());
  for (const char* name : {kCertificateIdParameter, kCertificateCommonNameParameter,
                           kCertificateSerialNumberParameter, kCertificateCountryParameter}) {
    ExpectApplyError(t, {{"SerialNumber", "1"}, {name, "forged"}},
                     {"parameters: parameter '" + std::string(name) + "' is derived from the certificate"});
    ExpectApplyError(t, {{"SerialNumber", "1"}}, {"parameterOverrides: parameter '" + std::string(name) + "'"},
                     {{name, "forged"}});
  }
}

TEST(ProvisioningTemplateTest, CertificateValuesMeetConstraints) {
  json t = Example();
  t["Parameters"]["AWS::IoT::Certificate::CommonName"]["AllowedPattern"] = "claim-batch-[0-9]+";
  auto parsed = MustParse(t);
  EXPECT_TRUE(ApplyTemplate(parsed, {{"SerialNumber", "1"}}, kCert));
  CertificateFacts other = kCert;
  other.common_name = "someone-else";
  auto r = ApplyTemplate(parsed, {{"SerialNumber", "1"}}, other);
  ASSERT_FALSE(r);
  ExpectMessage(r.error(), {"parameter 'AWS::IoT::Certificate::CommonName': value 'someone-else' does not match"});
}

// ---- Results on apply ----

TEST(ProvisioningTemplateTest, ThingNameIsValidated) {
  auto t = MustParse(Example());
  for (const char* ok : {"A-z_0:9.x", "1"}) {
    auto r = ApplyTemplate(t, {{"SerialNumber", ok}}, kCert);
    ASSERT_TRUE(r) << ok << ": " << r.error().ToString();
  }
  ExpectApplyError(t, {{"SerialNumber", "a b"}},
                   {"Resources.thing.Properties.ThingName: thing name 'gw-a b' is invalid",
                    "1-128 characters of A-Z a-z 0-9 : _ . -"});
  ExpectApplyError(t, {{"SerialNumber", "x/y"}}, {"thing name 'gw-x/y' is invalid"});
  ExpectApplyError(t, {{"SerialNumber", "\xc3\xa9"}}, {"thing name 'gw-?" "?' is invalid"});
  EXPECT_TRUE(ApplyTemplate(t, {{"SerialNumber", std::string(125, '1')}}, kCert));  // 128 characters
  ExpectApplyError(t, {{"SerialNumber", std::string(126, '1')}}, {"thing name", "is invalid"});

  auto bare = MustParse(OneParameter({{"Type", "String"}}));
  ExpectApplyError(bare, {{"P", ""}}, {"thing name '' is invalid"});
}

TEST(ProvisioningTemplateTest, ComputedNamesAndAttributesAreValidated) {
  json t = Example();
  t["Parameters"]["X"] = {{"Type", "String"}, {"Default", "ok"}};
  t["Resources"]["thing"]["Properties"]["ThingTypeName"] = {{"Ref", "X"}};
  t["Resources"]["policy"]["Properties"]["PolicyName"] = {{"Fn::Sub", "policy-${X}"}};
  auto parsed = MustParse(t);
  auto r = ApplyTemplate(parsed, {{"SerialNumber", "1"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_type, "ok");
  EXPECT_EQ(r->policy_name, "policy-ok");
  ExpectApplyError(parsed, {{"SerialNumber", "1"}, {"X", "a b"}}, {"ThingTypeName: thing type name 'a b' is invalid"});
  ExpectApplyError(parsed, {{"SerialNumber", "1"}, {"Model", "a b"}},
                   {"Resources.thing.Properties.AttributePayload.model: attribute value 'a b' is invalid"});
  ExpectApplyError(parsed, {{"SerialNumber", "1"}, {"Model", ""}}, {"ThingGroups[1]: thing group name '' is invalid"});
}

// ---- Hook overrides ----

TEST(ProvisioningTemplateTest, HookOverridesReplaceDeviceParameters) {
  auto t = MustParse(Example());
  auto r = ApplyTemplate(t, {{"SerialNumber", "1"}, {"Model", "gw-100"}}, kCert,
                         {{"SerialNumber", "hook-7"}, {"Model", "gw-200"}});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_name, "gw-hook-7");
  EXPECT_EQ(r->attributes.at("model"), "gw-200");

  // An override may supply what the device left out.
  auto filled = ApplyTemplate(t, {}, kCert, {{"SerialNumber", "2"}});
  ASSERT_TRUE(filled) << filled.error().ToString();
  EXPECT_EQ(filled->thing_name, "gw-2");

  ExpectApplyError(t, {{"SerialNumber", "1"}}, {"parameterOverrides: unknown parameter 'Extra'"}, {{"Extra", "x"}});
  // Overrides are validated like device values.
  ExpectApplyError(t, {{"SerialNumber", "1"}}, {"thing name 'gw-a b' is invalid"}, {{"SerialNumber", "a b"}});
}

// ---- Fn::Sub, Fn::If and Conditions ----

TEST(ProvisioningTemplateTest, SubSubstitutesParameters) {
  auto t = MustParse(WithThingName({{"Fn::Sub", "gw-${SerialNumber}-${!Literal}"}}));
  EXPECT_EQ(t.thing.thing_name.kind, TemplateValue::Kind::kJoin);
  json config = Example();
  config["Resources"]["thing"]["Properties"]["ThingName"] = {{"Fn::Sub", "${Model}_${SerialNumber}"}};
  config["DeviceConfiguration"]["literal"] = {{"Fn::Sub", "x ${!Model} $ {} ${AWS::IoT::Certificate::Id}"}};
  config["DeviceConfiguration"]["vars"] = {
      {"Fn::Sub", {"${site}/${SerialNumber}", {{"site", {{"Fn::Join", {"-", {"eu", {{"Ref", "Model"}}}}}}}}}}};
  config["DeviceConfiguration"]["plain"] = {{"Fn::Sub", "no variables"}};
  config["DeviceConfiguration"]["empty"] = {{"Fn::Sub", ""}};
  auto parsed = MustParse(config);
  auto r = ApplyTemplate(parsed, {{"SerialNumber", "42"}}, kCert);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->thing_name, "gw-100_42");
  EXPECT_EQ(r->device_configuration.at("literal"), "x ${Model} $ {} " + kCert.id);
  EXPECT_EQ(r->device_configuration.at("vars"), "eu-gw-100/42");
  EXPECT_EQ(r->device_configuration.at("plain"), "no variables");
  EXPECT_EQ(r->device_configuration.at("empty"), "");

  ExpectParseError(WithThingName({{"Fn::Sub", "gw-${Serial}"}}),
                   {"ThingName.Fn::Sub: Ref to unknown parameter 'Serial'"});
  ExpectParseError(WithThingName({{"Fn::Sub", "gw-${SerialNumber"}}), {"ThingName.Fn::Sub: unterminated '${'"});
  ExpectParseError(WithThingName({{"Fn::Sub", 3}}), {"Fn::Sub: expects a string or [string, {variable: value, ...}]"});
  ExpectParseError(WithThingName({{"Fn::Sub", {"${v}", {{"v", 1}}}}}), {"Fn::Sub[1].v: expected a string"});
  ExpectParseError(WithThingName({{"Fn::Sub", "${AWS::Region}"}}), {"unsupported pseudo parameter 'AWS::Region'"});
}

TEST(ProvisioningTemplateTest, SubVariableCopiesCountTowardsTheBudget) {
  json var = "x";
  for (int i = 0; i < 10; ++i) var = {{"Fn::Join", {"", {var, var}}}};  // 2047 nodes
  std::string text;
  for (int i = 0; i < 10; ++i) text += "${v}";
  ExpectParseError(WithThingName({{"Fn::Sub", {text, {{"v", var}}}}}), {"too complex"});
}

TEST(ProvisioningTemplateTest, ConditionsAndIf) {
  json t = Example();
  t["Parameters"]["Env"] = {{"Type", "String"}, {"Default", "prod"}, {"AllowedValues", {"prod", "lab", "dev"}}};
  t["Conditions"] = {
      {"IsProd", {{"Fn::Equals", {{{"Ref", "Env"}}, "prod"}}}},
      {"NotProd", {{"Fn::Not", {{{"Fn::Equals", {{{"Ref", "Env"}}, "prod"}}}}}}},
      {"LabOrDev", {{"Fn::Or", {{{"Fn::Equals", {{{"Ref", "Env"}}, "lab"}}}, {{"Fn::Equals", {"dev", {{"Ref", "Env"}}}}}}}}},
      {"ProdGw100",
       {{"Fn::And", {{{"Fn::Equals", {{{"Ref", "Env"}}, "prod"}}}, {{"Fn::Equals", {{{"Ref", "Model"}}, "gw-100"}}}}}}},
  };
  t["Resources"]["thing"]["Properties"]["ThingTypeName"] = {{"Fn::If", {"IsProd", "gateway", "test-gateway"}}};
  t["Resources"]["policy"]["Condition"] = "NotProd";
  t["Resources"]["certificate"]["Properties"]["Status"] = {{"Fn::If", {"LabOrDev", "INACTIVE", "ACTIVE"}}};
  t["DeviceConfiguration"]["tier"] = {{"Fn::If", {"ProdGw100", "gold", {{"Fn::Sub", "std-${Env}"}}}}};
  auto parsed = MustParse(t);

  auto prod = ApplyTemplate(parsed, {{"SerialNumber", "1"}}, kCert);
  ASSERT_TRUE(prod) << prod.error().ToString();
  EXPECT_EQ(prod->thing_type, "gateway");
  EXPECT_EQ(prod->policy_name, "");  // the policy's condition is false
  EXPECT_EQ(prod->certificate_status, "ACTIVE");
  EXPECT_EQ(prod->device_configuration.at("tier"), "gold");

  auto lab = ApplyTemplate(parsed, {{"SerialNumber", "1"}, {"Env", "lab"}}, kCert);
  ASSERT_TRUE(lab) << lab.error().ToString();
  EXPECT_EQ(lab->thing_type, "test-gateway");
  EXPECT_EQ(lab->policy_name, "gateway-policy");
  EXPECT_EQ(lab->certificate_status, "INACTIVE");
  EXPECT_EQ(lab->device_configuration.at("tier"), "std-lab");

  auto other_model = ApplyTemplate(parsed, {{"SerialNumber", "1"}, {"Model", "gw-200"}}, kCert);
  ASSERT_TRUE(other_model) << other_model.error().ToString();
  EXPECT_EQ(other_model->device_configuration.at("tier"), "std-prod");
}

TEST(ProvisioningTemplateTest, RefusesBadConditions) {
  json base = Example();
  base["Conditions"]["C"] = {{"Fn::Equals", {"a", "a"}}};

  json unknown_if = base;
  unknown_if["Resources"]["thing"]["Properties"]["ThingTypeName"] = {{"Fn::If", {"Nope", "a", "b"}}};
  ExpectParseError(unknown_if, {"ThingTypeName.Fn::If: unknown condition 'Nope'"});
  json bad_if = base;
  bad_if["Resources"]["thing"]["Properties"]["ThingTypeName"] = {{"Fn::If", {"C", "a"}}};
  ExpectParseError(bad_if, {"Fn::If: expects [condition, value if true, value if false]"});

  json ref = base;
  ref["Conditions"]["D"] = {{"Condition", "C"}};
  ExpectParseError(ref, {"Conditions.D: unsupported: a condition cannot refer to another condition"});
  json fn = base;
  fn["Conditions"]["D"] = {{"Fn::Contains", {"a", "b"}}};
  ExpectParseError(fn, {"Conditions.D: unsupported condition function 'Fn::Contains'"});
  json args = base;
  args["Conditions"]["D"] = {{"Fn::Equals", {"a"}}};
  ExpectParseError(args, {"Conditions.D.Fn::Equals: expects an array of 2 arguments"});
  json and_args = base;
  and_args["Conditions"]["D"] = {{"Fn::And", {{{"Fn::Equals", {"a", "a"}}}}}};
  ExpectParseError(and_args, {"Conditions.D.Fn::And: expects an array of 2 to 10 arguments"});
  json if_inside = base;
  if_inside["Conditions"]["D"] = {{"Fn::Equals", {{{"Fn::If", {"C", "a", "b"}}}, "a"}}};
  ExpectParseError(if_inside, {"unsupported: Fn::If inside a condition"});
  json param = base;
  param["Conditions"]["D"] = {{"Fn::Equals", {{{"Ref", "Nope"}}, "a"}}};
  ExpectParseError(param, {"Conditions.D.Fn::Equals[0]: Ref to unknown parameter 'Nope'"});

  json thing_condition = base;
  thing_condition["Resources"]["thing"]["Condition"] = "C";
  ExpectParseError(thing_condition, {"Resources.thing.Condition: unsupported: the AWS::IoT::Thing resource cannot be conditional"});
  json unknown_condition = base;
  unknown_condition["Resources"]["policy"]["Condition"] = "Nope";
  ExpectParseError(unknown_condition, {"Resources.policy.Condition: unknown condition 'Nope'"});
}

// ---- Claim subjects ----

TEST(ProvisioningTemplateTest, GlobMatching) {
  EXPECT_TRUE(GlobMatch("claim-batch-*", "claim-batch-7"));
  EXPECT_TRUE(GlobMatch("claim-batch-*", "claim-batch-"));
  EXPECT_FALSE(GlobMatch("claim-batch-*", "claim-batch"));
  EXPECT_FALSE(GlobMatch("claim-batch-*", "xclaim-batch-7"));
  EXPECT_FALSE(GlobMatch("claim-batch-*", "Claim-batch-7"));
  EXPECT_TRUE(GlobMatch("*", ""));
  EXPECT_TRUE(GlobMatch("*", "anything at all"));
  EXPECT_TRUE(GlobMatch("", ""));
  EXPECT_FALSE(GlobMatch("", "a"));
  EXPECT_TRUE(GlobMatch("exact", "exact"));
  EXPECT_FALSE(GlobMatch("exact", "exactly"));
  EXPECT_TRUE(GlobMatch("*-lab", "gw-lab"));
  EXPECT_FALSE(GlobMatch("*-lab", "gw-lab2"));
  EXPECT_TRUE(GlobMatch("a*b*c", "aXXbYYbZc"));
  EXPECT_FALSE(GlobMatch("a*b*c", "aXXbYYbZ"));
  EXPECT_TRUE(GlobMatch("**a**", "bab"));
  EXPECT_FALSE(GlobMatch("factory-?", "factory-1"));  // only '*' is special
  EXPECT_TRUE(GlobMatch("factory-?", "factory-?"));
  // Worst case stays polynomial.
  EXPECT_FALSE(GlobMatch("*a*a*a*a*a*a*a*a*b", std::string(5000, 'a')));
}

TEST(ProvisioningTemplateTest, ClaimSubjectAllowed) {
  auto any = MustParse(Example());
  EXPECT_TRUE(ClaimSubjectAllowed(any, "whoever"));
  EXPECT_TRUE(ClaimSubjectAllowed(any, ""));

  json ext = Example();
  ext["certfleet"] = {{"claimSubjects", {"claim-batch-*", "factory-line-2"}}};
  auto listed = MustParse(ext);
  EXPECT_TRUE(ClaimSubjectAllowed(listed, "claim-batch-7"));
  EXPECT_TRUE(ClaimSubjectAllowed(listed, "factory-line-2"));
  EXPECT_FALSE(ClaimSubjectAllowed(listed, "factory-line-3"));
  EXPECT_FALSE(ClaimSubjectAllowed(listed, "gw-123"));
  EXPECT_FALSE(ClaimSubjectAllowed(listed, ""));
}

// ---- Concurrency: one template, many requests ----

TEST(ProvisioningTemplateTest, ApplyRunsConcurrentlyOnOneTemplate) {
  json t = Example();
  t["Parameters"]["SerialNumber"]["AllowedPattern"] = "[0-9]+";
  const auto parsed = MustParse(t);
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int n = 0; n < 4; ++n) {
    threads.emplace_back([&, n] {
      for (int i = 0; i < 200; ++i) {
        auto r = ApplyTemplate(parsed, {{"SerialNumber", std::to_string(n * 1000 + i)}}, kCert);
        if (!r || r->thing_name != "gw-" + std::to_string(n * 1000 + i)) ++failures[n];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, (std::vector<int>{0, 0, 0, 0}));
}

}  // namespace
}  // namespace certfleet::companion
