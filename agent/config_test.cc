#include "agent/config.h"

#include <gtest/gtest.h>

#include <string>

namespace certfleet::agent {
namespace {

using shared::Code;

const char kSource[] = "/etc/certfleet/agent.toml";

const char kGood[] = R"(log_level = "debug"

[est]
server = "https://est.fleet.example:8443/gateways"
trust_anchor_file = "/etc/certfleet/est-ca.pem"
user = "gw-0001"
password_file = "/etc/certfleet/est-password"
client_cert_file = "/etc/certfleet/claim.pem"
client_key_slot = "claim"
tls12_only = true

[identity]
common_name = "gw-0001"
key_type = "ec-p384"
key_slot = "identity-b"
cert_file = "/var/lib/certfleet-agent/identity.pem"

[keystore]
backend = "file"
dir = "/var/lib/certfleet-agent/keys"
)";

TEST(AgentConfigTest, ParsesEveryKey) {
  auto cfg = ParseAgentConfig(kGood, kSource);
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->log_level, "debug");
  EXPECT_EQ(cfg->est.server, "https://est.fleet.example:8443/gateways");
  EXPECT_EQ(cfg->est.trust_anchor_file, "/etc/certfleet/est-ca.pem");
  EXPECT_EQ(cfg->est.user, "gw-0001");
  EXPECT_EQ(cfg->est.password_file, "/etc/certfleet/est-password");
  EXPECT_EQ(cfg->est.client_cert_file, "/etc/certfleet/claim.pem");
  EXPECT_EQ(cfg->est.client_key_slot, "claim");
  EXPECT_TRUE(cfg->est.tls12_only);
  EXPECT_EQ(cfg->identity.common_name, "gw-0001");
  EXPECT_EQ(cfg->identity.key_type, "ec-p384");
  EXPECT_EQ(cfg->identity.key_slot, "identity-b");
  EXPECT_EQ(cfg->identity.cert_file, "/var/lib/certfleet-agent/identity.pem");
  EXPECT_EQ(cfg->keystore.backend, "file");
  EXPECT_EQ(cfg->keystore.dir, "/var/lib/certfleet-agent/keys");
}

TEST(AgentConfigTest, HardwareKeyStores) {
  auto p11 = ParseAgentConfig(
      "[keystore]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=gateway\"\n"
      "module = \"/usr/lib/softhsm/libsofthsm2.so\"\npin_file = \"/etc/certfleet/token-pin\"\n",
      kSource);
  ASSERT_TRUE(p11) << p11.error().ToString();
  EXPECT_EQ(p11->keystore.backend, "pkcs11");
  EXPECT_EQ(p11->keystore.uri, "pkcs11:token=gateway");
  EXPECT_EQ(p11->keystore.module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(p11->keystore.pin_file, "/etc/certfleet/token-pin");
  auto tpm = ParseAgentConfig(
      "[keystore]\nbackend = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"\ndir = \"/var/lib/certfleet-agent/keys\"\n",
      kSource);
  ASSERT_TRUE(tpm) << tpm.error().ToString();
  EXPECT_EQ(tpm->keystore.tcti, "device:/dev/tpmrm0");
  // Each hardware backend needs to know where the hardware is.
  auto no_uri = ParseAgentConfig("[keystore]\nbackend = \"pkcs11\"\n", kSource);
  ASSERT_FALSE(no_uri);
  EXPECT_NE(no_uri.error().ToString().find("keystore.uri"), std::string::npos);
  auto no_tcti = ParseAgentConfig("[keystore]\nbackend = \"tpm\"\n", kSource);
  ASSERT_FALSE(no_tcti);
  EXPECT_NE(no_tcti.error().ToString().find("keystore.tcti"), std::string::npos);
}

TEST(AgentConfigTest, EmptyFileGivesTheDefaults) {
  auto cfg = ParseAgentConfig("", kSource);
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  AgentConfig defaults;
  EXPECT_EQ(cfg->log_level, "info");
  EXPECT_EQ(cfg->identity.key_type, "ec-p256");
  EXPECT_EQ(cfg->identity.key_slot, "identity-a");
  EXPECT_EQ(cfg->keystore.backend, defaults.keystore.backend);
  EXPECT_FALSE(cfg->est.tls12_only);
  EXPECT_EQ(cfg->est.server, "");
}

// The error names the file and line, and something recognizable about the mistake.
void ExpectError(const std::string& text, const std::string& where, const std::string& what) {
  auto cfg = ParseAgentConfig(text, kSource);
  ASSERT_FALSE(cfg) << text;
  EXPECT_EQ(cfg.error().code(), Code::kInvalidArgument);
  const std::string& msg = cfg.error().message();
  EXPECT_NE(msg.find(std::string(kSource) + ":" + where), std::string::npos) << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << msg;
}

TEST(AgentConfigTest, UnknownKeyNamesFileAndLine) {
  ExpectError("[est]\nserver = \"https://est.example\"\nsevrer = \"https://est.example\"\n", "3:", "est.sevrer");
  ExpectError("colour = \"blue\"\n", "1:", "colour");
}

TEST(AgentConfigTest, ServerMustBeHttps) {
  ExpectError("[est]\nserver = \"http://est.example:8080\"\n", "2:", "https://");
  ExpectError("[est]\nserver = \"https://\"\n", "2:", "https://");
  ExpectError("[est]\nserver = \"est.example\"\n", "2:", "https://");
}

TEST(AgentConfigTest, BadKeyType) {
  ExpectError("[identity]\nkey_type = \"ec-p521\"\n", "2:", "identity.key_type");
  ExpectError("[identity]\nkey_type = \"dsa\"\n", "2:", "identity.key_type");
}

TEST(AgentConfigTest, BadSlotNames) {
  ExpectError("[identity]\nkey_slot = \"../identity\"\n", "2:", "identity.key_slot");
  ExpectError("[identity]\nkey_slot = \".hidden\"\n", "2:", "identity.key_slot");
  ExpectError("[identity]\nkey_slot = \"\"\n", "2:", "identity.key_slot");
  ExpectError("[est]\nclient_key_slot = \"a/b\"\n", "2:", "est.client_key_slot");
  // An empty claim slot means "none".
  auto cfg = ParseAgentConfig("[est]\nclient_key_slot = \"\"\n", kSource);
  EXPECT_TRUE(cfg) << cfg.error().ToString();
}

TEST(AgentConfigTest, PathsMustBeAbsolute) {
  ExpectError("[est]\ntrust_anchor_file = \"est-ca.pem\"\n", "2:", "absolute");
  ExpectError("\n[keystore]\ndir = \"keys\"\n", "3:", "keystore.dir");
  ExpectError("[identity]\ncert_file = \"./identity.pem\"\n", "2:", "identity.cert_file");
  ExpectError("[est]\npassword_file = \"\"\n", "2:", "est.password_file");
}

TEST(AgentConfigTest, WrongTypes) {
  ExpectError("[est]\ntls12_only = \"yes\"\n", "2:", "true or false");
  ExpectError("[est]\nserver = 443\n", "2:", "string");
  ExpectError("[identity]\ncommon_name = [\"a\", \"b\"]\n", "2:", "string");
}

TEST(AgentConfigTest, BadEnumValues) {
  ExpectError("[keystore]\nbackend = \"smartcard\"\n", "2:", "keystore.backend");
  ExpectError("[keystore]\nuri = \"pkcs11:token=%zz\"\n", "2:", "keystore.uri");
  ExpectError("[keystore]\nmodule = \"libsofthsm2.so\"\n", "2:", "keystore.module");
  ExpectError("[keystore]\npin_file = \"pin\"\n", "2:", "keystore.pin_file");
  ExpectError("log_level = \"verbose\"\n", "1:", "log_level");
}

TEST(AgentConfigTest, SyntaxErrorNamesFileAndLine) {
  ExpectError("[est]\nserver = \"https://est.example\n", "2:", "");
}

TEST(AgentConfigTest, LoadReadsThroughTheFilesystem) {
  shared::MemFilesystem fs;
  ASSERT_TRUE(fs.WriteFileAtomic(kSource, kGood, 0644).ok());
  auto cfg = LoadAgentConfig(kSource, fs);
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->identity.common_name, "gw-0001");

  auto missing = LoadAgentConfig("/etc/certfleet/missing.toml", fs);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Code::kNotFound);

  ASSERT_TRUE(fs.WriteFileAtomic("/etc/certfleet/bad.toml", "nope = 1\n", 0644).ok());
  auto bad = LoadAgentConfig("/etc/certfleet/bad.toml", fs);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("/etc/certfleet/bad.toml:1:"), std::string::npos) << bad.error().message();
}

}  // namespace
}  // namespace certfleet::agent

namespace certfleet::agent {
namespace {

const char kDaemon[] = R"(
[agent]
state_dir = "/var/lib/certfleet-agent"
control_socket = "/run/certfleet-agent/control.sock"
time_sync_file = ""

[mqtt]
host = "broker.fleet.example"
port = 8883
broker_name = "broker.fleet.example"
trust_anchor_file = "/etc/certfleet/broker-ca.pem"
keepalive = "45s"
timeout = "20s"

[renewal]
threshold = 0.75
days_before_expiry = 20
jitter = 0.1
retry_base = "30s"
retry_cap = "2h"

[[hooks.post_rotation]]
command = ["/bin/systemctl", "reload", "nginx"]
timeout = "30s"

[[hooks.post_rotation]]
command = ["/usr/local/bin/notify"]

[[export]]
path = "/etc/nginx/gw.pem"
what = "chain"
mode = "0640"
owner = "root"
group = "www-data"
)";

TEST(AgentConfigDaemonTest, ParsesDaemonKeys) {
  auto cfg = ParseAgentConfig(kDaemon, "/etc/certfleet/agent.toml");
  ASSERT_TRUE(cfg) << cfg.error().ToString();
  EXPECT_EQ(cfg->agent.time_sync_file, "");
  EXPECT_EQ(cfg->mqtt.host, "broker.fleet.example");
  EXPECT_EQ(cfg->mqtt.keepalive, std::chrono::seconds(45));
  EXPECT_DOUBLE_EQ(cfg->renewal.threshold, 0.75);
  EXPECT_EQ(cfg->renewal.days_before_expiry, 20);
  EXPECT_DOUBLE_EQ(cfg->renewal.jitter, 0.1);
  EXPECT_EQ(cfg->renewal.retry_cap, std::chrono::hours(2));
  ASSERT_EQ(cfg->post_rotation_hooks.size(), 2u);
  EXPECT_EQ(cfg->post_rotation_hooks[0].command, (std::vector<std::string>{"/bin/systemctl", "reload", "nginx"}));
  EXPECT_EQ(cfg->post_rotation_hooks[0].timeout, std::chrono::seconds(30));
  EXPECT_EQ(cfg->post_rotation_hooks[1].timeout, std::chrono::seconds(60));
  ASSERT_EQ(cfg->exports.size(), 1u);
  EXPECT_EQ(cfg->exports[0].mode, 0640u);
  EXPECT_EQ(cfg->exports[0].group, "www-data");
}

TEST(AgentConfigDaemonTest, DefaultsAreDocumented) {
  auto cfg = ParseAgentConfig("", "/x.toml");
  ASSERT_TRUE(cfg);
  EXPECT_EQ(cfg->agent.state_dir, "/var/lib/certfleet-agent");
  EXPECT_EQ(cfg->agent.control_socket, "/run/certfleet-agent/control.sock");
  EXPECT_DOUBLE_EQ(cfg->renewal.threshold, 0.8);
  EXPECT_DOUBLE_EQ(cfg->renewal.jitter, 0.05);
  EXPECT_TRUE(cfg->post_rotation_hooks.empty());
}

TEST(AgentConfigDaemonTest, BadValuesNameFileAndLine) {
  struct Case {
    const char* text;
    const char* needle;
  } cases[] = {
      {"[renewal]\nthreshold = 1.5\n", "/x.toml:2"},
      {"[renewal]\nthreshold = 0\n", "out of range"},
      {"[renewal]\njitter = 0.9\n", "out of range"},
      {"[renewal]\nretry_base = \"1h\"\nretry_cap = \"1m\"\n", "retry_cap"},
      {"[agent]\nstate_dir = \"relative\"\n", "/x.toml:2"},
      {"[mqtt]\nport = 0\n", "/x.toml:2"},
      {"[[hooks.post_rotation]]\ncommand = [\"systemctl\", \"reload\"]\n", "absolute path"},
      {"[[hooks.post_rotation]]\ntimeout = \"5s\"\n", "no command"},
      {"[[hooks.post_rotation]]\ncommand = [\"/bin/true\"]\nshell = true\n", "line 3"},
      {"[[export]]\npath = \"/a.pem\"\nwhat = \"key\"\n", "chain"},
      {"[[export]]\npath = \"/a.pem\"\nmode = \"0666\"\n", "writable"},
      {"[[export]]\nwhat = \"cert\"\n", "no path"},
      {"[[export]]\npath = \"/a.pem\"\nowner = \"a b\"\n", "owner"},
      {"export = \"x\"\n", "array of tables"},
  };
  for (const auto& c : cases) {
    auto cfg = ParseAgentConfig(c.text, "/x.toml");
    ASSERT_FALSE(cfg) << c.text;
    EXPECT_EQ(cfg.error().code(), shared::Code::kInvalidArgument) << c.text;
    EXPECT_NE(cfg.error().message().find(c.needle), std::string::npos) << c.text << " -> " << cfg.error().ToString();
  }
}

}  // namespace
}  // namespace certfleet::agent
