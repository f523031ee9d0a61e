// The companion's Prometheus metrics (docs/api.md, "Metrics"), served at GET /metrics on
// the operator API listener. Counters are bumped by the services as things happen; fleet
// gauges (certificates by status and days to expiry, rotation requests by state) are
// counted by SQL at scrape time, so that no list of rows is ever loaded for them.
// Thread-safe.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "companion/registry.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace certfleet::companion {

struct AuditTask;

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // certfleet_est_requests_total{operation, result}: operation simpleenroll,
  // simplereenroll or cvm; result success, rejected (4xx) or error (5xx).
  void EstRequest(std::string_view operation, int http_status);
  // certfleet_provisioning_requests_total{operation, result}: operation
  // CreateCertificateFromCsr, CreateKeysAndCertificate or RegisterThing; result
  // accepted or rejected.
  void Provisioning(std::string_view operation, bool accepted);
  // certfleet_hook_duration_seconds{event} and certfleet_hook_failures_total{event}.
  void HookRun(std::string_view event, std::chrono::microseconds duration, bool ok);
  // certfleet_api_requests_total{code}, certfleet_api_auth_failures_total.
  void ApiRequest(int http_status);
  void ApiAuthFailure();
  // certfleet_audit_runs_total{result} (completed, failed); for a completed audit,
  // certfleet_audit_findings_total{check} grows by each check's non-compliant count and
  // certfleet_audit_noncompliant_resources{check} is set to it (the latest audit's view).
  void AuditRun(const AuditTask& task);

  // The text exposition format (version 0.0.4). Fails when the registry does.
  shared::Result<std::string> Scrape(Registry& registry, WallTime now);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* est_;
  prometheus::Family<prometheus::Counter>* provisioning_;
  prometheus::Family<prometheus::Histogram>* hook_duration_;
  prometheus::Family<prometheus::Counter>* hook_failures_;
  prometheus::Family<prometheus::Counter>* api_requests_;
  prometheus::Counter* api_auth_failures_;
  prometheus::Family<prometheus::Counter>* audit_runs_;
  prometheus::Family<prometheus::Counter>* audit_findings_;
  prometheus::Family<prometheus::Gauge>* audit_noncompliant_;
  prometheus::Family<prometheus::Gauge>* certs_by_status_;
  prometheus::Family<prometheus::Gauge>* certs_by_expiry_;
  prometheus::Family<prometheus::Gauge>* rotations_by_state_;
};

}  // namespace certfleet::companion
