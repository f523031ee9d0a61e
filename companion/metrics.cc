#include "companion/metrics.h"

#include "companion/audit.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <mutex>

namespace certfleet::companion {

namespace {

std::string ResultOf(int http_status) {
  if (http_status >= 500) return "error";
  if (http_status >= 400) return "rejected";
  return "success";
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  using namespace prometheus;  // NOLINT(google-build-using-namespace): builder calls only
  est_ = &BuildCounter().Name("certfleet_est_requests_total").Help("EST enrollment requests by operation and result").Register(*registry_);
  provisioning_ = &BuildCounter()
                       .Name("certfleet_provisioning_requests_total")
                       .Help("Fleet provisioning requests by operation and result")
                       .Register(*registry_);
  hook_duration_ = &BuildHistogram().Name("certfleet_hook_duration_seconds").Help("Hook run time by event").Register(*registry_);
  hook_failures_ = &BuildCounter()
                        .Name("certfleet_hook_failures_total")
                        .Help("Hook runs that failed (error, timeout, bad answer) by event")
                        .Register(*registry_);
  api_requests_ = &BuildCounter().Name("certfleet_api_requests_total").Help("Operator API requests by HTTP status").Register(*registry_);
  api_auth_failures_ = &BuildCounter()
                            .Name("certfleet_api_auth_failures_total")
                            .Help("Operator API requests refused for missing or bad credentials")
                            .Register(*registry_)
                            .Add({});
  audit_runs_ = &BuildCounter().Name("certfleet_audit_runs_total").Help("Audits run, by result").Register(*registry_);
  audit_findings_ = &BuildCounter()
                         .Name("certfleet_audit_findings_total")
                         .Help("Audit findings (non-compliant resources) by check, over all completed audits")
                         .Register(*registry_);
  audit_noncompliant_ = &BuildGauge()
                             .Name("certfleet_audit_noncompliant_resources")
                             .Help("Non-compliant resources by check in the latest completed audit that ran it")
                             .Register(*registry_);
  certs_by_status_ = &BuildGauge().Name("certfleet_certificates").Help("Certificates by status").Register(*registry_);
  certs_by_expiry_ = &BuildGauge()
                          .Name("certfleet_active_certificates_by_expiry")
                          .Help("ACTIVE certificates by time to notAfter: expired, lt7d, lt30d, lt90d, ge90d")
                          .Register(*registry_);
  rotations_by_state_ = &BuildGauge().Name("certfleet_rotation_requests").Help("Rotation requests by state").Register(*registry_);
}

Metrics::~Metrics() = default;

void Metrics::EstRequest(std::string_view operation, int http_status) {
  est_->Add({{"operation", std::string(operation)}, {"result", ResultOf(http_status)}}).Increment();
}

void Metrics::Provisioning(std::string_view operation, bool accepted) {
  provisioning_->Add({{"operation", std::string(operation)}, {"result", accepted ? "accepted" : "rejected"}}).Increment();
}

void Metrics::HookRun(std::string_view event, std::chrono::microseconds duration, bool ok) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  hook_duration_->Add({{"event", std::string(event)}}, kBuckets).Observe(static_cast<double>(duration.count()) / 1e6);
  auto& failures = hook_failures_->Add({{"event", std::string(event)}});
  if (!ok) failures.Increment();
}

void Metrics::ApiRequest(int http_status) { api_requests_->Add({{"code", std::to_string(http_status)}}).Increment(); }

void Metrics::ApiAuthFailure() { api_auth_failures_->Increment(); }

void Metrics::AuditRun(const AuditTask& task) {
  const bool completed = task.status == "COMPLETED";
  audit_runs_->Add({{"result", completed ? "completed" : "failed"}}).Increment();
  if (!completed) return;
  for (const AuditCheckSummary& c : task.checks) {
    if (c.run_status == "FAILED") continue;
    audit_findings_->Add({{"check", c.check_name}}).Increment(static_cast<double>(c.non_compliant));
    audit_noncompliant_->Add({{"check", c.check_name}}).Set(static_cast<double>(c.non_compliant));
  }
}

shared::Result<std::string> Metrics::Scrape(Registry& registry, WallTime now) {
  CF_ASSIGN_OR_RETURN(FleetCounts counts, registry.CountFleet(now));
  // Concurrent scrapes set the same values; serialize them so a scrape sees one count.
  static std::mutex mu;
  std::lock_guard lock(mu);
  for (const auto& [status, n] : counts.certs_by_status) {
    certs_by_status_->Add({{"status", status}}).Set(static_cast<double>(n));
  }
  for (const auto& [bucket, n] : counts.active_by_expiry) {
    certs_by_expiry_->Add({{"bucket", bucket}}).Set(static_cast<double>(n));
  }
  for (const auto& [state, n] : counts.rotations_by_state) {
    rotations_by_state_->Add({{"state", state}}).Set(static_cast<double>(n));
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace certfleet::companion
