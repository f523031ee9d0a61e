#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "companion/config.h"
#include "companion/hook_set.h"
#include "shared/core/filesystem.h"

namespace certfleet::companion {
namespace {

using shared::Code;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

const std::string kSource = "/etc/certfleet/companion.toml";

shared::Result<CompanionConfig> Parse(const std::string& text) { return ParseCompanionConfig(text, kSource); }

// A minimal valid file with `rest` appended.
std::string WithStateDir(const std::string& rest) { return "state_dir = \"/var/lib/cf\"\n" + rest; }

// Expects `text` to be refused with kInvalidArgument and a message containing every
// one of `needles`.
void ExpectError(const std::string& text, const std::vector<std::string>& needles) {
  auto cfg = Parse(text);
  ASSERT_FALSE(cfg) << "accepted:\n" << text;
  EXPECT_EQ(cfg.error().code(), Code::kInvalidArgument) << cfg.error().ToString();
  for (const auto& n : needles) {
    EXPECT_NE(cfg.error().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << cfg.error().message() << "\nfor:\n" << text;
  }
}

TEST(CompanionConfigTest, DefaultTextParsesToTheDocumentedDefaults) {
  std::string text = DefaultCompanionConfigText("/var/lib/certfleet-companion", "0.0.0.0:8443");
  auto cfg = Parse(text);
  ASSERT_TRUE(cfg) << cfg.error().ToString() << "\n" << text;
  EXPECT_EQ(cfg->state_dir, "/var/lib/certfleet-companion");
  EXPECT_EQ(cfg->log_level, "info");
  EXPECT_EQ(cfg->est.listen, "0.0.0.0:8443");
  EXPECT_TRUE(cfg->est.labels.empty());
  EXPECT_TRUE(cfg->est.bootstrap_trust_file.empty());
  EXPECT_EQ(cfg->est.max_body_bytes, 16384);
  EXPECT_EQ(cfg->est.threads, 8);
  EXPECT_EQ(cfg->est.superseded_grace, hours(24 * 7));
  EXPECT_FALSE(cfg->est.reenroll_require_new_key);
  EXPECT_EQ(cfg->est.tls_key_slot, "est-tls");
  EXPECT_EQ(cfg->ca.issuing_key_slot, "issuing-ca");
  EXPECT_EQ(cfg->profile.validity, hours(24 * 90));
  EXPECT_EQ(cfg->profile.backdate, minutes(5));
  EXPECT_EQ(cfg->profile.key_types, (std::vector<std::string>{"ec-p256", "ec-p384", "rsa-2048", "rsa-3072"}));
  EXPECT_FALSE(cfg->profile.allow_csr_sans);
  EXPECT_EQ(cfg->tokens.default_ttl, hours(24));
  EXPECT_EQ(cfg->tokens.max_ttl, hours(24 * 30));
  EXPECT_EQ(cfg->keystore.backend, "file");
}

TEST(CompanionConfigTest, DefaultTextQuotesAwkwardStateDirs) {
  const std::string dir = "/srv/cert \"fleet\"\\state\tdir";
  auto cfg = Parse(DefaultCompanionConfigText(dir, "[::1]:9443"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->state_dir, dir);
  EXPECT_EQ(cfg->est.listen, "[::1]:9443");
  EXPECT_EQ(cfg->registry_path, dir + "/registry.sqlite3");
}

TEST(CompanionConfigTest, PathsDeriveFromStateDir) {
  auto cfg = Parse("state_dir = \"/var/lib/cf\"\n");
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->est.tls_cert_file, "/var/lib/cf/tls/est-server.pem");
  EXPECT_EQ(cfg->ca.root_cert_file, "/var/lib/cf/ca/root.pem");
  EXPECT_EQ(cfg->ca.issuing_cert_file, "/var/lib/cf/ca/issuing.pem");
  EXPECT_EQ(cfg->keystore.dir, "/var/lib/cf/keys");
  EXPECT_EQ(cfg->registry_path, "/var/lib/cf/registry.sqlite3");

  // A trailing slash does not double up.
  auto slash = Parse("state_dir = \"/var/lib/cf/\"\n");
  ASSERT_TRUE(slash) << slash.error().ToString();
  EXPECT_EQ(slash->registry_path, "/var/lib/cf/registry.sqlite3");
}

TEST(CompanionConfigTest, CaKeyInAPkcs11Token) {
  auto cfg = Parse(WithStateDir(
      "[keystore]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=fleet-ca\"\n"
      "module = \"/usr/lib/softhsm/libsofthsm2.so\"\npin_file = \"/etc/cf/hsm-pin\"\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->keystore.backend, "pkcs11");
  EXPECT_EQ(cfg->keystore.uri, "pkcs11:token=fleet-ca");
  EXPECT_EQ(cfg->keystore.module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(cfg->keystore.pin_file, "/etc/cf/hsm-pin");
  EXPECT_FALSE(Parse(WithStateDir("[keystore]\nuri = \"http://x\"\n")));
  EXPECT_FALSE(Parse(WithStateDir("[keystore]\npin_file = \"relative\"\n")));
}

TEST(CompanionConfigTest, ExplicitPathsWinOverDerivedOnes) {
  auto cfg = Parse(WithStateDir(
      "[est]\ntls_cert_file = \"/etc/cf/tls.pem\"\nbootstrap_trust_file = \"/etc/cf/claim.pem\"\n"
      "[ca]\nroot_cert_file = \"/etc/cf/root.pem\"\nissuing_cert_file = \"/etc/cf/issuing.pem\"\n"
      "[keystore]\nbackend = \"memory\"\ndir = \"/etc/cf/keys\"\n"
      "[registry]\npath = \"/data/registry.db\"\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->est.tls_cert_file, "/etc/cf/tls.pem");
  EXPECT_EQ(cfg->est.bootstrap_trust_file, "/etc/cf/claim.pem");
  EXPECT_EQ(cfg->ca.root_cert_file, "/etc/cf/root.pem");
  EXPECT_EQ(cfg->ca.issuing_cert_file, "/etc/cf/issuing.pem");
  EXPECT_EQ(cfg->keystore.backend, "memory");
  EXPECT_EQ(cfg->keystore.dir, "/etc/cf/keys");
  EXPECT_EQ(cfg->registry_path, "/data/registry.db");
}

TEST(CompanionConfigTest, EveryKeyCanBeSet) {
  auto cfg = Parse(
      "state_dir = \"/s\"\nlog_level = \"debug\"\n"
      "[est]\nlisten = \"[::]:443\"\nlabels = [\"prod\", \"ca-2_v1.0\"]\ntls_key_slot = \"tls.key\"\n"
      "max_body_bytes = 1024\nthreads = 256\nsuperseded_grace = \"0s\"\nreenroll_require_new_key = true\n"
      "[ca]\nissuing_key_slot = \"ca-2\"\n"
      "[profile]\nvalidity = \"1h\"\nbackdate = \"1d\"\nkey_types = [\"ec-p384\"]\nallow_csr_sans = true\n"
      "[tokens]\ndefault_ttl = \"1m\"\nmax_ttl = \"365d\"\n");
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->log_level, "debug");
  EXPECT_EQ(cfg->est.listen, "[::]:443");
  EXPECT_EQ(cfg->est.labels, (std::vector<std::string>{"prod", "ca-2_v1.0"}));
  EXPECT_EQ(cfg->est.tls_key_slot, "tls.key");
  EXPECT_EQ(cfg->est.max_body_bytes, 1024);
  EXPECT_EQ(cfg->est.threads, 256);
  EXPECT_EQ(cfg->est.superseded_grace, seconds(0));
  EXPECT_TRUE(cfg->est.reenroll_require_new_key);
  EXPECT_EQ(cfg->ca.issuing_key_slot, "ca-2");
  EXPECT_EQ(cfg->profile.validity, hours(1));
  EXPECT_EQ(cfg->profile.backdate, hours(24));
  EXPECT_EQ(cfg->profile.key_types, std::vector<std::string>{"ec-p384"});
  EXPECT_TRUE(cfg->profile.allow_csr_sans);
  EXPECT_EQ(cfg->tokens.default_ttl, minutes(1));
  EXPECT_EQ(cfg->tokens.max_ttl, hours(24 * 365));
}

TEST(CompanionConfigTest, ClaimRulesAreAnArrayOfTables) {
  const std::string fp(64, 'e');
  auto cfg = Parse(WithStateDir("[[claims]]\nname = \"factory-a\"\nca_file = \"/etc/certfleet/a.pem\"\n"
                                "templates = [\"gateway\"]\n\n[[claims]]\nname = \"pinned\"\n"
                                "fingerprints = [\"" + fp + "\"]\ntemplates = [\"*\"]\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  ASSERT_EQ(cfg->claims.size(), 2u);
  EXPECT_EQ(cfg->claims[0].name, "factory-a");
  EXPECT_EQ(cfg->claims[0].ca_file, "/etc/certfleet/a.pem");
  EXPECT_TRUE(cfg->claims[0].fingerprints.empty());
  EXPECT_EQ(cfg->claims[0].templates, std::vector<std::string>{"gateway"});
  EXPECT_EQ(cfg->claims[1].fingerprints, std::vector<std::string>{fp});
  EXPECT_EQ(cfg->claims[1].templates, std::vector<std::string>{"*"});
  auto none = Parse(WithStateDir(""));
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->claims.empty());
}

TEST(CompanionConfigTest, BadClaimRulesAreRefused) {
  const std::string fp(64, 'e');
  ExpectError(WithStateDir("claims = 1\n"), {"claims", "array of tables"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\ntemplates = [\"*\"]\n"), {"ca_file, fingerprints"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\nca_file = \"/a.pem\"\n"), {"templates is required"});
  ExpectError(WithStateDir("[[claims]]\nca_file = \"/a.pem\"\ntemplates = [\"*\"]\n"), {"name is required"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\nca_file = \"a.pem\"\ntemplates = [\"*\"]\n"),
              {"ca_file", "absolute path", "line 4"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\nfingerprints = [\"AB\"]\ntemplates = [\"*\"]\n"),
              {"fingerprints", "64 lowercase hex"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\nca_file = \"/a.pem\"\ntemplates = [\"a/b\"]\n"),
              {"bad template"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\nca_file = \"/a.pem\"\ntemplates = [\"*\"]\ncafile = \"/b\"\n"),
              {"unknown key 'cafile'"});
  ExpectError(WithStateDir("[[claims]]\nname = \"a\"\nca_file = \"/a.pem\"\ntemplates = [\"*\"]\n"
                           "[[claims]]\nname = \"a\"\nfingerprints = [\"" + fp + "\"]\ntemplates = [\"*\"]\n"),
              {"duplicate claim name 'a'"});
}

TEST(CompanionConfigTest, UnknownKeyNamesFileAndLine) {
  ExpectError("state_dir = \"/s\"\n\n[est]\nlisten = \"127.0.0.1:1\"\nlistne = \"127.0.0.1:2\"\n",
              {kSource + ":5:", "unknown key 'est.listne'"});
  ExpectError("# comment\nstate_dir = \"/s\"\nstatedir = \"/t\"\n", {kSource + ":3:", "unknown key 'statedir'"});
  ExpectError(WithStateDir("[nosuchsection]\nx = 1\n"), {kSource + ":3:", "nosuchsection.x"});
}

TEST(CompanionConfigTest, TomlSyntaxErrorNamesFileAndLine) {
  ExpectError("state_dir = \"/s\"\n[est\nlisten = 1\n", {kSource + ":2:"});
  ExpectError("state_dir = \"/s\nlog_level = \"info\"\n", {kSource + ":1:"});
  // A duplicated key is a TOML error too.
  ExpectError("state_dir = \"/s\"\nstate_dir = \"/t\"\n", {kSource + ":2:"});
}

TEST(CompanionConfigTest, WrongTypesAreRefused) {
  ExpectError("state_dir = 5\n", {kSource + ":1:", "state_dir", "expected a string, got integer"});
  ExpectError(WithStateDir("[est]\nmax_body_bytes = \"big\"\n"),
              {kSource + ":3:", "est.max_body_bytes", "expected an integer, got string"});
  ExpectError(WithStateDir("[est]\nthreads = 2.5\n"), {"est.threads", "expected an integer, got float"});
  ExpectError(WithStateDir("[profile]\nallow_csr_sans = \"yes\"\n"),
              {"profile.allow_csr_sans", "expected true or false"});
  ExpectError(WithStateDir("[est]\nreenroll_require_new_key = 1\n"), {"expected true or false"});
  ExpectError(WithStateDir("[est]\nlabels = \"prod\"\n"), {"est.labels", "expected an array of strings"});
  ExpectError(WithStateDir("[profile]\nkey_types = [\"ec-p256\", 1]\n"),
              {"profile.key_types", "expected an array of strings"});
  ExpectError(WithStateDir("[profile]\nvalidity = 90\n"), {"profile.validity", "expected a string"});
  ExpectError(WithStateDir("[est]\nsuperseded_grace = true\n"), {"est.superseded_grace"});
  ExpectError(WithStateDir("est = 1\n"), {"unknown key 'est'"});
}

TEST(CompanionConfigTest, ListenAddressIsChecked) {
  for (const char* bad : {"localhost", "127.0.0.1", "127.0.0.1:", ":8443", "127.0.0.1:99999", "127.0.0.1:http",
                          "127.0.0.1:-1", "127.0.0.1:123456", ""}) {
    SCOPED_TRACE(bad);
    ExpectError(WithStateDir(std::string("[est]\nlisten = \"") + bad + "\"\n"), {kSource + ":3:", "est.listen"});
  }
  for (const char* good : {"127.0.0.1:8443", "0.0.0.0:1", "[::1]:65535", "est.example.com:443"}) {
    auto cfg = Parse(WithStateDir(std::string("[est]\nlisten = \"") + good + "\"\n"));
    ASSERT_TRUE(cfg) << good << ": " << cfg.error().ToString();
    EXPECT_EQ(cfg->est.listen, good);
  }
}

TEST(CompanionConfigTest, KeyTypesAreChecked) {
  ExpectError(WithStateDir("[profile]\nkey_types = [\"ec-p256\", \"rsa-1024\"]\n"),
              {kSource + ":3:", "profile.key_types", "rsa-1024"});
  ExpectError(WithStateDir("[profile]\nkey_types = [\"EC-P256\"]\n"), {"profile.key_types"});
  ExpectError(WithStateDir("[profile]\nkey_types = []\n"), {"profile.key_types is empty"});
  for (const char* t : {"ec-p256", "ec-p384", "rsa-2048", "rsa-3072"}) {
    auto cfg = Parse(WithStateDir(std::string("[profile]\nkey_types = [\"") + t + "\"]\n"));
    ASSERT_TRUE(cfg) << t << ": " << cfg.error().ToString();
  }
}

TEST(CompanionConfigTest, EstLabelsAreChecked) {
  for (const char* op : {"cacerts", "simpleenroll", "simplereenroll", "csrattrs", "serverkeygen"}) {
    SCOPED_TRACE(op);
    ExpectError(WithStateDir(std::string("[est]\nlabels = [\"ok\", \"") + op + "\"]\n"),
                {"est.labels", "clashes with an operation name"});
  }
  const std::string too_long(65, 'a');
  for (const std::string& bad : {std::string("a/b"), std::string(""), std::string("a b"), std::string("ä"),
                                 std::string("../x"), too_long}) {
    SCOPED_TRACE(bad);
    ExpectError(WithStateDir("[est]\nlabels = [\"" + bad + "\"]\n"), {"est.labels", "bad EST label"});
  }
  auto cfg = Parse(WithStateDir("[est]\nlabels = [\"" + std::string(64, 'a') + "\", \"A.b-c_9\"]\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->est.labels.size(), 2u);
}

TEST(CompanionConfigTest, RelativePathsAreRefused) {
  ExpectError("state_dir = \"var/lib/cf\"\n", {kSource + ":1:", "expected an absolute path"});
  ExpectError("state_dir = \"\"\n", {"expected an absolute path"});
  ExpectError(WithStateDir("[registry]\npath = \"registry.sqlite3\"\n"), {"registry.path", "absolute path"});
  ExpectError(WithStateDir("[ca]\nroot_cert_file = \"./root.pem\"\n"), {"ca.root_cert_file", "absolute path"});
  ExpectError(WithStateDir("[ca]\nissuing_cert_file = \"ca/issuing.pem\"\n"), {"ca.issuing_cert_file"});
  ExpectError(WithStateDir("[est]\ntls_cert_file = \"tls.pem\"\n"), {"est.tls_cert_file"});
  ExpectError(WithStateDir("[est]\nbootstrap_trust_file = \"claim.pem\"\n"), {"est.bootstrap_trust_file"});
  ExpectError(WithStateDir("[keystore]\ndir = \"keys\"\n"), {"keystore.dir"});
  // An empty bootstrap trust file means "none".
  auto cfg = Parse(WithStateDir("[est]\nbootstrap_trust_file = \"\"\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_TRUE(cfg->est.bootstrap_trust_file.empty());
}

TEST(CompanionConfigTest, TokenTtlsAreChecked) {
  ExpectError(WithStateDir("[tokens]\ndefault_ttl = \"31d\"\nmax_ttl = \"30d\"\n"),
              {kSource, "tokens.default_ttl exceeds tokens.max_ttl"});
  // The default max_ttl (30d) applies when only default_ttl is set.
  ExpectError(WithStateDir("[tokens]\ndefault_ttl = \"40d\"\n"), {"exceeds"});
  auto equal = Parse(WithStateDir("[tokens]\ndefault_ttl = \"2h\"\nmax_ttl = \"2h\"\n"));
  ASSERT_TRUE(equal) << equal.error().ToString();
  EXPECT_EQ(equal->tokens.default_ttl, hours(2));
  ExpectError(WithStateDir("[tokens]\ndefault_ttl = \"30s\"\n"), {"tokens.default_ttl", "out of range"});
}

TEST(CompanionConfigTest, RangesAreChecked) {
  ExpectError(WithStateDir("[est]\nmax_body_bytes = 1023\n"), {"est.max_body_bytes", "out of range"});
  ExpectError(WithStateDir("[est]\nmax_body_bytes = 1048577\n"), {"est.max_body_bytes", "out of range"});
  ExpectError(WithStateDir("[est]\nthreads = 0\n"), {"est.threads", "out of range"});
  ExpectError(WithStateDir("[est]\nsuperseded_grace = \"366d\"\n"), {"est.superseded_grace", "out of range"});
  ExpectError(WithStateDir("[profile]\nvalidity = \"59m\"\n"), {"profile.validity", "out of range"});
  ExpectError(WithStateDir("[profile]\nbackdate = \"25h\"\n"), {"profile.backdate", "out of range"});
  ExpectError(WithStateDir("[profile]\nvalidity = \"90 days\"\n"), {"profile.validity"});
  ExpectError(WithStateDir("[profile]\nvalidity = \"-1h\"\n"), {"profile.validity"});
}

TEST(CompanionConfigTest, OtherValuesAreChecked) {
  ExpectError(WithStateDir("log_level = \"verbose\"\n"), {"log_level"});
  ExpectError(WithStateDir("[est]\ntls_key_slot = \"../etc/shadow\"\n"), {"est.tls_key_slot", "slot"});
  ExpectError(WithStateDir("[ca]\nissuing_key_slot = \"\"\n"), {"ca.issuing_key_slot"});
}

TEST(CompanionConfigTest, EmptyFileNeedsStateDir) {
  ExpectError("", {kSource, "state_dir is required"});
  ExpectError("# only a comment\n\n", {"state_dir is required"});
  ExpectError("[est]\nlisten = \"127.0.0.1:8443\"\n", {"state_dir is required"});
}

TEST(CompanionConfigTest, LoadReadsThroughTheFilesystem) {
  shared::MemFilesystem fs;
  ASSERT_TRUE(fs.MakeDirs("/etc/certfleet", 0755).ok());
  ASSERT_TRUE(fs.WriteFileAtomic(kSource, DefaultCompanionConfigText("/var/lib/cf", "127.0.0.1:8443"), 0640).ok());
  auto cfg = LoadCompanionConfig(kSource, fs);
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->state_dir, "/var/lib/cf");

  ASSERT_TRUE(fs.WriteFileAtomic("/etc/certfleet/bad.toml", "state_dir = \"/s\"\nbogus = 1\n", 0640).ok());
  auto bad = LoadCompanionConfig("/etc/certfleet/bad.toml", fs);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("/etc/certfleet/bad.toml:2:"), std::string::npos) << bad.error().message();

  auto missing = LoadCompanionConfig("/etc/certfleet/missing.toml", fs);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Code::kNotFound) << missing.error().ToString();
}

// ---- [hooks.*] ----

TEST(CompanionConfigTest, NoHooksByDefault) {
  auto cfg = Parse(DefaultCompanionConfigText("/var/lib/cf", "127.0.0.1:8443"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  for (const HookTable& t : kHookTables) EXPECT_FALSE(cfg->hooks.*t.member) << t.table;
}

TEST(CompanionConfigTest, EveryHookTableIsReadWithItsKeys) {
  std::string text = WithStateDir("");
  for (const HookTable& t : kHookTables) {
    text += "[hooks." + std::string(t.table) + "]\ncommand = [\"/usr/lib/certfleet/hooks/" + std::string(t.table) +
            "\", \"--flag\", \"a b\"]\n";
  }
  auto cfg = Parse(text);
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  for (const HookTable& t : kHookTables) {
    const auto& hook = cfg->hooks.*t.member;
    ASSERT_TRUE(hook) << t.table;
    EXPECT_EQ(hook->command, (std::vector<std::string>{"/usr/lib/certfleet/hooks/" + std::string(t.table), "--flag", "a b"}));
    EXPECT_EQ(hook->timeout, std::chrono::milliseconds(5000)) << "default 5 s";
    EXPECT_EQ(hook->max_output_bytes, 64 * 1024);
    EXPECT_TRUE(hook->url.empty());
  }
}

TEST(CompanionConfigTest, WebhookTableWithEveryKey) {
  auto cfg = Parse(WithStateDir(
      "[hooks.pre_enroll]\nurl = \"https://policy.example/enroll\"\nsecret_file = \"/etc/certfleet/hook.secret\"\n"
      "trust_anchor_file = \"/etc/certfleet/policy-ca.pem\"\ntimeout = \"2m\"\nmax_output_bytes = 2\n"
      "[hooks.post_reenroll]\nurl = \"http://127.0.0.1:9000/x\"\nsecret_file = \"/s/k\"\nallow_insecure_loopback = true\n"
      "timeout = \"1s\"\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  ASSERT_TRUE(cfg->hooks.pre_enroll);
  EXPECT_EQ(cfg->hooks.pre_enroll->url, "https://policy.example/enroll");
  EXPECT_EQ(cfg->hooks.pre_enroll->secret_file, "/etc/certfleet/hook.secret");
  EXPECT_EQ(cfg->hooks.pre_enroll->trust_anchor_file, "/etc/certfleet/policy-ca.pem");
  EXPECT_EQ(cfg->hooks.pre_enroll->timeout, std::chrono::milliseconds(120000));
  EXPECT_EQ(cfg->hooks.pre_enroll->max_output_bytes, 2);
  EXPECT_FALSE(cfg->hooks.pre_enroll->allow_insecure_loopback);
  ASSERT_TRUE(cfg->hooks.post_reenroll);
  EXPECT_TRUE(cfg->hooks.post_reenroll->allow_insecure_loopback);
  EXPECT_EQ(cfg->hooks.post_reenroll->timeout, std::chrono::milliseconds(1000));
  EXPECT_FALSE(cfg->hooks.post_enroll);
}

TEST(CompanionConfigTest, BadHookTablesAreRefusedNamingTheTable) {
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\nurl = \"https://x.example/\"\n"
                           "secret_file = \"/s\"\n"),
              {kSource, "[hooks.pre_enroll]", "not both"});
  ExpectError(WithStateDir("[hooks.post_enroll]\ntimeout = \"3s\"\n"), {"[hooks.post_enroll]", "command or url"});
  ExpectError(WithStateDir("[hooks.pre_reenroll]\ncommand = []\n"), {"[hooks.pre_reenroll]", "command or url"});
  ExpectError(WithStateDir("[hooks.pre_provision]\ncommand = [\"hooks/allow\"]\n"),
              {"[hooks.pre_provision]", "absolute path", "hooks/allow"});
  ExpectError(WithStateDir("[hooks.post_reenroll]\nurl = \"https://x.example/\"\n"),
              {"[hooks.post_reenroll]", "secret_file"});
  ExpectError(WithStateDir("[hooks.post_provision]\nurl = \"http://x.example/\"\nsecret_file = \"/s\"\n"),
              {"[hooks.post_provision]"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\nsecret_file = \"/s\"\n"),
              {"[hooks.pre_enroll]", "webhooks only"});
  // Keys checked as they are read name the key and the line.
  ExpectError(WithStateDir("[hooks.pre_enroll]\nurl = \"https://x.example/\"\nsecret_file = \"s\"\n"),
              {kSource + ":4:", "hooks.pre_enroll.secret_file"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\ntimeout = \"5 s\"\n"),
              {"hooks.pre_enroll.timeout"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\ntimeout = \"0s\"\n"),
              {"hooks.pre_enroll.timeout", "out of range"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\ntimeout = \"11m\"\n"),
              {"hooks.pre_enroll.timeout", "out of range"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\ntimeout = 5\n"),
              {"hooks.pre_enroll.timeout"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\nmax_output_bytes = 1\n"),
              {"hooks.pre_enroll.max_output_bytes"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = \"/bin/true\"\n"), {"hooks.pre_enroll.command"});
  ExpectError(WithStateDir("[hooks.pre_enroll]\ncommand = [\"/bin/true\"]\nshell = true\n"),
              {"unknown key 'hooks.pre_enroll.shell'"});
  ExpectError(WithStateDir("[hooks.on_revoke]\ncommand = [\"/bin/true\"]\n"), {"unknown key 'hooks.on_revoke.command'"});
  // The old provisioning keys are gone.
  ExpectError(WithStateDir("[provisioning]\npre_provision_hook = [\"/bin/true\"]\n"), {"unknown key"});
  ExpectError(WithStateDir("[provisioning]\nhook_timeout = \"5s\"\n"), {"unknown key"});
}

TEST(CompanionConfigTest, HookFilesAreCheckedAtStartupNamingTheTable) {
  auto cfg = Parse(WithStateDir("[hooks.pre_reenroll]\ncommand = [\"/nonexistent/certfleet-hook\"]\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  auto set = BuildHookSet(cfg->hooks);
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().code(), Code::kNotFound) << set.error().ToString();
  EXPECT_NE(set.error().message().find("[hooks.pre_reenroll]"), std::string::npos) << set.error().message();

  auto none = BuildHookSet(HooksConfig{});
  ASSERT_TRUE(none) << none.error().ToString();
  EXPECT_FALSE(none->pre_enroll);
}

TEST(CompanionConfigTest, RotationAndBrokerKeys) {
  auto defaults = Parse(WithStateDir(""));
  ASSERT_TRUE(defaults) << defaults.error().ToString();
  EXPECT_EQ(defaults->rotation.grace, std::chrono::hours(24));
  EXPECT_EQ(defaults->rotation.revoke_after, std::chrono::seconds(0));
  EXPECT_EQ(defaults->rotation.default_deadline, std::chrono::hours(24 * 7));
  EXPECT_EQ(defaults->rotation.sweep_interval, std::chrono::seconds(60));
  EXPECT_TRUE(defaults->broker.crl_file.empty());
  EXPECT_TRUE(defaults->broker.reload_command.empty());
  EXPECT_EQ(defaults->broker.crl_validity, std::chrono::hours(24 * 30));

  auto cfg = Parse(WithStateDir(
      "[rotation]\ngrace = \"2s\"\nrevoke_after = \"1h\"\ndefault_deadline = \"30d\"\nsweep_interval = \"1s\"\n"
      "[broker]\ncrl_file = \"/etc/mosquitto/certfleet/crl.pem\"\n"
      "reload_command = [\"/usr/bin/systemctl\", \"reload\", \"mosquitto\"]\n"
      "pid_file = \"/run/mosquitto/mosquitto.pid\"\nreload_timeout = \"5s\"\ncrl_validity = \"7d\"\n"));
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->rotation.grace, std::chrono::seconds(2));
  EXPECT_EQ(cfg->rotation.revoke_after, std::chrono::hours(1));
  EXPECT_EQ(cfg->rotation.default_deadline, std::chrono::hours(24 * 30));
  EXPECT_EQ(cfg->rotation.sweep_interval, std::chrono::seconds(1));
  EXPECT_EQ(cfg->broker.crl_file, "/etc/mosquitto/certfleet/crl.pem");
  EXPECT_EQ(cfg->broker.reload_command, (std::vector<std::string>{"/usr/bin/systemctl", "reload", "mosquitto"}));
  EXPECT_EQ(cfg->broker.pid_file, "/run/mosquitto/mosquitto.pid");
  EXPECT_EQ(cfg->broker.reload_timeout, std::chrono::seconds(5));
  EXPECT_EQ(cfg->broker.crl_validity, std::chrono::hours(24 * 7));

  ExpectError(WithStateDir("[rotation]\nsweep_interval = \"0s\"\n"), {"rotation.sweep_interval", "out of range"});
  ExpectError(WithStateDir("[broker]\ncrl_file = \"crl.pem\"\n"), {"broker.crl_file"});
  ExpectError(WithStateDir("[broker]\nreload_command = [\"systemctl\", \"reload\"]\n"), {"broker.reload_command"});
}

}  // namespace
}  // namespace certfleet::companion
