// provision-load: fleet provisioning load generator. Simulates N devices that each hold
// only the claim certificate and provision themselves through the broker's claim
// listener, certfleet topic dialect, as certfleet-agent does: one MQTT connection per
// device (client id = its serial), subscribe to the four reply topics,
// CreateCertificateFromCsr, RegisterThing, disconnect. Up to C devices are in flight.
// Keys and CSRs are made before the timed phase. Prints one line of key=value figures.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/load_stats.h"
#include "bench/mqtt_inbox.h"
#include "shared/core/log.h"
#include "shared/mqtt/client.h"
#include "shared/wire/provisioning.h"
#include "shared/wire/topics.h"
#include "shared/x509/cert.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"

namespace certfleet::bench {
namespace {

namespace sh = shared;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Options {
  std::string host = "127.0.0.1";
  int port = 8884;
  std::string trust_anchor;
  std::string claim_cert;
  std::string claim_key;
  std::string template_name = "gateway";
  int64_t devices = 100;
  int concurrency = 16;
  std::string serial_prefix;
  std::string cn_format = "gw-{serial}";
  double timeout_s = 30;
};

// Everything one simulated device sends, made before the timed phase.
struct Device {
  std::string serial;      // MQTT client id and the SerialNumber parameter
  std::string thing_name;  // the CSR's CN; RegisterThing must answer with it
  sh::EvpPkeyPtr key;
  std::string csr_payload;
  std::string csr_topic, csr_accepted, csr_rejected;
  std::string register_topic, register_accepted, register_rejected;
};

// What the claim connection needs, shared read-only by all devices.
struct Claim {
  std::string anchor_pem;
  std::string cert_pem;
  sh::EvpPkeyPtr key;
  std::string subject;  // the claim certificate's CN: a topic level in the certfleet dialect
};

struct Outcome {
  std::string failure;  // empty on success; else an errorCode or a local kind
  std::string detail;
  double latency_ms = 0;
  // Phases of a success: connect + subscribe, CreateCertificateFromCsr, RegisterThing.
  double connect_ms = 0;
  double create_ms = 0;
  double register_ms = 0;
};


std::string ReplaceAll(std::string s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}


sh::Status PrepareDevice(const Options& o, const Claim& claim, int64_t index, Device& d) {
  d.serial = o.serial_prefix + std::to_string(index);
  d.thing_name = ReplaceAll(o.cn_format, "{serial}", d.serial);
  CF_RETURN_IF_ERROR(sh::ValidateClientId(d.serial).WithContext("serial " + d.serial));
  CF_RETURN_IF_ERROR(sh::ValidateThingName(d.thing_name).WithContext("thing name " + d.thing_name));
  CF_ASSIGN_OR_RETURN(d.key, sh::GenerateKeyPair(sh::KeyType::kEcP256));
  sh::CsrRequest req;
  req.common_name = d.thing_name;
  CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsr(d.key.get(), req));
  CF_ASSIGN_OR_RETURN(d.csr_payload, sh::Encode(sh::CreateCertificateFromCsrRequest{sh::CsrToPem(csr.get())}));

  sh::ProvisioningTopic t;
  t.dialect = sh::Dialect::kCertfleet;
  t.client_id = d.serial;
  t.claim_subject = claim.subject;
  t.operation = sh::Operation::kCreateCertificateFromCsr;
  CF_ASSIGN_OR_RETURN(d.csr_topic, sh::RequestTopic(t));
  CF_ASSIGN_OR_RETURN(d.csr_accepted, sh::ReplyTopic(t, sh::Reply::kAccepted));
  CF_ASSIGN_OR_RETURN(d.csr_rejected, sh::ReplyTopic(t, sh::Reply::kRejected));
  t.operation = sh::Operation::kRegisterThing;
  t.template_name = o.template_name;
  CF_ASSIGN_OR_RETURN(d.register_topic, sh::RequestTopic(t));
  CF_ASSIGN_OR_RETURN(d.register_accepted, sh::ReplyTopic(t, sh::Reply::kAccepted));
  CF_ASSIGN_OR_RETURN(d.register_rejected, sh::ReplyTopic(t, sh::Reply::kRejected));
  return sh::Status::Ok();
}

milliseconds Remaining(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
  return std::max(left, milliseconds(1));
}

// Publishes `payload` and waits for the reply on `accepted` or `rejected`. On success
// returns the accepted payload; otherwise fills `out` with the failure.
std::optional<std::string> Request(sh::MqttClient& client, Inbox& inbox, std::string_view what,
                                   const std::string& topic, const std::string& accepted,
                                   const std::string& rejected, const std::string& payload,
                                   Clock::time_point deadline, Outcome& out) {
  if (sh::Status st = client.Publish(topic, payload, 1, false, Remaining(deadline)); !st.ok()) {
    out = {"publish", std::string(what) + ": " + st.ToString()};
    return std::nullopt;
  }
  for (;;) {
    std::optional<sh::MqttMessage> m = inbox.Pop(deadline);
    if (!m) {
      out = {"timeout", std::string(what) + ": no reply before the deadline"};
      return std::nullopt;
    }
    if (m->topic == accepted) return std::move(m->payload);
    if (m->topic == rejected) {
      auto r = sh::DecodeRejection(m->payload);
      if (!r) {
        out = {"bad_reply", std::string(what) + ": " + r.error().ToString()};
      } else {
        out = {r->error_code, std::string(what) + ": " + std::to_string(r->status_code) + " " + r->error_code + ": " +
                                  r->error_message};
      }
      return std::nullopt;
    }
    // Anything else (a late duplicate of an earlier reply) is not this request's answer.
  }
}

Outcome RunDevice(const Device& d, const Claim& claim, const Options& o, sh::Logger& log) {
  Outcome out;
  sh::MqttOptions mo;
  mo.host = o.host;
  mo.port = o.port;
  mo.client_id = d.serial;
  mo.trust_anchor_pem = claim.anchor_pem;
  mo.client_cert_pem = claim.cert_pem;
  mo.client_key = claim.key.get();
  auto client = sh::MqttClient::Create(mo, log);
  if (!client) return {"client", client.error().ToString()};
  auto inbox = std::make_shared<Inbox>();
  (*client)->SetMessageHandler([inbox](const sh::MqttMessage& m) { inbox->Push(m); });

  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s));
  auto finish = [&](Outcome result) {
    (*client)->Disconnect();
    return result;
  };
  if (sh::Status st = (*client)->Connect(Remaining(deadline)); !st.ok()) {
    return finish({st.code() == sh::Code::kPermissionDenied ? "connect_denied" : "connect", st.ToString()});
  }
  for (const std::string* f : {&d.csr_accepted, &d.csr_rejected, &d.register_accepted, &d.register_rejected}) {
    if (sh::Status st = (*client)->Subscribe(*f, 1, Remaining(deadline)); !st.ok()) {
      return finish({"subscribe", st.ToString()});
    }
  }

  const auto subscribed = Clock::now();
  auto created_payload = Request(**client, *inbox, "CreateCertificateFromCsr", d.csr_topic, d.csr_accepted,
                                 d.csr_rejected, d.csr_payload, deadline, out);
  if (!created_payload) return finish(out);
  auto created = sh::DecodeCreateCertificateFromCsrAccepted(*created_payload);
  if (!created) return finish({"bad_reply", "CreateCertificateFromCsr: " + created.error().ToString()});
  auto cert = sh::CertFromPem(created->certificate_pem);
  if (!cert || !sh::SamePublicKey(X509_get0_pubkey(cert->get()), d.key.get())) {
    return finish({"bad_reply", "CreateCertificateFromCsr: the certificate is not for the CSR's key"});
  }

  const auto created_at = Clock::now();
  auto register_payload =
      sh::Encode(sh::RegisterThingRequest{created->certificate_ownership_token, {{"SerialNumber", d.serial}}});
  if (!register_payload) return finish({"encode", register_payload.error().ToString()});
  auto registered_payload = Request(**client, *inbox, "RegisterThing", d.register_topic, d.register_accepted,
                                    d.register_rejected, *register_payload, deadline, out);
  if (!registered_payload) return finish(out);
  const auto end = Clock::now();
  auto registered = sh::DecodeRegisterThingAccepted(*registered_payload);
  if (!registered) return finish({"bad_reply", "RegisterThing: " + registered.error().ToString()});
  if (registered->thing_name != d.thing_name) {
    return finish({"bad_reply", "RegisterThing: thingName " + registered->thing_name + ", expected " + d.thing_name});
  }
  auto ms = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  out.latency_ms = ms(start, end);
  out.connect_ms = ms(start, subscribed);
  out.create_ms = ms(subscribed, created_at);
  out.register_ms = ms(created_at, end);
  return finish(out);
}

struct WorkerStats {
  std::vector<double> latencies_ms;
  std::vector<double> connect_ms, create_ms, register_ms;
  std::map<std::string, int64_t> failures;
  std::vector<std::string> details;  // the first few
};

sh::Result<Claim> LoadClaim(const Options& o) {
  Claim c;
  CF_ASSIGN_OR_RETURN(c.anchor_pem, ReadFile(o.trust_anchor));
  CF_ASSIGN_OR_RETURN(c.cert_pem, ReadFile(o.claim_cert));
  CF_ASSIGN_OR_RETURN(std::string key_pem, ReadFile(o.claim_key));
  CF_ASSIGN_OR_RETURN(c.key, sh::PrivateKeyFromPem(key_pem));
  CF_ASSIGN_OR_RETURN(sh::X509Ptr cert, sh::CertFromPem(c.cert_pem));
  c.subject = sh::NameCommonName(X509_get_subject_name(cert.get()));
  CF_RETURN_IF_ERROR(sh::ValidateClaimSubject(c.subject).WithContext("the claim certificate's CN"));
  return c;
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"provision-load: fleet provisioning (MQTT, certfleet dialect) load generator"};
  app.add_option("--host", o.host, "broker host");
  app.add_option("--port", o.port, "the broker's claim listener port")->check(CLI::Range(1, 65535));
  app.add_option("--trust-anchor", o.trust_anchor, "PEM CA certificate(s) the broker certificate must chain to")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--claim-cert", o.claim_cert, "PEM claim certificate (chain)")->required()->check(CLI::ExistingFile);
  app.add_option("--claim-key", o.claim_key, "PEM claim key")->required()->check(CLI::ExistingFile);
  app.add_option("--template", o.template_name, "provisioning template name");
  app.add_option("--devices,-n", o.devices, "simulated devices")->check(CLI::Range(int64_t{1}, int64_t{1'000'000}));
  app.add_option("--concurrency,-c", o.concurrency, "devices in flight at once")->check(CLI::Range(1, 1024));
  app.add_option("--serial-prefix", o.serial_prefix, "device serials are PREFIX<n> (default SN-<pid>-<time>-)");
  app.add_option("--cn-format", o.cn_format, "thing name (the CSR's CN) from the serial; {serial} is replaced");
  app.add_option("--timeout", o.timeout_s, "per-device deadline in seconds, connect to RegisterThing reply")
      ->check(CLI::Range(0.1, 3600.0));
  CLI11_PARSE(app, argc, argv);
  if (o.serial_prefix.empty()) {
    o.serial_prefix = "SN-" + std::to_string(getpid()) + "-" + std::to_string(std::time(nullptr)) + "-";
  }
  auto fail = [](const sh::Status& st) {
    std::fprintf(stderr, "provision-load: %s\n", st.ToString().c_str());
    return 1;
  };
  signal(SIGPIPE, SIG_IGN);
  sh::MqttLibrary mqtt_library;
  sh::StderrLogger log(sh::LogLevel::kError);

  auto claim = LoadClaim(o);
  if (!claim) return fail(claim.error());
  std::vector<Device> devices(static_cast<size_t>(o.devices));
  if (sh::Status st = ParallelFor(o.devices, [&](int64_t i) {
        return PrepareDevice(o, *claim, i, devices[static_cast<size_t>(i)]);
      });
      !st.ok()) {
    return fail(st.WithContext("preparing devices"));
  }

  int workers = static_cast<int>(std::min<int64_t>(o.concurrency, o.devices));
  std::vector<WorkerStats> stats(static_cast<size_t>(workers));
  std::atomic<int64_t> next{0};
  const double cpu_start = ProcessCpuSeconds();
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < workers; ++t) {
    threads.emplace_back([&, t] {
      WorkerStats& s = stats[static_cast<size_t>(t)];
      for (int64_t i; (i = next.fetch_add(1)) < o.devices;) {
        Outcome r = RunDevice(devices[static_cast<size_t>(i)], *claim, o, log);
        if (r.failure.empty()) {
          s.latencies_ms.push_back(r.latency_ms);
          s.connect_ms.push_back(r.connect_ms);
          s.create_ms.push_back(r.create_ms);
          s.register_ms.push_back(r.register_ms);
        } else {
          ++s.failures[r.failure];
          if (s.details.size() < 3) s.details.push_back(devices[static_cast<size_t>(i)].serial + ": " + r.detail);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu_used = ProcessCpuSeconds() - cpu_start;

  std::vector<double> all, connect, create, reg;
  std::map<std::string, int64_t> failures;
  int64_t failed = 0;
  std::vector<std::string> details;
  for (auto& s : stats) {
    all.insert(all.end(), s.latencies_ms.begin(), s.latencies_ms.end());
    connect.insert(connect.end(), s.connect_ms.begin(), s.connect_ms.end());
    create.insert(create.end(), s.create_ms.begin(), s.create_ms.end());
    reg.insert(reg.end(), s.register_ms.begin(), s.register_ms.end());
    for (const auto& [kind, n] : s.failures) {
      failures[kind] += n;
      failed += n;
    }
    for (auto& d : s.details) {
      if (details.size() < 5) details.push_back(std::move(d));
    }
  }
  for (auto* v : {&all, &connect, &create, &reg}) std::sort(v->begin(), v->end());
  const auto ok = static_cast<int64_t>(all.size());
  std::string failure_list;
  for (const auto& [kind, n] : failures) failure_list += (failure_list.empty() ? "" : ",") + kind + ":" + std::to_string(n);
  for (const auto& d : details) std::fprintf(stderr, "provision-load: failure: %s\n", d.c_str());
  std::printf("devices=%lld concurrency=%d ok=%lld failed=%lld failures=%s seconds=%s devices_per_s=%s p50_ms=%s "
              "p99_ms=%s max_ms=%s connect_p50_ms=%s create_p50_ms=%s register_p50_ms=%s client_cpu_s=%s\n",
              static_cast<long long>(o.devices), o.concurrency, static_cast<long long>(ok),
              static_cast<long long>(failed), failure_list.empty() ? "none" : failure_list.c_str(),
              Fixed(seconds, 3).c_str(), Fixed(seconds > 0 ? static_cast<double>(ok) / seconds : 0, 1).c_str(),
              Fixed(Percentile(all, 50), 2).c_str(), Fixed(Percentile(all, 99), 2).c_str(),
              Fixed(all.empty() ? 0 : all.back(), 2).c_str(), Fixed(Percentile(connect, 50), 2).c_str(),
              Fixed(Percentile(create, 50), 2).c_str(), Fixed(Percentile(reg, 50), 2).c_str(),
              Fixed(cpu_used, 3).c_str());
  std::fflush(stdout);
  return failed > 0 || ok == 0 ? 3 : 0;
}

}  // namespace
}  // namespace certfleet::bench

int main(int argc, char** argv) { return certfleet::bench::Main(argc, argv); }
