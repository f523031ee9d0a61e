// rotation-load: a rotation wave against certfleet-companion. Simulates N agents:
//
// 1. Setup (untimed): each device provisions itself through the broker's claim listener
//    (CreateCertificateFromCsr + RegisterThing, certfleet dialect), as provision-load does,
//    and keeps its key and certificate.
// 2. Each device connects to the things listener with its certificate (client id = thing
//    name) and subscribes to its rotation request topic. Then the tool prints `ready` on
//    stdout and waits: the caller starts the wave (certfleetctl rotate ...).
// 3. On a rotation request, a device does what certfleet-agent does: a new key, EST
//    simplereenroll over mTLS with the current certificate, a new MQTT session with the
//    new certificate, the signed rotation ack (QoS 1), and then waits until the companion
//    clears the retained request (an empty retained message): the rotation is committed.
//
// Up to C devices rotate at once (a worker pool); the others wait for a worker, as a
// fleet's agents would wait on the companion. Prints one line of key=value figures:
// the wave's duration from the first request seen to the last commit, rotations per
// second over that span, and per-device latency from request to commit.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/est_client.h"
#include "bench/load_stats.h"
#include "bench/mqtt_inbox.h"
#include "shared/core/base64.h"
#include "shared/core/log.h"
#include "shared/mqtt/client.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/rotation.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::bench {
namespace {

namespace sh = shared;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Options {
  std::string host = "127.0.0.1";
  int things_port = 8883;
  int claim_port = 8884;
  std::string trust_anchor;
  std::string claim_cert;
  std::string claim_key;
  std::string template_name = "gateway";
  std::string est_url;  // https://HOST:PORT
  std::string est_server_name;
  std::string work_dir;  // per-device key/cert files for the EST client (0700)
  int64_t devices = 50;
  int concurrency = 8;
  std::string serial_prefix;
  std::string cn_format = "gw-{serial}";
  double timeout_s = 60;
  double wave_timeout_s = 600;
};


struct Shared {
  Options o;
  std::string anchor_pem;
  std::string claim_cert_pem;
  sh::EvpPkeyPtr claim_key;
  std::string claim_subject;
  sh::Logger* log = nullptr;
};

struct Device {
  std::string serial;
  std::string thing_name;
  sh::EvpPkeyPtr key;
  std::string cert_pem;
  std::string request_topic;
  std::unique_ptr<sh::MqttClient> session;
  std::shared_ptr<Inbox> inbox = std::make_shared<Inbox>();
  // Filled by the wave.
  std::string failure;
  std::string detail;
  Clock::time_point requested;
  Clock::time_point committed;
};


sh::Status WritePrivate(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wbx");
  if (f == nullptr) return sh::Status(sh::Code::kInternal, "cannot create " + tmp);
  chmod(tmp.c_str(), 0600);
  bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) return sh::Status(sh::Code::kInternal, "cannot write " + path);
  return sh::Status::Ok();
}

milliseconds Remaining(Clock::time_point deadline) {
  return std::max(std::chrono::duration_cast<milliseconds>(deadline - Clock::now()), milliseconds(1));
}

Clock::time_point After(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string ReplaceAll(std::string s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}

sh::Result<std::unique_ptr<sh::MqttClient>> Connect(const Shared& s, int port, const std::string& client_id,
                                                    const std::string& cert_pem, EVP_PKEY* key,
                                                    std::shared_ptr<Inbox> inbox, Clock::time_point deadline) {
  sh::MqttOptions mo;
  mo.host = s.o.host;
  mo.port = port;
  mo.client_id = client_id;
  mo.trust_anchor_pem = s.anchor_pem;
  mo.client_cert_pem = cert_pem;
  mo.client_key = key;
  CF_ASSIGN_OR_RETURN(auto client, sh::MqttClient::Create(mo, *s.log));
  client->SetMessageHandler([inbox](const sh::MqttMessage& m) { inbox->Push(m); });
  CF_RETURN_IF_ERROR(client->Connect(Remaining(deadline)));
  return client;
}

// Waits for the reply to a provisioning request on `accepted` or `rejected`.
sh::Result<std::string> Exchange(sh::MqttClient& c, Inbox& inbox, const sh::ProvisioningTopic& t,
                                 const std::string& payload, Clock::time_point deadline) {
  CF_ASSIGN_OR_RETURN(std::string topic, sh::RequestTopic(t));
  CF_ASSIGN_OR_RETURN(std::string accepted, sh::ReplyTopic(t, sh::Reply::kAccepted));
  CF_ASSIGN_OR_RETURN(std::string rejected, sh::ReplyTopic(t, sh::Reply::kRejected));
  CF_RETURN_IF_ERROR(c.Publish(topic, payload, 1, false, Remaining(deadline)));
  for (;;) {
    auto m = inbox.Pop(deadline);
    if (!m) return sh::Error(sh::Code::kDeadlineExceeded, std::string(sh::OperationName(t.operation)) + ": no reply");
    if (m->topic == accepted) return m->payload;
    if (m->topic == rejected) {
      return sh::Error(sh::Code::kFailedPrecondition, std::string(sh::OperationName(t.operation)) + " rejected: " + m->payload);
    }
  }
}

// Setup: claim provisioning, then the things session subscribed to the request topic.
sh::Status Provision(const Shared& s, int64_t index, Device& d) {
  const Options& o = s.o;
  d.serial = o.serial_prefix + std::to_string(index);
  d.thing_name = ReplaceAll(o.cn_format, "{serial}", d.serial);
  CF_ASSIGN_OR_RETURN(d.key, sh::GenerateKeyPair(sh::KeyType::kEcP256));
  sh::CsrRequest req;
  req.common_name = d.thing_name;
  CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsr(d.key.get(), req));
  const auto deadline = After(o.timeout_s);

  auto inbox = std::make_shared<Inbox>();
  CF_ASSIGN_OR_RETURN(auto claim, Connect(s, o.claim_port, d.serial, s.claim_cert_pem, s.claim_key.get(), inbox, deadline));
  sh::ProvisioningTopic t;
  t.client_id = d.serial;
  t.claim_subject = s.claim_subject;
  t.operation = sh::Operation::kCreateCertificateFromCsr;
  t.template_name = o.template_name;
  for (auto op : {sh::Operation::kCreateCertificateFromCsr, sh::Operation::kRegisterThing}) {
    t.operation = op;
    for (auto r : {sh::Reply::kAccepted, sh::Reply::kRejected}) {
      CF_ASSIGN_OR_RETURN(std::string filter, sh::ReplyTopic(t, r));
      CF_RETURN_IF_ERROR(claim->Subscribe(filter, 1, Remaining(deadline)));
    }
  }
  t.operation = sh::Operation::kCreateCertificateFromCsr;
  CF_ASSIGN_OR_RETURN(std::string payload, sh::Encode(sh::CreateCertificateFromCsrRequest{sh::CsrToPem(csr.get())}));
  CF_ASSIGN_OR_RETURN(std::string created_json, Exchange(*claim, *inbox, t, payload, deadline));
  CF_ASSIGN_OR_RETURN(auto created, sh::DecodeCreateCertificateFromCsrAccepted(created_json));
  t.operation = sh::Operation::kRegisterThing;
  CF_ASSIGN_OR_RETURN(payload, sh::Encode(sh::RegisterThingRequest{created.certificate_ownership_token,
                                                                  {{"SerialNumber", d.serial}}}));
  CF_ASSIGN_OR_RETURN(std::string registered_json, Exchange(*claim, *inbox, t, payload, deadline));
  CF_ASSIGN_OR_RETURN(auto registered, sh::DecodeRegisterThingAccepted(registered_json));
  claim->Disconnect();
  if (registered.thing_name != d.thing_name) {
    return sh::Status(sh::Code::kInternal, "RegisterThing named the thing " + registered.thing_name);
  }
  d.cert_pem = created.certificate_pem;

  CF_ASSIGN_OR_RETURN(d.request_topic, sh::ThingTopic(d.thing_name, sh::kRotationRequestSuffix));
  CF_ASSIGN_OR_RETURN(d.session, Connect(s, o.things_port, d.thing_name, d.cert_pem, d.key.get(), d.inbox, deadline));
  return d.session->Subscribe(d.request_topic, 1, Remaining(deadline));
}

// EST simplereenroll with the device's current certificate: the new certificate (PEM).
sh::Result<std::string> Reenroll(const Shared& s, Device& d, EVP_PKEY* new_key, int worker) {
  std::string base = s.o.work_dir + "/w" + std::to_string(worker);
  CF_ASSIGN_OR_RETURN(std::string key_pem, sh::PrivateKeyToPem(d.key.get()));
  CF_RETURN_IF_ERROR(WritePrivate(base + ".key", key_pem));
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  CF_RETURN_IF_ERROR(WritePrivate(base + ".pem", d.cert_pem));
  CF_ASSIGN_OR_RETURN(EstUrl url, ParseEstUrl(s.o.est_url));
  ClientOptions co;
  co.trust_anchor_file = s.o.trust_anchor;
  co.server_name = s.o.est_server_name;
  co.client_cert_file = base + ".pem";
  co.client_key_file = base + ".key";
  co.timeout = milliseconds(static_cast<int64_t>(s.o.timeout_s * 1000));
  CF_ASSIGN_OR_RETURN(auto client, EstClient::Create(url, co));
  CF_ASSIGN_OR_RETURN(sh::X509Ptr current, sh::CertFromPem(d.cert_pem));
  GENERAL_NAMES* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(current.get(), NID_subject_alt_name, nullptr, nullptr));
  auto csr = sh::BuildCsrWithName(new_key, X509_get_subject_name(current.get()), sans);
  GENERAL_NAMES_free(sans);
  if (!csr) return sh::Error(csr.error());
  std::string body = sh::Base64Encode(sh::CsrToDer(csr->get()));
  std::string request = "POST " + url.base_path + "/simplereenroll HTTP/1.1\r\nHost: " + url.authority +
                        "\r\nContent-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\nContent-Length: " +
                        std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  bench::Exchange x = client->Run(request);
  if (!x.failure.empty()) return sh::Error(sh::Code::kUnavailable, "EST " + x.failure + ": " + x.detail);
  if (x.status != 200) return sh::Error(sh::Code::kFailedPrecondition, "EST status " + std::to_string(x.status));
  CF_ASSIGN_OR_RETURN(std::string der, sh::Base64Decode(x.body));
  CF_ASSIGN_OR_RETURN(auto certs, sh::ParseCertsOnly(der));
  for (auto& c : certs) {
    if (sh::SamePublicKey(X509_get0_pubkey(c.get()), new_key)) return sh::CertToPem(c.get());
  }
  return sh::Error(sh::Code::kDataLoss, "EST response holds no certificate for the new key");
}

// One device's rotation, from the request (already received) to the commit.
sh::Status Rotate(const Shared& s, Device& d, const sh::RotationRequest& request, int worker) {
  const auto deadline = After(s.o.timeout_s);
  CF_ASSIGN_OR_RETURN(sh::EvpPkeyPtr new_key, sh::GenerateKeyPair(sh::KeyType::kEcP256));
  CF_ASSIGN_OR_RETURN(std::string new_pem, Reenroll(s, d, new_key.get(), worker));
  CF_ASSIGN_OR_RETURN(sh::X509Ptr old_cert, sh::CertFromPem(d.cert_pem));
  CF_ASSIGN_OR_RETURN(sh::X509Ptr new_cert, sh::CertFromPem(new_pem));

  d.session->Disconnect();
  d.session.reset();
  auto inbox = std::make_shared<Inbox>();
  CF_ASSIGN_OR_RETURN(auto session, Connect(s, s.o.things_port, d.thing_name, new_pem, new_key.get(), inbox, deadline));
  CF_RETURN_IF_ERROR(session->Subscribe(d.request_topic, 1, Remaining(deadline)));
  sh::RotationAck ack;
  ack.thing_name = d.thing_name;
  ack.rotation_id = request.rotation_id;
  ack.certificate_id = sh::CertFingerprint(new_cert.get());
  ack.previous_certificate_id = sh::CertFingerprint(old_cert.get());
  ack.signed_at = std::chrono::time_point_cast<std::chrono::seconds>(std::chrono::system_clock::now());
  CF_ASSIGN_OR_RETURN(ack.signature, sh::SignSha256(new_key.get(), sh::RotationAckSignedText(ack)));
  CF_ASSIGN_OR_RETURN(std::string payload, sh::EncodeRotationAck(ack));
  CF_ASSIGN_OR_RETURN(std::string ack_topic, sh::ThingTopic(d.thing_name, sh::kRotationAckSuffix));
  CF_RETURN_IF_ERROR(session->Publish(ack_topic, payload, 1, false, Remaining(deadline)));
  // Committed when the companion clears the retained request.
  for (;;) {
    auto m = inbox->Pop(deadline);
    if (!m) return sh::Status(sh::Code::kDeadlineExceeded, "the companion did not clear the rotation request");
    if (m->topic == d.request_topic && m->payload.empty()) break;
  }
  d.committed = Clock::now();
  d.key = std::move(new_key);
  d.cert_pem = std::move(new_pem);
  d.session = std::move(session);
  return sh::Status::Ok();
}

int Main(int argc, char** argv) {
  Shared s;
  Options& o = s.o;
  CLI::App app{"rotation-load: a rotation wave over N simulated agents"};
  app.add_option("--host", o.host, "broker host");
  app.add_option("--things-port", o.things_port, "the broker's things listener")->check(CLI::Range(1, 65535));
  app.add_option("--claim-port", o.claim_port, "the broker's claim listener")->check(CLI::Range(1, 65535));
  app.add_option("--trust-anchor", o.trust_anchor, "PEM CA the broker and EST server certificates chain to")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--claim-cert", o.claim_cert, "PEM claim certificate")->required()->check(CLI::ExistingFile);
  app.add_option("--claim-key", o.claim_key, "PEM claim key")->required()->check(CLI::ExistingFile);
  app.add_option("--template", o.template_name, "provisioning template name");
  app.add_option("--est", o.est_url, "EST server, https://HOST:PORT")->required();
  app.add_option("--est-server-name", o.est_server_name, "name in the EST server certificate (default: URL host)");
  app.add_option("--work-dir", o.work_dir, "directory for per-worker key files (mode 0700)")->required();
  app.add_option("--devices,-n", o.devices, "simulated agents")->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--concurrency,-c", o.concurrency, "rotations in flight at once")->check(CLI::Range(1, 1024));
  app.add_option("--serial-prefix", o.serial_prefix, "device serials are PREFIX<n>");
  app.add_option("--cn-format", o.cn_format, "thing name from the serial; {serial} is replaced");
  app.add_option("--timeout", o.timeout_s, "per-step deadline in seconds")->check(CLI::Range(0.1, 3600.0));
  app.add_option("--wave-timeout", o.wave_timeout_s, "how long to wait for the whole wave, seconds")
      ->check(CLI::Range(1.0, 86400.0));
  CLI11_PARSE(app, argc, argv);
  if (o.serial_prefix.empty()) {
    o.serial_prefix = "RS-" + std::to_string(getpid()) + "-" + std::to_string(std::time(nullptr)) + "-";
  }
  auto fail = [](const sh::Status& st) {
    std::fprintf(stderr, "rotation-load: %s\n", st.ToString().c_str());
    return 1;
  };
  signal(SIGPIPE, SIG_IGN);
  sh::MqttLibrary mqtt_library;
  sh::StderrLogger log(sh::LogLevel::kError);
  s.log = &log;
  {
    auto anchor = ReadFile(o.trust_anchor);
    auto cert = ReadFile(o.claim_cert);
    auto key = ReadFile(o.claim_key);
    if (!anchor || !cert || !key) return fail(sh::Status(sh::Code::kNotFound, "cannot read the PEM inputs"));
    s.anchor_pem = *anchor;
    s.claim_cert_pem = *cert;
    auto k = sh::PrivateKeyFromPem(*key);
    if (!k) return fail(k.error());
    s.claim_key = std::move(*k);
    auto c = sh::CertFromPem(s.claim_cert_pem);
    if (!c) return fail(c.error());
    s.claim_subject = sh::NameCommonName(X509_get_subject_name(c->get()));
  }

  // 1-2. Setup, in parallel, untimed.
  std::vector<Device> devices(static_cast<size_t>(o.devices));
  if (sh::Status st = ParallelFor(o.devices, [&](int64_t i) { return Provision(s, i, devices[static_cast<size_t>(i)]); });
      !st.ok()) {
    return fail(st.WithContext("setup"));
  }
  std::printf("ready devices=%lld\n", static_cast<long long>(o.devices));
  std::fflush(stdout);

  // 3. The wave: each device's first non-empty request goes to the worker pool.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<size_t, sh::RotationRequest>> queue;
  std::atomic<int64_t> done{0};
  const auto wave_deadline = After(o.wave_timeout_s);
  std::optional<Clock::time_point> first_request;
  // One waiter per device would be N threads; instead poll the inboxes round-robin.
  std::thread collector([&] {
    std::vector<bool> queued(devices.size(), false);
    size_t remaining = devices.size();
    while (remaining > 0 && Clock::now() < wave_deadline) {
      for (size_t i = 0; i < devices.size(); ++i) {
        if (queued[i]) continue;
        auto m = devices[i].inbox->Pop(Clock::now());
        if (!m || m->payload.empty()) continue;
        auto request = sh::DecodeRotationRequest(m->payload);
        if (!request) continue;
        devices[i].requested = Clock::now();
        queued[i] = true;
        --remaining;
        std::lock_guard lock(mu);
        if (!first_request) first_request = devices[i].requested;
        queue.emplace_back(i, std::move(*request));
        cv.notify_one();
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
    std::lock_guard lock(mu);
    cv.notify_all();
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < o.concurrency; ++w) {
    workers.emplace_back([&, w] {
      for (;;) {
        std::unique_lock lock(mu);
        cv.wait_until(lock, wave_deadline, [&] { return !queue.empty() || done == o.devices; });
        if (queue.empty()) {
          if (done == o.devices || Clock::now() >= wave_deadline) return;
          continue;
        }
        auto [index, request] = std::move(queue.front());
        queue.pop_front();
        lock.unlock();
        Device& d = devices[index];
        sh::Status st = Rotate(s, d, request, w);
        if (!st.ok()) {
          d.failure = sh::CodeName(st.code());
          d.detail = st.ToString();
        }
        if (++done == o.devices) cv.notify_all();
      }
    });
  }
  collector.join();
  for (auto& t : workers) t.join();

  std::vector<double> latencies;
  std::map<std::string, int64_t> failures;
  Clock::time_point last_commit{};
  int64_t shown = 0;
  for (const auto& d : devices) {
    if (d.requested == Clock::time_point{}) {
      ++failures["no_request"];
    } else if (!d.failure.empty()) {
      ++failures[d.failure];
      if (shown++ < 5) std::fprintf(stderr, "rotation-load: %s: %s\n", d.thing_name.c_str(), d.detail.c_str());
    } else {
      latencies.push_back(std::chrono::duration<double, std::milli>(d.committed - d.requested).count());
      last_commit = std::max(last_commit, d.committed);
    }
  }
  std::sort(latencies.begin(), latencies.end());
  const auto ok = static_cast<int64_t>(latencies.size());
  double wave_s = first_request && ok > 0 ? std::chrono::duration<double>(last_commit - *first_request).count() : 0;
  int64_t failed = o.devices - ok;
  std::string failure_list;
  for (const auto& [kind, n] : failures) failure_list += (failure_list.empty() ? "" : ",") + kind + ":" + std::to_string(n);
  std::printf("devices=%lld concurrency=%d ok=%lld failed=%lld failures=%s wave_s=%s rotations_per_s=%s p50_ms=%s "
              "p99_ms=%s max_ms=%s\n",
              static_cast<long long>(o.devices), o.concurrency, static_cast<long long>(ok),
              static_cast<long long>(failed), failure_list.empty() ? "none" : failure_list.c_str(),
              Fixed(wave_s, 3).c_str(), Fixed(wave_s > 0 ? static_cast<double>(ok) / wave_s : 0, 1).c_str(),
              Fixed(Percentile(latencies, 50), 1).c_str(), Fixed(Percentile(latencies, 99), 1).c_str(),
              Fixed(latencies.empty() ? 0 : latencies.back(), 1).c_str());
  std::fflush(stdout);
  for (auto& d : devices) {
    if (d.session) d.session->Disconnect();
  }
  return failed > 0 ? 3 : 0;
}

}  // namespace
}  // namespace certfleet::bench

int main(int argc, char** argv) { return certfleet::bench::Main(argc, argv); }
