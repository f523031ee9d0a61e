// est-load: EST load generator. N concurrent clients, each request on a new TCP+TLS
// connection (full handshake, no resumption), against any EST server; or, with
// --mode handshake, mTLS handshakes only (to compare with `openssl s_server`).
// Prints one line of key=value figures (or JSON with --json).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "bench/est_client.h"
#include "bench/load_stats.h"
#include "shared/core/base64.h"
#include "shared/x509/csr.h"
#include "shared/x509/key.h"
#include "shared/x509/openssl_error.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::bench {
namespace {

namespace sh = shared;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string url;
  std::string trust_anchor;
  std::string server_name;
  std::string client_cert;
  std::string client_key;
  std::string user;
  std::string password;
  int concurrency = 8;
  int64_t requests = 0;  // 0: use duration
  double duration_s = 0;
  int64_t prepare = 20000;  // CSRs prepared for a --duration run
  std::string mode = "enroll";
  std::string key_type = "ec-p256";
  int key_pool = 0;  // 0: one key per CSR for EC, 16 keys shared round-robin for RSA
  std::string cn_prefix;
  bool tls12 = false;
  double timeout_s = 30;
  bool json = false;
  std::string latency_file;
};

// One prepared simpleenroll: the complete HTTP request, and which key's
// SubjectPublicKeyInfo the issued certificate must carry.
struct PreparedRequest {
  std::string http;
  size_t key_index = 0;
};

struct Workload {
  std::vector<std::string> spkis;  // one per key in the pool
  std::vector<PreparedRequest> requests;
};

std::string SpkiDer(X509_PUBKEY* pub) {
  unsigned char* der = nullptr;
  int len = i2d_X509_PUBKEY(pub, &der);
  if (len <= 0) return {};
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// Generates keys and CSRs and renders every HTTP request up front, so that neither key
// generation nor CSR signing competes with the server during the timed phase.
sh::Result<Workload> PrepareEnroll(const Options& o, const EstUrl& url, int64_t count) {
  CF_ASSIGN_OR_RETURN(sh::KeyType type, sh::ParseKeyType(o.key_type));
  bool rsa = type == sh::KeyType::kRsa2048 || type == sh::KeyType::kRsa3072;
  int64_t pool = o.key_pool > 0 ? o.key_pool : (rsa ? 16 : count);
  pool = std::min(pool, count);
  std::vector<sh::EvpPkeyPtr> keys(static_cast<size_t>(pool));
  Workload w;
  w.spkis.resize(static_cast<size_t>(pool));
  CF_RETURN_IF_ERROR(ParallelFor(pool, [&](int64_t i) -> sh::Status {
    CF_ASSIGN_OR_RETURN(keys[static_cast<size_t>(i)], sh::GenerateKeyPair(type));
    return sh::Status::Ok();
  }));

  std::string head = "POST " + url.base_path + "/simpleenroll HTTP/1.1\r\n" + "Host: " + url.authority + "\r\n" +
                     "User-Agent: certfleet-est-load\r\n" + "Accept: */*\r\n" +
                     "Content-Type: application/pkcs10\r\n";
  if (!o.user.empty()) {
    head += "Authorization: Basic " + sh::Base64EncodeLine(o.user + ":" + o.password) + "\r\n";
  }
  head += "Connection: close\r\n";
  w.requests.resize(static_cast<size_t>(count));
  CF_RETURN_IF_ERROR(ParallelFor(count, [&](int64_t i) -> sh::Status {
    size_t k = static_cast<size_t>(i % pool);
    sh::CsrRequest req;
    req.common_name = o.cn_prefix + "-" + std::to_string(i);
    CF_ASSIGN_OR_RETURN(sh::X509ReqPtr csr, sh::BuildCsr(keys[k].get(), req));
    if (i < pool) w.spkis[k] = SpkiDer(X509_REQ_get_X509_PUBKEY(csr.get()));
    std::string body = sh::Base64Encode(sh::CsrToDer(csr.get()));
    PreparedRequest& p = w.requests[static_cast<size_t>(i)];
    p.http = head + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    p.key_index = k;
    return sh::Status::Ok();
  }));
  return w;
}

// "" when `body` is base64 of a certs-only PKCS#7 holding exactly one certificate for
// `spki`; otherwise why not.
std::string CheckEnrollBody(const std::string& body, const std::string& spki) {
  auto der = sh::Base64Decode(body);
  if (!der) return "body is not base64: " + der.error().message();
  auto certs = sh::ParseCertsOnly(*der);
  if (!certs) return "body is not a certs-only PKCS#7: " + certs.error().message();
  if (certs->size() != 1) return "expected one certificate, got " + std::to_string(certs->size());
  if (SpkiDer(X509_get_X509_PUBKEY(certs->front().get())) != spki) return "the certificate is not for the CSR's key";
  return "";
}

struct WorkerStats {
  std::vector<double> latencies_ms;  // successful requests only
  std::map<std::string, int64_t> failures;
  std::vector<std::string> details;  // the first few failure details
};

struct Summary {
  std::string mode;
  int concurrency = 0;
  int64_t requests = 0;
  int64_t ok = 0;
  int64_t failed = 0;
  double seconds = 0;
  double rate_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double max_ms = 0;
  double client_cpu_s = 0;  // this process's user+system CPU during the timed phase
  std::map<std::string, int64_t> failures;
};

void RunWorker(const EstClient& client, const Options& o, const Workload& work, std::atomic<int64_t>& next,
               int64_t limit, std::optional<Clock::time_point> deadline, WorkerStats& stats) {
  const bool enroll = o.mode == "enroll";
  for (;;) {
    if (deadline && Clock::now() >= *deadline) return;
    int64_t i = next.fetch_add(1);
    if (limit > 0 && i >= limit) return;
    const PreparedRequest* req = enroll ? &work.requests[static_cast<size_t>(i)] : nullptr;
    auto start = Clock::now();
    Exchange e = client.Run(enroll ? std::string_view(req->http) : std::string_view());
    auto end = Clock::now();
    std::string failure = e.failure;
    std::string detail = e.detail;
    if (failure.empty() && enroll) {
      if (e.status != 200) {
        failure = "status_" + std::to_string(e.status);
        detail = failure + ": " + e.body.substr(0, 200);
        while (!detail.empty() && std::isspace(static_cast<unsigned char>(detail.back()))) detail.pop_back();
      } else if (std::string why = CheckEnrollBody(e.body, work.spkis[req->key_index]); !why.empty()) {
        failure = "bad_body";
        detail = why;
      }
    }
    if (failure.empty()) {
      stats.latencies_ms.push_back(std::chrono::duration<double, std::milli>(end - start).count());
    } else {
      ++stats.failures[failure];
      if (stats.details.size() < 3) stats.details.push_back(detail);
    }
  }
}

void Print(const Summary& s, const Options& o) {
  if (o.json) {
    nlohmann::json j = {{"mode", s.mode},
                        {"concurrency", s.concurrency},
                        {"requests", s.requests},
                        {"ok", s.ok},
                        {"failed", s.failed},
                        {"seconds", s.seconds},
                        {"rate_per_s", s.rate_per_s},
                        {"p50_ms", s.p50_ms},
                        {"p99_ms", s.p99_ms},
                        {"max_ms", s.max_ms},
                        {"client_cpu_s", s.client_cpu_s},
                        {"failures", s.failures},
                        {"tls", o.tls12 ? "1.2" : "1.3"},
                        {"url", o.url}};
    if (s.mode == "enroll") j["key_type"] = o.key_type;
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::string failures;
  for (const auto& [kind, n] : s.failures) failures += (failures.empty() ? "" : ",") + kind + ":" + std::to_string(n);
  std::string line = "mode=" + s.mode + " concurrency=" + std::to_string(s.concurrency) +
                     " requests=" + std::to_string(s.requests) + " ok=" + std::to_string(s.ok) +
                     " failed=" + std::to_string(s.failed) + " seconds=" + Fixed(s.seconds, 3) +
                     " rate_per_s=" + Fixed(s.rate_per_s, 1) + " p50_ms=" + Fixed(s.p50_ms, 2) +
                     " p99_ms=" + Fixed(s.p99_ms, 2) + " max_ms=" + Fixed(s.max_ms, 2) +
                     " client_cpu_s=" + Fixed(s.client_cpu_s, 3) +
                     " tls=" + (o.tls12 ? "1.2" : "1.3");
  if (s.mode == "enroll") line += " key_type=" + o.key_type;
  line += " failures=" + (failures.empty() ? std::string("none") : failures);
  std::printf("%s\n", line.c_str());
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"est-load: EST simpleenroll / mTLS handshake load generator"};
  app.add_option("--url", o.url, "https://HOST:PORT[/LABEL] of the EST server")->required();
  app.add_option("--trust-anchor", o.trust_anchor, "PEM CA certificate(s) the server certificate must chain to")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--server-name", o.server_name, "name to check in the server certificate (default: URL host)");
  auto* cert_opt = app.add_option("--client-cert", o.client_cert, "PEM client certificate chain (mTLS)")
                       ->check(CLI::ExistingFile);
  auto* key_opt = app.add_option("--client-key", o.client_key, "PEM client key (mTLS)")->check(CLI::ExistingFile);
  cert_opt->needs(key_opt);
  key_opt->needs(cert_opt);
  auto* user_opt = app.add_option("--user", o.user, "HTTP Basic user name");
  app.add_option("--password", o.password, "HTTP Basic password (EST one-time tokens work once)")->needs(user_opt);
  app.add_option("--concurrency,-c", o.concurrency, "concurrent clients")->check(CLI::Range(1, 4096));
  auto* req_opt = app.add_option("--requests,-n", o.requests, "total requests (default 1000)")
                      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
  auto* dur_opt = app.add_option("--duration", o.duration_s, "run for this many seconds instead")
                      ->check(CLI::Range(0.1, 86400.0));
  req_opt->excludes(dur_opt);
  app.add_option("--prepare", o.prepare, "CSRs prepared for a --duration enroll run; the run stops early if used up")
      ->check(CLI::Range(int64_t{1}, int64_t{10'000'000}));
  app.add_option("--mode", o.mode, "enroll: simpleenroll; handshake: TLS handshake with client cert, then close")
      ->check(CLI::IsMember({"enroll", "handshake"}));
  app.add_option("--key-type", o.key_type, "CSR key type: ec-p256, ec-p384, rsa-2048, rsa-3072")
      ->check(CLI::IsMember({"ec-p256", "ec-p384", "rsa-2048", "rsa-3072"}));
  app.add_option("--key-pool", o.key_pool, "distinct CSR keys, reused round-robin (default: one per CSR for EC, 16 for RSA)")
      ->check(CLI::Range(1, 10'000'000));
  app.add_option("--cn-prefix", o.cn_prefix, "CSR common names are PREFIX-<n> (default bench-<pid>-<time>)");
  app.add_flag("--tls12", o.tls12, "use TLS 1.2 (default: TLS 1.3)");
  app.add_option("--timeout", o.timeout_s, "per-connection socket timeout in seconds")->check(CLI::Range(0.1, 3600.0));
  app.add_flag("--json", o.json, "print the figures as one JSON object");
  app.add_option("--latency-file", o.latency_file,
                 "also write each successful request's latency in ms, one per line (for merging runs)");
  CLI11_PARSE(app, argc, argv);

  if (o.requests == 0 && o.duration_s == 0) o.requests = 1000;
  if (o.cn_prefix.empty()) o.cn_prefix = "bench-" + std::to_string(getpid()) + "-" + std::to_string(std::time(nullptr));
  auto fail = [](const sh::Status& st) {
    std::fprintf(stderr, "est-load: %s\n", st.ToString().c_str());
    return 1;
  };
  signal(SIGPIPE, SIG_IGN);  // OpenSSL writes to sockets the server may have closed

  auto url = ParseEstUrl(o.url);
  if (!url) return fail(url.error().WithContext("--url"));
  ClientOptions co;
  co.trust_anchor_file = o.trust_anchor;
  co.server_name = o.server_name;
  co.client_cert_file = o.client_cert;
  co.client_key_file = o.client_key;
  co.tls12_only = o.tls12;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  auto client = EstClient::Create(*url, co);
  if (!client) return fail(client.error());

  Workload work;
  int64_t limit = o.requests;
  if (o.mode == "enroll") {
    int64_t count = o.requests > 0 ? o.requests : o.prepare;
    if (o.cn_prefix.size() + 1 + std::to_string(count).size() > 64) {
      return fail(sh::Status(sh::Code::kInvalidArgument, "--cn-prefix too long for 64-character common names"));
    }
    auto w = PrepareEnroll(o, *url, count);
    if (!w) return fail(w.error().WithContext("preparing CSRs"));
    work = std::move(*w);
    limit = count;
  }

  std::vector<WorkerStats> stats(static_cast<size_t>(o.concurrency));
  std::atomic<int64_t> next{0};
  std::optional<Clock::time_point> deadline;
  const double cpu_start = ProcessCpuSeconds();
  auto start = Clock::now();
  if (o.duration_s > 0) {
    deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration_s));
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < o.concurrency; ++t) {
    threads.emplace_back(RunWorker, std::cref(**client), std::cref(o), std::cref(work), std::ref(next), limit,
                         deadline, std::ref(stats[static_cast<size_t>(t)]));
  }
  for (auto& t : threads) t.join();
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu_used = ProcessCpuSeconds() - cpu_start;

  Summary s;
  s.mode = o.mode;
  s.concurrency = o.concurrency;
  std::vector<double> all;
  std::vector<std::string> details;
  for (auto& w : stats) {
    all.insert(all.end(), w.latencies_ms.begin(), w.latencies_ms.end());
    for (const auto& [kind, n] : w.failures) {
      s.failures[kind] += n;
      s.failed += n;
    }
    for (auto& d : w.details) {
      if (details.size() < 5) details.push_back(std::move(d));
    }
  }
  std::sort(all.begin(), all.end());
  s.ok = static_cast<int64_t>(all.size());
  s.requests = s.ok + s.failed;
  s.seconds = seconds;
  s.client_cpu_s = cpu_used;
  s.rate_per_s = seconds > 0 ? static_cast<double>(s.ok) / seconds : 0;
  s.p50_ms = Percentile(all, 50);
  s.p99_ms = Percentile(all, 99);
  s.max_ms = all.empty() ? 0 : all.back();
  if (deadline && o.mode == "enroll" && s.requests >= limit && seconds < o.duration_s) {
    std::fprintf(stderr, "est-load: all %lld prepared CSRs used before the deadline; raise --prepare\n",
                 static_cast<long long>(limit));
  }
  if (!o.latency_file.empty()) {
    std::FILE* f = std::fopen(o.latency_file.c_str(), "w");
    if (f == nullptr) return fail(sh::Status(sh::Code::kInvalidArgument, "cannot write " + o.latency_file));
    for (double ms : all) std::fprintf(f, "%.3f\n", ms);
    if (std::fclose(f) != 0) return fail(sh::Status(sh::Code::kInternal, "writing " + o.latency_file + " failed"));
  }
  for (const auto& d : details) std::fprintf(stderr, "est-load: failure: %s\n", d.c_str());
  Print(s, o);
  std::fflush(stdout);
  if (s.failed > 0) return 3;
  return s.ok > 0 ? 0 : 3;
}

}  // namespace
}  // namespace certfleet::bench

int main(int argc, char** argv) { return certfleet::bench::Main(argc, argv); }
