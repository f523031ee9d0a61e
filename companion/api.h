// The operator API (docs/api.md): a route table, per-route roles and rate limits,
// authentication (operator client certificates or hashed bearer tokens), and the JSON
// handlers over the registry. Transport-free: ApiServer (api_server.h) feeds it
// requests from its HTTPS listener; tests call Handle directly.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "companion/config.h"
#include "companion/init.h"
#include "companion/metrics.h"
#include "companion/provisioning_template.h"
#include "companion/registry.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace certfleet::companion {

struct ApiRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query
  std::multimap<std::string, std::string> query;
  std::string authorization;  // the Authorization header
  std::string body;
  std::string remote;  // "address:port", for security events
  // The client certificate's subject CN, set by the TLS layer only when the certificate
  // chains to api.client_ca_file.
  std::optional<std::string> client_cert_cn;
};

struct ApiResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// {"error": <code>, "message": <text>}; error is a short stable word (bad_request,
// unauthorized, forbidden, not_found, conflict, rate_limited, ...).
ApiResponse JsonError(int status, std::string_view error, std::string_view message);

// The API's JSON for a rotation request, a certificate (its PEM only `with_pem`) and a
// thing; certfleetctl's local --json prints the same.
nlohmann::json RotationToJson(const RotationRecord& r);
nlohmann::json CertToJson(const CertRecord& c, bool with_pem);
nlohmann::json ThingToJson(const ThingRecord& t);

// Who is calling.
struct Principal {
  std::string name;  // "token:<name>" or "cert:<CN>"
  ApiRole role = ApiRole::kReadOnly;
};

// At most `max_calls` accepted per `window` for each key (a sliding window over the
// monotonic clock). Thread-safe.
class RateLimiter {
 public:
  RateLimiter(const shared::Clock& clock, int max_calls, std::chrono::seconds window);
  // nullopt: accepted (and counted). Otherwise refused, with how long until a call would
  // be accepted (rounded up to whole seconds, at least 1).
  std::optional<std::chrono::seconds> TryAcquire(const std::string& key);
  // Takes back the latest accepted call of `key` (the action it allowed did not happen).
  void Release(const std::string& key);

 private:
  const shared::Clock& clock_;
  const int max_calls_;
  const std::chrono::seconds window_;
  std::mutex mu_;
  std::map<std::string, std::deque<shared::MonoTime>> calls_;
};

// Path parameters of a matched route: "/things/{name}" matching "/things/gw-1" gives
// {"name": "gw-1"}.
using PathParams = std::map<std::string, std::string>;
using ApiHandler = std::function<ApiResponse(const ApiRequest&, const PathParams&, const Principal&)>;

struct Route {
  std::string method;
  std::string pattern;  // literal segments and {param} segments; a param matches one non-empty segment
  // The least role allowed; nullopt: no credentials needed at all.
  std::optional<ApiRole> min_role = ApiRole::kReadOnly;
  ApiHandler handler;
};

class Router {
 public:
  // Adds a route. Registering one method + pattern twice is a programming error (aborts).
  void Add(Route route);
  struct Match {
    const Route* route = nullptr;  // null: no route
    PathParams params;
    bool path_known = false;        // some route has this path with another method (405)
    std::vector<std::string> allow;  // the methods of that path
  };
  Match Find(std::string_view method, std::string_view path) const;
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

// Authenticates a request: a verified client certificate whose CN is mapped to a role,
// else "Authorization: Bearer <secret>" against the hashed token table. Failures are
// recorded as security events ("api_auth_failed") and answered 401 without saying whether
// a token exists, is expired or revoked.
class ApiAuthenticator {
 public:
  ApiAuthenticator(Registry& registry, const ApiConfig& config, const shared::Clock& clock, shared::Logger& log);
  // The principal, or the 401 response.
  std::variant<Principal, ApiResponse> Authenticate(const ApiRequest& request);
  // Records a refused request as a security event of `kind` (and logs it), at most a
  // few a minute per remote address; the rest are dropped (metrics still count them).
  void RecordRefusal(const ApiRequest& request, std::string_view kind, const std::string& subject,
                     const std::string& why);

 private:
  ApiResponse Unauthorized(const ApiRequest& request, const std::string& subject, const std::string& why);
  Registry& registry_;
  const ApiConfig& config_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  RateLimiter event_limit_;  // security events for failed authentications, per address
};

class AuditEngine;

struct ApiServiceOptions {
  std::map<std::string, ProvisioningTemplate> templates;  // what GET /templates lists
  Metrics* metrics = nullptr;                   // null: /metrics answers 404
  // The audit endpoints (POST /start-audit, GET /list-audits, GET /get-audit-status/{id});
  // null: they answer 404. The engine must be started (its thread runs queued audits).
  AuditEngine* audit = nullptr;
  // Called after POST /things/{name}/quarantine or /unquarantine changed the registry (to
  // push the broker's quarantine list now); may be empty.
  std::function<void()> quarantine_changed;
  // How often POST /start-audit is accepted, fleet-wide.
  std::chrono::seconds audit_start_interval = std::chrono::minutes(5);
};

class ApiService {
 public:
  // `state` (registry and config) must outlive the service. Thread-safe.
  ApiService(CompanionState& state, ApiServiceOptions options, const shared::Clock& clock, shared::Logger& log);

  ApiResponse Handle(const ApiRequest& request);
  const Router& router() const { return router_; }

 private:
  void AddRoutes();
  ApiResponse ListThings(const ApiRequest& r);
  ApiResponse DescribeThing(const PathParams& p);
  ApiResponse SetQuarantine(const ApiRequest& r, const PathParams& p, const Principal& who, bool on);
  ApiResponse ListCertificates(const ApiRequest& r);
  ApiResponse DescribeCertificate(const PathParams& p);
  ApiResponse ChangeCertificate(const ApiRequest& r, const PathParams& p, const Principal& who, CertStatus status);
  ApiResponse ListRotations(const ApiRequest& r);
  ApiResponse DescribeRotation(const PathParams& p);
  ApiResponse CreateRotation(const ApiRequest& r, const Principal& who);
  ApiResponse CancelRotation(const PathParams& p);
  ApiResponse ListEnrollmentTokens(const ApiRequest& r);
  ApiResponse CreateEnrollmentToken(const ApiRequest& r, const Principal& who);
  ApiResponse ListTemplates();
  ApiResponse DescribeTemplate(const PathParams& p);
  ApiResponse ListEvents(const ApiRequest& r);
  ApiResponse StartAudit(const ApiRequest& r, const Principal& who);
  ApiResponse ListAudits(const ApiRequest& r);
  ApiResponse GetAuditStatus(const ApiRequest& r, const PathParams& p);
  ApiResponse ListSuppressions(const ApiRequest& r);
  ApiResponse CreateSuppression(const ApiRequest& r, const Principal& who);
  ApiResponse DeleteSuppression(const ApiRequest& r);
  ApiResponse Scrape();

  CompanionState& state_;
  ApiServiceOptions options_;
  const shared::Clock& clock_;
  shared::Logger& log_;
  ApiAuthenticator auth_;
  Router router_;
  std::shared_ptr<RateLimiter> audit_limiter_;  // POST /start-audit, counted only for valid requests
};

}  // namespace certfleet::companion
