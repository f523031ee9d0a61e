// `certfleet-agent provision`: config keys, the backoff schedule and the refusals as unit
// tests; then the whole flow against a REAL mosquitto broker on an ephemeral loopback
// port, with an in-test responder playing the companion's provisioning service.
#include "agent/provision.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "agent/config.h"
#include "agent/issuance.h"
#include "agent/testing/est_test_server.h"
#include "hal/keystore.h"
#include "shared/core/base64.h"
#include "shared/mqtt/client.h"
#include "shared/testing/temp_dir.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"

namespace certfleet::agent {
namespace {

namespace sh = certfleet::shared;
using sh::Code;
using std::chrono::milliseconds;

constexpr char kSource[] = "/etc/certfleet/agent.toml";

// ---- Config ----

TEST(ProvisionConfigTest, ParsesTheProvisioningTable) {
  auto cfg = ParseAgentConfig(R"(
[identity]
common_name = "gw-0001"
cert_file = "/var/lib/certfleet-agent/identity.pem"
[est]
trust_anchor_file = "/etc/certfleet/root.pem"
[provisioning]
broker_host = "broker.example"
claim_port = 18884
things_port = 18883
claim_cert_file = "/etc/certfleet/claim.pem"
claim_key_slot = "factory-claim"
template = "GatewayTemplate"
dialect = "aws"
state_file = "/tmp/p.json"
timeout = "10s"
max_attempts = 3
[provisioning.parameters]
SerialNumber = "0001"
Site = "lab 2"
)",
                              kSource);
  ASSERT_TRUE(cfg.has_value()) << cfg.error().ToString();
  const auto& p = cfg->provisioning;
  EXPECT_EQ(p.broker_host, "broker.example");
  EXPECT_EQ(p.claim_port, 18884);
  EXPECT_EQ(p.things_port, 18883);
  EXPECT_EQ(p.template_name, "GatewayTemplate");
  EXPECT_EQ(p.dialect, "aws");
  EXPECT_EQ(p.timeout, std::chrono::seconds(10));
  EXPECT_EQ(p.max_attempts, 3);
  EXPECT_EQ(p.parameters, (sh::StringMap{{"SerialNumber", "0001"}, {"Site", "lab 2"}}));

  auto o = ProvisionOptionsFromConfig(*cfg);
  ASSERT_TRUE(o.has_value()) << o.error().ToString();
  EXPECT_EQ(o->broker_name, "broker.example");                  // default: broker_host
  EXPECT_EQ(o->trust_anchor_file, "/etc/certfleet/root.pem");   // default: the EST anchor
  EXPECT_EQ(o->client_id, "gw-0001");                           // default: the common name
  EXPECT_EQ(o->dialect, sh::Dialect::kAws);
  EXPECT_EQ(o->timeout, milliseconds(10000));
  EXPECT_EQ(o->claim_key_slot, "factory-claim");
  EXPECT_EQ(o->key_slot, "identity-a");
}

TEST(ProvisionConfigTest, Defaults) {
  AgentConfig c;
  EXPECT_EQ(c.provisioning.broker_host, "127.0.0.1");
  EXPECT_EQ(c.provisioning.claim_port, 8884);
  EXPECT_EQ(c.provisioning.things_port, 8883);
  EXPECT_EQ(c.provisioning.claim_key_slot, "claim");
  EXPECT_EQ(c.provisioning.dialect, "certfleet");
  EXPECT_EQ(c.provisioning.state_file, "/var/lib/certfleet-agent/provisioned.json");
  EXPECT_EQ(c.provisioning.timeout, std::chrono::seconds(30));
  EXPECT_EQ(c.provisioning.max_attempts, 6);
}

TEST(ProvisionConfigTest, RejectsUnknownKeysBadDialectAndBadParameters) {
  auto unknown = ParseAgentConfig("[provisioning]\nbroker = \"x\"\n", kSource);
  ASSERT_FALSE(unknown.has_value());
  EXPECT_NE(unknown.error().ToString().find("unknown key 'provisioning.broker'"), std::string::npos);
  EXPECT_NE(unknown.error().ToString().find("agent.toml:2"), std::string::npos) << unknown.error().ToString();

  auto dialect = ParseAgentConfig("[provisioning]\ndialect = \"azure\"\n", kSource);
  ASSERT_FALSE(dialect.has_value());
  EXPECT_NE(dialect.error().ToString().find("azure"), std::string::npos);

  auto number = ParseAgentConfig("[provisioning.parameters]\nSerialNumber = 1\n", kSource);
  ASSERT_FALSE(number.has_value());
  EXPECT_NE(number.error().ToString().find("provisioning.parameters.SerialNumber"), std::string::npos);

  auto nested = ParseAgentConfig("[provisioning.parameters.deep]\nx = \"1\"\n", kSource);
  EXPECT_FALSE(nested.has_value());
  EXPECT_FALSE(ParseAgentConfig("[provisioning]\ntemplate = \"has space\"\n", kSource).has_value());
  EXPECT_FALSE(ParseAgentConfig("[provisioning]\nmax_attempts = 0\n", kSource).has_value());
  EXPECT_FALSE(ParseAgentConfig("[provisioning]\nclaim_port = 70000\n", kSource).has_value());
  EXPECT_FALSE(ParseAgentConfig("[provisioning]\nclient_id = \"a/b\"\n", kSource).has_value());
}

AgentConfig CompleteConfig() {
  AgentConfig c;
  c.identity.common_name = "gw-0001";
  c.identity.cert_file = "/var/lib/certfleet-agent/identity.pem";
  c.est.trust_anchor_file = "/etc/certfleet/root.pem";
  c.provisioning.claim_cert_file = "/etc/certfleet/claim.pem";
  c.provisioning.template_name = "GatewayTemplate";
  return c;
}

TEST(ProvisionConfigTest, RefusesIncompleteOrContradictorySettings) {
  ASSERT_TRUE(ProvisionOptionsFromConfig(CompleteConfig()).has_value());

  AgentConfig c = CompleteConfig();
  c.identity.common_name = "";
  c.provisioning.client_id = "explicit";
  auto r = ProvisionOptionsFromConfig(c);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("identity.common_name"), std::string::npos);

  c = CompleteConfig();
  c.provisioning.template_name = "";
  r = ProvisionOptionsFromConfig(c);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("provisioning.template"), std::string::npos);

  c = CompleteConfig();
  c.provisioning.claim_key_slot = "identity-a";
  r = ProvisionOptionsFromConfig(c);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_NE(r.error().message().find("must not share"), std::string::npos);

  c = CompleteConfig();
  c.provisioning.claim_key_slot = "identity-b";  // the A/B sibling is the identity's too
  EXPECT_FALSE(ProvisionOptionsFromConfig(c).has_value());

  c = CompleteConfig();
  c.est.trust_anchor_file = "";
  EXPECT_FALSE(ProvisionOptionsFromConfig(c).has_value());
  c.provisioning.trust_anchor_file = "/etc/certfleet/broker-root.pem";
  EXPECT_TRUE(ProvisionOptionsFromConfig(c).has_value());
}

// ---- Backoff ----

TEST(ProvisionBackoffTest, FullJitterUnderACappedExponentialCeiling) {
  std::mt19937_64 rng(42);
  for (int attempt = 1; attempt <= 12; ++attempt) {
    int64_t ceiling = std::min<int64_t>(1000LL << (attempt - 1), 60000);
    for (int i = 0; i < 200; ++i) {
      auto d = BackoffDelay(attempt, rng);
      EXPECT_GE(d.count(), 0);
      EXPECT_LE(d.count(), ceiling) << "attempt " << attempt;
    }
  }
  // Very large attempt numbers stay at the cap (no overflow).
  for (int i = 0; i < 100; ++i) EXPECT_LE(BackoffDelay(1000, rng).count(), 60000);
}

TEST(ProvisionBackoffTest, DeterministicWithASeededSourceAndActuallyJittered) {
  std::mt19937_64 a(7), b(7);
  std::vector<int64_t> da, db;
  for (int attempt = 1; attempt <= 8; ++attempt) {
    da.push_back(BackoffDelay(attempt, a).count());
    db.push_back(BackoffDelay(attempt, b).count());
  }
  EXPECT_EQ(da, db);
  std::mt19937_64 c(8);
  std::set<int64_t> values;
  for (int i = 0; i < 50; ++i) values.insert(BackoffDelay(6, c).count());
  EXPECT_GT(values.size(), 40u);  // spread over [0, 32 s], not a fixed delay
  // The late attempts use the cap: some delays exceed the uncapped attempt-6 ceiling.
  std::mt19937_64 d(9);
  int64_t max_seen = 0;
  for (int i = 0; i < 100; ++i) max_seen = std::max(max_seen, BackoffDelay(20, d).count());
  EXPECT_GT(max_seen, 32000);
  EXPECT_EQ(BackoffDelay(3, c, milliseconds(0), milliseconds(0)).count(), 0);
}

// ---- PKI and files shared by the refusal and broker tests ----

struct Pki {
  TestCa ca = MakeCa("certfleet test root");
  sh::EvpPkeyPtr claim_key = NewKey();
  sh::X509Ptr claim_cert;
  sh::EvpPkeyPtr companion_key = NewKey();
  sh::X509Ptr companion_cert;
  sh::EvpPkeyPtr broker_key = NewKey();
  sh::X509Ptr broker_cert;

  Pki() {
    claim_cert = ca.Issue(Name("claim-batch-7").get(), claim_key.get());
    companion_cert = ca.Issue(Name("companion").get(), companion_key.get());
    broker_cert = ca.Issue(Name("localhost").get(), broker_key.get(), "DNS:localhost,IP:127.0.0.1");
  }
};

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

// Files, key store and options of one gateway in a temporary directory.
class Gateway {
 public:
  explicit Gateway(const Pki& pki) {
    if (dir_.path().empty()) throw std::runtime_error("mkdtemp failed");
    WriteFile(dir_.path() + "/root.pem", pki.ca.Pem());
    WriteFile(dir_.path() + "/claim.pem", sh::CertToPem(pki.claim_cert.get()));
    options.trust_anchor_file = dir_.path() + "/root.pem";
    options.claim_cert_file = dir_.path() + "/claim.pem";
    options.claim_key_slot = "claim";
    options.template_name = "GatewayTemplate";
    options.client_id = "gw-0001";
    options.common_name = "gw-0001";
    options.parameters = {{"SerialNumber", "0001"}};
    options.state_file = dir_.path() + "/state/provisioned.json";
    options.cert_file = dir_.path() + "/identity.pem";
    options.keystore.backend = "file";
    options.keystore.dir = dir_.path() + "/keys";
    options.broker_name = "127.0.0.1";
    options.timeout = milliseconds(5000);
    options.max_attempts = 3;
    options.jitter_seed = 1234;
    Keys()->Import("claim", pki.claim_key.get()).value();
  }
  std::unique_ptr<hal::KeyStore> Keys() { return Must(hal::OpenKeyStore(options.keystore, fs), "OpenKeyStore"); }
  sh::Result<ProvisionOutcome> Run() {
    return RunProvision(options, fs, sh::SystemClock::Instance(), log,
                        [this](milliseconds d) { sleeps.push_back(d); });
  }
  bool Wrote(const std::string& path) const { return ::access(path.c_str(), F_OK) == 0; }
  const std::string& dir() const { return dir_.path(); }

  ProvisionOptions options;
  sh::PosixFilesystem fs;
  sh::CaptureLogger log;
  std::vector<milliseconds> sleeps;

 private:
  sh::TempDir dir_;
};

// ---- Refusals (no broker needed: they happen before any connection) ----

TEST(ProvisionRefusalTest, AlreadyProvisionedInEitherSlot) {
  Pki pki;
  for (const char* slot : {"identity-a", "identity-b"}) {
    Gateway gw(pki);
    gw.options.claim_port = 1;  // would fail if it tried the network
    auto key = Must(gw.Keys()->Generate(slot, sh::KeyType::kEcP256), "Generate");
    auto cert = pki.ca.Issue(Name("gw-0001").get(), key->pkey());
    WriteFile(gw.options.cert_file, sh::CertToPem(cert.get()));
    auto r = gw.Run();
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kAlreadyExists);
    EXPECT_NE(r.error().message().find("already provisioned"), std::string::npos) << r.error().ToString();
    EXPECT_NE(r.error().message().find(slot), std::string::npos);
    EXPECT_FALSE(gw.Wrote(gw.options.state_file));
  }
}

TEST(ProvisionRefusalTest, SameSlotMissingNameOrTemplate) {
  Pki pki;
  Gateway gw(pki);
  gw.options.key_slot = "claim";
  auto r = gw.Run();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_NE(r.error().message().find("must not share"), std::string::npos);

  Gateway gw2(pki);
  gw2.options.common_name = "";
  r = gw2.Run();
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("identity.common_name"), std::string::npos);

  Gateway gw3(pki);
  gw3.options.template_name = "";
  r = gw3.Run();
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("provisioning.template"), std::string::npos);
  EXPECT_TRUE(gw3.sleeps.empty());
}

TEST(ProvisionRefusalTest, ClaimCertificateMustMatchTheClaimKey) {
  Pki pki;
  Gateway gw(pki);
  WriteFile(gw.options.claim_cert_file, sh::CertToPem(pki.companion_cert.get()));
  auto r = gw.Run();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_FALSE(gw.Keys()->Load("identity-a").has_value());  // no key made for nothing
}

// ---- A real mosquitto broker ----

constexpr char kMosquitto[] = "/usr/sbin/mosquitto";

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("bind 127.0.0.1:0");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool Accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// mosquitto with one TLS listener that requires client certificates from the test CA
// and uses the certificate CN as the user name. Killed (and reaped) by the destructor.
class Broker {
 public:
  explicit Broker(const Pki& pki) {
    if (::access(kMosquitto, X_OK) != 0) {
      throw std::runtime_error(std::string(kMosquitto) + " is not installed: the broker tests need mosquitto");
    }
    if (dir_.path().empty()) throw std::runtime_error("mkdtemp failed");
    const std::string& d = dir_.path();
    WriteFile(d + "/ca.pem", pki.ca.Pem());
    WriteFile(d + "/broker.pem", sh::CertToPem(pki.broker_cert.get()));
    WriteFile(d + "/broker.key", Must(sh::PrivateKeyToPem(pki.broker_key.get()), "broker key"));
    ::chmod((d + "/broker.key").c_str(), 0600);
    port_ = FreePort();
    std::string conf = "per_listener_settings false\n"
                       "persistence false\n"
                       "allow_anonymous false\n"
                       "log_dest file " + d + "/mosquitto.log\n"
                       "log_type all\n"
                       "listener " + std::to_string(port_) + " 127.0.0.1\n"
                       "cafile " + d + "/ca.pem\n"
                       "certfile " + d + "/broker.pem\n"
                       "keyfile " + d + "/broker.key\n"
                       "require_certificate true\n"
                       "use_identity_as_username true\n";
    if (::geteuid() == 0) conf += "user root\n";  // otherwise mosquitto drops to 'mosquitto'
    WriteFile(d + "/mosquitto.conf", conf);

    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      std::string c = d + "/mosquitto.conf";
      ::execl(kMosquitto, kMosquitto, "-c", c.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!Accepts(port_)) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("mosquitto exited at start: " + Log());
      }
      if (std::chrono::steady_clock::now() > deadline) {
        Stop();
        throw std::runtime_error("mosquitto did not accept connections within 10 s: " + Log());
      }
      std::this_thread::sleep_for(milliseconds(20));  // polling against a deadline
    }
  }
  ~Broker() { Stop(); }
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  int port() const { return port_; }
  std::string Log() const { return ReadFile(dir_.path() + "/mosquitto.log"); }

 private:
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 250; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  sh::TempDir dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

sh::Logger& TestLog() {
  static sh::NullLogger log;
  return log;
}

// A queue of received messages, fed by an MQTT handler (which only enqueues).
class MessageQueue {
 public:
  void Push(const sh::MqttMessage& m) {
    {
      std::lock_guard lock(mu_);
      q_.push_back(m);
    }
    cv_.notify_all();
  }
  std::optional<sh::MqttMessage> Pop(milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !q_.empty() || closed_; }) || q_.empty()) return std::nullopt;
    auto m = std::move(q_.front());
    q_.pop_front();
    return m;
  }
  void Close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<sh::MqttMessage> q_;
  bool closed_ = false;
};

std::unique_ptr<sh::MqttClient> CompanionClient(const Pki& pki, int port, const std::string& client_id,
                                                MessageQueue& queue) {
  sh::MqttOptions o;
  o.port = port;
  o.client_id = client_id;
  o.trust_anchor_pem = pki.ca.Pem();
  o.client_cert_pem = sh::CertToPem(pki.companion_cert.get());
  o.client_key = pki.companion_key.get();
  auto client = Must(sh::MqttClient::Create(o, TestLog()), "MqttClient::Create");
  client->SetMessageHandler([&queue](const sh::MqttMessage& m) { queue.Push(m); });
  sh::Status st = client->Connect(milliseconds(5000));
  if (!st.ok()) throw std::runtime_error("companion connect: " + st.ToString());
  return client;
}

// The companion's part, scripted by the test: answers requests of both dialects from its
// own thread (never from the MQTT handler).
class Responder {
 public:
  enum class Kind { kAccept, kReject, kSilent };
  struct Action {
    Kind kind = Kind::kAccept;
    sh::Rejection rejection;
  };
  static Action Reject(const sh::RejectionCode& code, const std::string& message) {
    return Action{Kind::kReject, sh::MakeRejection(code, message)};
  }

  Responder(const Pki& pki, int port) : pki_(pki) {
    client_ = CompanionClient(pki, port, "companion-responder", queue_);
    for (const char* f : {"certfleet/provisioning/+/+/certificates/create-from-csr/json",
                          "certfleet/provisioning/+/+/provisioning-templates/+/provision/json",
                          "$aws/certificates/create-from-csr/json", "$aws/provisioning-templates/+/provision/json"}) {
      sh::Status st = client_->Subscribe(f, 1, milliseconds(5000));
      if (!st.ok()) throw std::runtime_error("responder subscribe: " + st.ToString());
    }
    thread_ = std::thread([this] { Loop(); });
  }
  ~Responder() {
    stop_ = true;
    queue_.Close();
    thread_.join();
    client_->Disconnect();
  }

  void ScriptCsr(std::deque<Action> a) {
    std::lock_guard lock(mu_);
    csr_script_ = std::move(a);
  }
  void ScriptRegister(std::deque<Action> a) {
    std::lock_guard lock(mu_);
    register_script_ = std::move(a);
  }
  void set_default_csr(Kind k) { default_csr_ = k; }

  int csr_requests() const { return csr_requests_; }
  int register_requests() const { return register_requests_; }
  sh::ProvisioningTopic last_topic() const {
    std::lock_guard lock(mu_);
    return last_topic_;
  }
  sh::StringMap last_parameters() const {
    std::lock_guard lock(mu_);
    return last_parameters_;
  }

  static constexpr char kThingName[] = "thing-gw-0001";

 private:
  Action Next(std::deque<Action>& script, Kind fallback) {
    std::lock_guard lock(mu_);
    if (script.empty()) return Action{fallback, {}};
    Action a = script.front();
    script.pop_front();
    return a;
  }

  void Loop() {
    while (!stop_) {
      auto m = queue_.Pop(milliseconds(200));
      if (m) Handle(*m);
    }
  }

  void Reply(const std::string& topic, bool accepted, const std::string& payload) {
    sh::Status st = client_->Publish(topic + (accepted ? "/accepted" : "/rejected"), payload, 1, false,
                                     milliseconds(5000));
    if (!st.ok()) ADD_FAILURE() << "responder publish: " << st.ToString();
  }

  void Handle(const sh::MqttMessage& m) {
    auto topic = sh::ParseRequestTopic(m.topic);
    if (!topic) return;  // our own replies on the wildcard filters
    {
      std::lock_guard lock(mu_);
      last_topic_ = *topic;
    }
    if (topic->operation == sh::Operation::kCreateCertificateFromCsr) {
      ++csr_requests_;
      Action a = Next(csr_script_, default_csr_);
      if (a.kind == Kind::kSilent) return;
      if (a.kind == Kind::kReject) return Reply(m.topic, false, sh::Encode(a.rejection).value());
      auto req = sh::DecodeCreateCertificateFromCsrRequest(m.payload).value();
      auto csr = Must(sh::CsrFromPem(req.certificate_signing_request), "CSR");
      auto cert = pki_.ca.Issue(X509_REQ_get_subject_name(csr.get()), X509_REQ_get0_pubkey(csr.get()));
      std::string token = "token-" + std::to_string(csr_requests_);
      {
        std::lock_guard lock(mu_);
        token_ = token;
      }
      sh::CreateCertificateFromCsrAccepted acc{sh::CertFingerprint(cert.get()), sh::CertToPem(cert.get()), token};
      return Reply(m.topic, true, sh::Encode(acc).value());
    }
    if (topic->operation == sh::Operation::kRegisterThing) {
      ++register_requests_;
      auto req = sh::DecodeRegisterThingRequest(m.payload).value();
      {
        std::lock_guard lock(mu_);
        last_parameters_ = req.parameters;
        if (req.certificate_ownership_token != token_) {
          ADD_FAILURE() << "RegisterThing with a stale ownership token";
        }
      }
      Action a = Next(register_script_, Kind::kAccept);
      if (a.kind == Kind::kSilent) return;
      if (a.kind == Kind::kReject) return Reply(m.topic, false, sh::Encode(a.rejection).value());
      sh::RegisterThingAccepted acc{kThingName, {{"mqttTopicPrefix", "site/lab"}}};
      return Reply(m.topic, true, sh::Encode(acc).value());
    }
  }

  const Pki& pki_;
  MessageQueue queue_;
  std::unique_ptr<sh::MqttClient> client_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> csr_requests_{0};
  std::atomic<int> register_requests_{0};
  std::atomic<Kind> default_csr_{Kind::kAccept};
  mutable std::mutex mu_;
  std::deque<Action> csr_script_, register_script_;
  sh::ProvisioningTopic last_topic_;
  sh::StringMap last_parameters_;
  std::string token_;
};

class ProvisionBrokerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { static sh::MqttLibrary library; }

  void SetUp() override {
    broker_ = std::make_unique<Broker>(pki_);
    responder_ = std::make_unique<Responder>(pki_, broker_->port());
    gw_ = std::make_unique<Gateway>(pki_);
    gw_->options.claim_port = broker_->port();
    gw_->options.things_port = broker_->port();
  }
  void TearDown() override {
    if (HasFailure() && broker_) std::fprintf(stderr, "--- mosquitto log ---\n%s\n", broker_->Log().c_str());
    gw_.reset();
    responder_.reset();
    broker_.reset();
  }

  // The retained status message of `thing`, as a new subscriber sees it.
  std::optional<sh::MqttMessage> RetainedStatus(const std::string& thing) {
    MessageQueue q;
    auto observer = CompanionClient(pki_, broker_->port(), "observer", q);
    sh::Status st = observer->Subscribe("certfleet/things/" + thing + "/status", 1, milliseconds(5000));
    if (!st.ok()) return std::nullopt;
    auto m = q.Pop(milliseconds(5000));
    observer->Disconnect();
    return m;
  }

  void ExpectProvisioned(const sh::Result<ProvisionOutcome>& r) {
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ(r->thing_name, Responder::kThingName);
    EXPECT_EQ(r->key_slot, "identity-a");
    EXPECT_EQ(r->certificate_id.size(), 64u);

    // The certificate: 0644, our key, our CN, the id is its fingerprint.
    ASSERT_TRUE(gw_->Wrote(gw_->options.cert_file));
    EXPECT_EQ(ModeOf(gw_->options.cert_file), 0644u);
    auto cert = Must(sh::CertFromPem(ReadFile(gw_->options.cert_file)), "identity cert");
    auto key = Must(gw_->Keys()->Load("identity-a"), "identity key");
    EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), key->pkey()));
    EXPECT_EQ(sh::NameCommonName(X509_get_subject_name(cert.get())), "gw-0001");
    EXPECT_EQ(sh::CertFingerprint(cert.get()), r->certificate_id);

    // The state file: 0600, JSON.
    ASSERT_TRUE(gw_->Wrote(gw_->options.state_file));
    EXPECT_EQ(ModeOf(gw_->options.state_file), 0600u);
    auto state = nlohmann::json::parse(ReadFile(gw_->options.state_file));
    EXPECT_EQ(state.at("thingName"), Responder::kThingName);
    EXPECT_EQ(state.at("certificateId"), r->certificate_id);
    EXPECT_EQ(state.at("deviceConfiguration"), nlohmann::json({{"mqttTopicPrefix", "site/lab"}}));
    EXPECT_EQ(state.at("provisionedAt").get<std::string>().size(), 20u);  // RFC 3339, seconds, Z

    // The proof: a retained status message published with the new identity.
    auto status = RetainedStatus(Responder::kThingName);
    ASSERT_TRUE(status.has_value()) << "no retained status message";
    EXPECT_TRUE(status->retained);
    auto payload = nlohmann::json::parse(status->payload);
    EXPECT_EQ(payload.at("state"), "provisioned");
    EXPECT_EQ(payload.at("certificateId"), r->certificate_id);
    EXPECT_EQ(responder_->last_parameters(), (sh::StringMap{{"SerialNumber", "0001"}}));
  }

  Pki pki_;
  std::unique_ptr<Broker> broker_;
  std::unique_ptr<Responder> responder_;
  std::unique_ptr<Gateway> gw_;
};

TEST_F(ProvisionBrokerTest, HappyPathCertfleetDialect) {
  auto r = gw_->Run();
  ExpectProvisioned(r);
  EXPECT_TRUE(gw_->sleeps.empty());
  EXPECT_EQ(responder_->csr_requests(), 1);
  EXPECT_EQ(responder_->register_requests(), 1);
  sh::ProvisioningTopic t = responder_->last_topic();
  EXPECT_EQ(t.dialect, sh::Dialect::kCertfleet);
  EXPECT_EQ(t.claim_subject, "claim-batch-7");  // exactly the claim certificate's CN
  EXPECT_EQ(t.client_id, "gw-0001");
  EXPECT_EQ(t.template_name, "GatewayTemplate");

  // A second run refuses: the identity is there.
  auto again = gw_->Run();
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Code::kAlreadyExists);
  EXPECT_EQ(responder_->csr_requests(), 1);
}

TEST_F(ProvisionBrokerTest, ReplacingAnIdentityProvesPossessionOfTheOldKey) {
  // The daemon's expired-certificate recovery: an identity in slot A, the new key goes to B.
  auto old_key = Must(gw_->Keys()->Generate("identity-a", sh::KeyType::kEcP256), "Generate");
  auto old_cert = pki_.ca.Issue(Name("gw-0001").get(), old_key->pkey());
  WriteFile(gw_->options.cert_file, sh::CertToPem(old_cert.get()));
  gw_->options.key_slot = "identity-b";
  gw_->options.replace_identity = true;
  auto r = gw_->Run();
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->key_slot, "identity-b");
  EXPECT_EQ(SlotCertifiedBy(gw_->fs, *gw_->Keys(), gw_->options.cert_file, {"identity-b"}), "identity-b");
  EXPECT_TRUE(gw_->Keys()->Load("identity-a").has_value());  // the daemon deletes it after adopting

  sh::StringMap params = responder_->last_parameters();
  EXPECT_EQ(params["SerialNumber"], "0001");
  EXPECT_EQ(params[sh::kPreviousCertificateIdParameter], sh::CertFingerprint(old_cert.get()));
  auto sig = sh::Base64Decode(params[sh::kPreviousCertificateSignatureParameter]);
  ASSERT_TRUE(sig.has_value());
  EXPECT_TRUE(sh::VerifySha256(old_key->pkey(), sh::PreviousCertificateProofText(r->certificate_id), *sig).ok());
}

TEST_F(ProvisionBrokerTest, HappyPathAwsDialect) {
  gw_->options.dialect = sh::Dialect::kAws;
  auto r = gw_->Run();
  ExpectProvisioned(r);
  EXPECT_EQ(responder_->last_topic().dialect, sh::Dialect::kAws);
  EXPECT_EQ(responder_->last_topic().template_name, "GatewayTemplate");
}

TEST_F(ProvisionBrokerTest, PermanentRejectionStopsAtOnceAndWritesNothing) {
  responder_->ScriptRegister({Responder::Reject(sh::kAccessDenied, "the pre-provisioning hook said no")});
  auto r = gw_->Run();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kPermissionDenied);
  std::string msg = r.error().ToString();
  EXPECT_NE(msg.find("RegisterThing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("403"), std::string::npos) << msg;
  EXPECT_NE(msg.find("AccessDenied"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the pre-provisioning hook said no"), std::string::npos) << msg;
  EXPECT_TRUE(gw_->sleeps.empty());
  EXPECT_EQ(responder_->csr_requests(), 1);
  EXPECT_FALSE(gw_->Wrote(gw_->options.cert_file));
  EXPECT_FALSE(gw_->Wrote(gw_->options.state_file));
  // The uncertified key stays for the next run, which reuses it.
  auto key = Must(gw_->Keys()->Load("identity-a"), "leftover key");
  auto again = gw_->Run();
  ExpectProvisioned(again);
  auto cert = Must(sh::CertFromPem(ReadFile(gw_->options.cert_file)), "cert");
  EXPECT_TRUE(sh::SamePublicKey(X509_get0_pubkey(cert.get()), key->pkey()));
}

TEST_F(ProvisionBrokerTest, TransientRejectionIsRetriedFromTheStartWithBackoff) {
  responder_->ScriptCsr({Responder::Reject(sh::kServiceUnavailable, "CA offline")});
  auto r = gw_->Run();
  ExpectProvisioned(r);
  ASSERT_EQ(gw_->sleeps.size(), 1u);
  EXPECT_GE(gw_->sleeps[0].count(), 0);
  EXPECT_LE(gw_->sleeps[0].count(), 1000);  // the first backoff: [0, base]
  EXPECT_EQ(responder_->csr_requests(), 2);
  EXPECT_EQ(responder_->register_requests(), 1);
}

TEST_F(ProvisionBrokerTest, TransientRegisterRejectionRestartsFromCreateCertificate) {
  responder_->ScriptRegister({Responder::Reject(sh::kThrottled, "slow down")});
  auto r = gw_->Run();
  ExpectProvisioned(r);
  EXPECT_EQ(gw_->sleeps.size(), 1u);
  EXPECT_EQ(responder_->csr_requests(), 2);  // a new certificate, a new token
  EXPECT_EQ(responder_->register_requests(), 2);
}

TEST_F(ProvisionBrokerTest, SilentCompanionTimesOutAndRetriesAreExhausted) {
  responder_->set_default_csr(Responder::Kind::kSilent);
  gw_->options.timeout = milliseconds(300);
  gw_->options.max_attempts = 3;
  auto r = gw_->Run();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kDeadlineExceeded);
  EXPECT_NE(r.error().message().find("giving up after 3 attempts"), std::string::npos) << r.error().ToString();
  ASSERT_EQ(gw_->sleeps.size(), 2u);
  EXPECT_LE(gw_->sleeps[0].count(), 1000);
  EXPECT_LE(gw_->sleeps[1].count(), 2000);
  EXPECT_EQ(responder_->csr_requests(), 3);
  EXPECT_EQ(responder_->register_requests(), 0);
  EXPECT_FALSE(gw_->Wrote(gw_->options.cert_file));
  EXPECT_FALSE(gw_->Wrote(gw_->options.state_file));
}

TEST_F(ProvisionBrokerTest, UnreachableBrokerIsTransient) {
  gw_->options.claim_port = FreePort();  // nobody listens there
  gw_->options.max_attempts = 2;
  gw_->options.timeout = milliseconds(1000);
  auto start = std::chrono::steady_clock::now();
  auto r = gw_->Run();
  // Regression: tearing down a client that never connected used to block in
  // libmosquitto's reconnect backoff for up to a minute per attempt.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kUnavailable) << r.error().ToString();
  EXPECT_NE(r.error().message().find("giving up after 2 attempts"), std::string::npos) << r.error().ToString();
  EXPECT_EQ(gw_->sleeps.size(), 1u);
  EXPECT_EQ(responder_->csr_requests(), 0);
}

}  // namespace
}  // namespace certfleet::agent
