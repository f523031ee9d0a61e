#include "companion/api.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "companion/api_input.h"
#include "companion/audit.h"
#include "companion/est_service.h"
#include "companion/operations.h"
#include "shared/core/duration.h"

namespace certfleet::companion {

using nlohmann::json;
using shared::Code;
namespace sh = shared;

namespace {

constexpr size_t kMaxBearerChars = 128;
constexpr int kAuthEventsPerWindow = 10;  // per remote address and minute; more are only counted

ApiResponse Json(int status, const json& body) {
  ApiResponse r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  return r;
}

std::string AddressOnly(const std::string& remote) {
  auto colon = remote.rfind(':');
  return colon == std::string::npos ? remote : remote.substr(0, colon);
}

std::vector<std::string> Split(std::string_view path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    out.emplace_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

// Cursors of newest-first lists: "<unix seconds>.<key>" of the last row shown.
std::string PositionCursor(std::string_view kind, sh::WallTime time, const std::string& key) {
  return EncodeCursor(kind, std::to_string(sh::ToUnixSeconds(time)) + "." + key);
}

sh::Result<ListPosition> DecodePositionCursor(std::string_view kind, std::string_view cursor) {
  CF_ASSIGN_OR_RETURN(std::string key, DecodeCursor(kind, cursor));
  CF_ASSIGN_OR_RETURN(PositionKey pos, SplitPositionKey(key));
  return ListPosition{sh::FromUnixSeconds(pos.seconds), std::move(pos.rest)};
}

// An optional RFC 3339 query value: sets `out` when `text` holds one.
sh::Status OptionalTime(std::string_view name, const std::optional<std::string>& text,
                        std::optional<sh::WallTime>& out) {
  if (!text) return sh::Status::Ok();
  CF_ASSIGN_OR_RETURN(out, ParseApiTime(name, *text));
  return sh::Status::Ok();
}

sh::Status OnlyParams(const ApiRequest& r, std::initializer_list<std::string_view> known) {
  for (const auto& [k, v] : r.query) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      return sh::Status(Code::kInvalidArgument, "unknown query parameter '" + k.substr(0, 64) + "'");
    }
  }
  return sh::Status::Ok();
}

// A request's query, checked once: only `known` parameters, none repeated, and "limit"
// (when known) parsed.
struct Query {
  const ApiRequest* request = nullptr;
  int64_t limit = kApiDefaultPageSize;
  std::optional<std::string> Get(const std::string& name) const {
    auto it = request->query.find(name);
    return it == request->query.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
};

sh::Result<Query> ReadQuery(const ApiRequest& r, std::initializer_list<std::string_view> known) {
  CF_RETURN_IF_ERROR(OnlyParams(r, known));
  for (const std::string_view name : known) {
    if (r.query.count(std::string(name)) > 1) {
      return sh::Error(Code::kInvalidArgument, "query parameter '" + std::string(name) + "' is repeated");
    }
  }
  Query q{&r};
  if (std::find(known.begin(), known.end(), "limit") != known.end()) {
    CF_ASSIGN_OR_RETURN(q.limit, ParseApiLimit(q.Get("limit")));
  }
  return q;
}

json EventJson(const SecurityEvent& e) {
  return {{"eventId", e.id}, {"at", sh::FormatRfc3339(e.at)}, {"kind", e.kind}, {"subject", e.subject}, {"detail", e.detail}};
}

json TemplateJson(const ProvisioningTemplate& t, bool full) {
  json j = {{"templateName", t.name}, {"description", t.description}};
  if (!full) return j;
  json params = json::array();
  for (const auto& [name, p] : t.parameters) {
    json pj = {{"name", name}, {"type", p.type == TemplateParameter::Type::kNumber ? "Number" : "String"}};
    if (p.default_value) pj["default"] = *p.default_value;
    if (!p.allowed_values.empty()) pj["allowedValues"] = p.allowed_values;
    if (!p.allowed_pattern.empty()) pj["allowedPattern"] = p.allowed_pattern;
    params.push_back(std::move(pj));
  }
  j["parameters"] = std::move(params);
  j["allowReprovisioning"] = t.certfleet.allow_reprovisioning;
  j["claimSubjects"] = t.certfleet.claim_subjects;
  j["createsPolicy"] = t.policy.has_value();
  return j;
}

}  // namespace

json CertToJson(const CertRecord& c, bool with_pem) {
  json j = {{"certificateId", c.id},
            {"thingName", c.thing_name},
            {"serialNumber", c.serial},
            {"subject", c.subject},
            {"status", CertStatusName(c.status)},
            {"notBefore", sh::FormatRfc3339(c.not_before)},
            {"notAfter", sh::FormatRfc3339(c.not_after)},
            {"issuedAt", sh::FormatRfc3339(c.issued_at)},
            {"statusChangedAt", sh::FormatRfc3339(c.status_changed_at)},
            {"source", c.source},
            {"current", c.status == CertStatus::kActive && !c.superseded_by}};
  if (c.superseded_by) j["supersededBy"] = *c.superseded_by;
  if (c.proven_at) j["provenAt"] = sh::FormatRfc3339(*c.proven_at);
  if (c.retire_at) j["retireAt"] = sh::FormatRfc3339(*c.retire_at);
  if (with_pem) j["certificatePem"] = c.pem;
  return j;
}

json ThingToJson(const ThingRecord& t) {
  json j = {{"thingName", t.name}, {"createdAt", sh::FormatRfc3339(t.created_at)}};
  if (t.current_cert_id) {
    j["certificateId"] = *t.current_cert_id;
    j["notAfter"] = sh::FormatRfc3339(*t.current_not_after);
  }
  if (t.last_seen_at) j["lastSeenAt"] = sh::FormatRfc3339(*t.last_seen_at);
  if (t.quarantined_at) {
    j["quarantinedAt"] = sh::FormatRfc3339(*t.quarantined_at);
    j["quarantineReason"] = t.quarantine_reason;
  }
  return j;
}

json RotationToJson(const RotationRecord& r) {
  json j = {{"rotationId", r.id}, {"thingName", r.thing_name}, {"reason", r.reason},
            {"createdAt", sh::FormatRfc3339(r.created_at)}, {"deadline", sh::FormatRfc3339(r.deadline)},
            {"state", RotationStateName(r.state)}, {"createdBy", r.created_by}};
  if (r.published_at) j["publishedAt"] = sh::FormatRfc3339(*r.published_at);
  if (r.completed_at) j["completedAt"] = sh::FormatRfc3339(*r.completed_at);
  if (r.new_cert_id) j["certificateId"] = *r.new_cert_id;
  return j;
}

ApiResponse JsonError(int status, std::string_view error, std::string_view message) {
  return Json(status, json{{"error", error}, {"message", message}});
}

namespace {

ApiResponse FromStatus(const sh::Status& st, sh::Logger& log) {
  switch (st.code()) {
    case Code::kInvalidArgument: return JsonError(400, "bad_request", st.message());
    case Code::kNotFound: return JsonError(404, "not_found", st.message());
    case Code::kAlreadyExists: return JsonError(409, "conflict", st.message());
    case Code::kFailedPrecondition: return JsonError(409, "conflict", st.message());
    case Code::kUnauthenticated: return JsonError(401, "unauthorized", "authentication required");
    case Code::kUnavailable:
    case Code::kDeadlineExceeded: return JsonError(503, "unavailable", "try again later");
    // From the registry these mean a full disk or an unwritable database, not the
    // caller's doing: the details go to the log.
    case Code::kResourceExhausted:
    case Code::kPermissionDenied:
      log.Error("API request failed", {{"error", st.ToString()}});
      return JsonError(503, "unavailable", "the registry cannot be written; try again later");
    default:
      log.Error("API request failed", {{"error", st.ToString()}});
      return JsonError(500, "internal", "internal error");
  }
}

}  // namespace

// ---- RateLimiter ----

RateLimiter::RateLimiter(const sh::Clock& clock, int max_calls, std::chrono::seconds window)
    : clock_(clock), max_calls_(max_calls), window_(window) {}

std::optional<std::chrono::seconds> RateLimiter::TryAcquire(const std::string& key) {
  const sh::MonoTime now = clock_.Monotonic();
  std::lock_guard lock(mu_);
  // Forget keys whose calls have all left the window, so the map stays small.
  for (auto it = calls_.begin(); it != calls_.end();) {
    while (!it->second.empty() && it->second.front() + window_ <= now) it->second.pop_front();
    it = it->second.empty() ? calls_.erase(it) : std::next(it);
  }
  auto& q = calls_[key];
  if (static_cast<int>(q.size()) < max_calls_) {
    q.push_back(now);
    return std::nullopt;
  }
  auto wait = q.front() + window_ - now;
  auto secs = std::chrono::ceil<std::chrono::seconds>(wait);
  return std::max(secs, std::chrono::seconds(1));
}

void RateLimiter::Release(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = calls_.find(key);
  if (it == calls_.end() || it->second.empty()) return;
  it->second.pop_back();
  if (it->second.empty()) calls_.erase(it);
}

// ---- Router ----

void Router::Add(Route route) {
  for (const auto& r : routes_) {
    if (r.method == route.method && r.pattern == route.pattern) std::abort();
  }
  routes_.push_back(std::move(route));
}

Router::Match Router::Find(std::string_view method, std::string_view path) const {
  Match m;
  if (path.empty() || path.front() != '/') return m;
  // "//x" and "/x/" are not "/x": refuse empty segments rather than normalise them.
  if (path.find("//") != std::string_view::npos || (path.size() > 1 && path.back() == '/')) return m;
  const std::vector<std::string> segs = Split(path);
  for (const auto& r : routes_) {
    const std::vector<std::string> pat = Split(r.pattern);
    if (pat.size() != segs.size()) continue;
    PathParams params;
    bool ok = true;
    for (size_t i = 0; i < pat.size() && ok; ++i) {
      if (pat[i].size() > 2 && pat[i].front() == '{' && pat[i].back() == '}') {
        params[pat[i].substr(1, pat[i].size() - 2)] = segs[i];
      } else {
        ok = pat[i] == segs[i];
      }
    }
    if (!ok) continue;
    if (r.method == method) {
      m.route = &r;
      m.params = std::move(params);
      return m;
    }
    m.path_known = true;
    m.allow.push_back(r.method);
  }
  return m;
}

// ---- ApiAuthenticator ----

ApiAuthenticator::ApiAuthenticator(Registry& registry, const ApiConfig& config, const sh::Clock& clock,
                                   sh::Logger& log)
    : registry_(registry),
      config_(config),
      clock_(clock),
      log_(log),
      event_limit_(clock, kAuthEventsPerWindow, std::chrono::seconds(60)) {}

void ApiAuthenticator::RecordRefusal(const ApiRequest& request, std::string_view kind, const std::string& subject,
                                     const std::string& why) {
  // Bounded: a flood from one address records (and logs) kAuthEventsPerWindow events a
  // minute; the rest are only counted (certfleet_api_auth_failures_total).
  if (event_limit_.TryAcquire(AddressOnly(request.remote))) return;
  log_.Warn("API request refused", {{"remote", request.remote}, {"kind", std::string(kind)}, {"reason", why}});
  sh::Status st = registry_.RecordSecurityEvent(
      SecurityEvent{0, clock_.Now(), std::string(kind), subject, why + " (from " + request.remote + ")"});
  if (!st.ok()) log_.Error("recording security event failed", {{"error", st.ToString()}});
}

ApiResponse ApiAuthenticator::Unauthorized(const ApiRequest& request, const std::string& subject,
                                           const std::string& why) {
  RecordRefusal(request, "api_auth_failed", subject, why);
  ApiResponse r = JsonError(401, "unauthorized", "missing or invalid credentials");
  r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"certfleet\"");
  return r;
}

std::variant<Principal, ApiResponse> ApiAuthenticator::Authenticate(const ApiRequest& request) {
  if (!request.authorization.empty()) {
    constexpr std::string_view kBearer = "Bearer ";
    std::string_view h = request.authorization;
    if (h.size() <= kBearer.size() || h.substr(0, kBearer.size()) != kBearer ||
        h.size() - kBearer.size() > kMaxBearerChars) {
      return Unauthorized(request, AddressOnly(request.remote), "malformed Authorization header");
    }
    const std::string hash = TokenHash(h.substr(kBearer.size()));
    auto found = registry_.FindApiToken(hash);
    if (!found) {
      log_.Error("API token lookup failed", {{"error", found.error().ToString()}});
      return JsonError(503, "unavailable", "try again later");
    }
    // The lookup is by hash, so its timing says nothing about the secret; compare the
    // stored hash in constant time all the same.
    if (!*found || (*found)->token_hash.size() != hash.size() ||
        CRYPTO_memcmp((*found)->token_hash.data(), hash.data(), hash.size()) != 0) {
      return Unauthorized(request, AddressOnly(request.remote), "unknown API token");
    }
    const ApiTokenRecord& t = **found;
    if (t.revoked_at) return Unauthorized(request, "token:" + t.name, "revoked API token used");
    if (t.expires_at && *t.expires_at <= clock_.Now()) {
      return Unauthorized(request, "token:" + t.name, "expired API token used");
    }
    return Principal{"token:" + t.name, t.role};
  }
  if (request.client_cert_cn) {
    const std::string& cn = *request.client_cert_cn;
    auto has = [&](const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), cn) != v.end(); };
    if (has(config_.admin_subjects)) return Principal{"cert:" + cn, ApiRole::kAdmin};
    if (has(config_.read_only_subjects)) return Principal{"cert:" + cn, ApiRole::kReadOnly};
    return Unauthorized(request, "cert:" + cn, "client certificate subject has no API role");
  }
  ApiResponse r = JsonError(401, "unauthorized", "missing or invalid credentials");
  r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"certfleet\"");
  return r;
}

// ---- ApiService ----

ApiService::ApiService(CompanionState& state, ApiServiceOptions options, const sh::Clock& clock, sh::Logger& log)
    : state_(state),
      options_(std::move(options)),
      clock_(clock),
      log_(log),
      auth_(*state.registry, state.config.api, clock, log) {
  AddRoutes();
}

void ApiService::AddRoutes() {
  using R = ApiRole;
  auto add = [this](std::string method, std::string pattern, std::optional<ApiRole> role, ApiHandler h) {
    router_.Add(Route{std::move(method), std::move(pattern), role, std::move(h)});
  };
  add("GET", "/things", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListThings(r); });
  add("GET", "/things/{thingName}", R::kReadOnly, [this](auto&, auto& p, auto&) { return DescribeThing(p); });
  add("POST", "/things/{thingName}/quarantine", R::kAdmin,
      [this](auto& r, auto& p, auto& w) { return SetQuarantine(r, p, w, true); });
  add("POST", "/things/{thingName}/unquarantine", R::kAdmin,
      [this](auto& r, auto& p, auto& w) { return SetQuarantine(r, p, w, false); });
  add("GET", "/certificates", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListCertificates(r); });
  add("GET", "/certificates/{certificateId}", R::kReadOnly,
      [this](auto&, auto& p, auto&) { return DescribeCertificate(p); });
  add("POST", "/certificates/{certificateId}/revoke", R::kAdmin,
      [this](auto& r, auto& p, auto& w) { return ChangeCertificate(r, p, w, CertStatus::kRevoked); });
  add("POST", "/certificates/{certificateId}/deactivate", R::kAdmin,
      [this](auto& r, auto& p, auto& w) { return ChangeCertificate(r, p, w, CertStatus::kInactive); });
  add("GET", "/rotations", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListRotations(r); });
  add("POST", "/rotations", R::kAdmin, [this](auto& r, auto&, auto& w) { return CreateRotation(r, w); });
  add("GET", "/rotations/{rotationId}", R::kReadOnly, [this](auto&, auto& p, auto&) { return DescribeRotation(p); });
  add("POST", "/rotations/{rotationId}/cancel", R::kAdmin, [this](auto&, auto& p, auto&) { return CancelRotation(p); });
  add("GET", "/enrollment-tokens", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListEnrollmentTokens(r); });
  add("POST", "/enrollment-tokens", R::kAdmin, [this](auto& r, auto&, auto& w) { return CreateEnrollmentToken(r, w); });
  add("GET", "/templates", R::kReadOnly, [this](auto&, auto&, auto&) { return ListTemplates(); });
  add("GET", "/templates/{templateName}", R::kReadOnly, [this](auto&, auto& p, auto&) { return DescribeTemplate(p); });
  add("GET", "/security-events", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListEvents(r); });
  if (options_.audit != nullptr) {
    audit_limiter_ = std::make_shared<RateLimiter>(clock_, 1, options_.audit_start_interval);
    add("POST", "/start-audit", R::kAdmin, [this](auto& r, auto&, auto& w) { return StartAudit(r, w); });
    add("GET", "/list-audits", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListAudits(r); });
    add("GET", "/get-audit-status/{taskId}", R::kReadOnly,
        [this](auto& r, auto& p, auto&) { return GetAuditStatus(r, p); });
    add("GET", "/audit-suppressions", R::kReadOnly, [this](auto& r, auto&, auto&) { return ListSuppressions(r); });
    add("POST", "/audit-suppressions", R::kAdmin, [this](auto& r, auto&, auto& w) { return CreateSuppression(r, w); });
    add("POST", "/audit-suppressions/delete", R::kAdmin, [this](auto& r, auto&, auto&) { return DeleteSuppression(r); });
  }
  if (options_.metrics != nullptr) {
    add("GET", "/metrics", state_.config.api.metrics_require_auth ? std::optional<ApiRole>(R::kReadOnly) : std::nullopt,
        [this](auto&, auto&, auto&) { return Scrape(); });
  }
}

ApiResponse ApiService::Handle(const ApiRequest& request) {
  ApiResponse res = [&]() -> ApiResponse {
    Router::Match m = router_.Find(request.method, request.path);
    if (m.route == nullptr) {
      if (!m.path_known) return JsonError(404, "not_found", "no such endpoint");
      std::string allow;
      for (const auto& a : m.allow) allow += (allow.empty() ? "" : ", ") + a;
      ApiResponse r = JsonError(405, "method_not_allowed", "use " + allow);
      r.headers.emplace_back("Allow", allow);
      return r;
    }
    Principal who{"anonymous", ApiRole::kReadOnly};
    if (m.route->min_role) {
      auto auth = auth_.Authenticate(request);
      if (auto* refused = std::get_if<ApiResponse>(&auth)) {
        if (options_.metrics != nullptr) options_.metrics->ApiAuthFailure();
        return std::move(*refused);
      }
      who = std::get<Principal>(auth);
      if (*m.route->min_role == ApiRole::kAdmin && who.role != ApiRole::kAdmin) {
        auth_.RecordRefusal(request, "api_forbidden", who.name,
                            request.method + " " + request.path.substr(0, 200) + " needs the admin role");
        return JsonError(403, "forbidden", "this needs the admin role");
      }
    }
    return m.route->handler(request, m.params, who);
  }();
  if (options_.metrics != nullptr) options_.metrics->ApiRequest(res.status);
  return res;
}

ApiResponse ApiService::StartAudit(const ApiRequest& r, const Principal& who) {
  if (auto st = OnlyParams(r, {}); !st.ok()) return FromStatus(st, log_);
  auto checks = ParseStartAuditBody(r.body);
  if (!checks) return FromStatus(checks.error(), log_);
  for (const std::string& c : *checks) {
    if (FindAuditCheck(c) == nullptr) return JsonError(400, "bad_request", "unknown check '" + c + "'");
  }
  // Counted only once the request is valid: a typo does not cost the operator 5 minutes.
  if (auto wait = audit_limiter_->TryAcquire("start-audit")) {
    ApiResponse res = JsonError(429, "rate_limited",
                                "an audit may be started once every " +
                                    std::to_string(options_.audit_start_interval.count()) + "s; retry after " +
                                    std::to_string(wait->count()) + "s");
    res.headers.emplace_back("Retry-After", std::to_string(wait->count()));
    return res;
  }
  auto id = options_.audit->QueueAudit(*checks);
  if (!id) {
    audit_limiter_->Release("start-audit");  // no audit ran: the slot is not used up
    return FromStatus(id.error(), log_);
  }
  log_.Info("audit requested", {{"task", *id}, {"by", who.name}});
  return Json(202, {{"taskId", *id}, {"taskStatus", "IN_PROGRESS"}});
}

ApiResponse ApiService::ListAudits(const ApiRequest& r) {
  auto q = ReadQuery(r, {"limit", "nextToken", "taskStatus", "taskType", "startTime", "endTime"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> cursor = q->Get("nextToken");
  const std::optional<std::string> status = q->Get("taskStatus");
  const std::optional<std::string> type = q->Get("taskType");
  const std::optional<std::string> start = q->Get("startTime");
  const std::optional<std::string> end = q->Get("endTime");
  const int64_t limit = q->limit;
  AuditTaskFilter f;
  f.limit = limit;
  if (status) {
    static const std::vector<std::string> kStatuses = {"IN_PROGRESS", "COMPLETED", "FAILED", "CANCELED"};
    if (std::find(kStatuses.begin(), kStatuses.end(), *status) == kStatuses.end()) {
      return JsonError(400, "bad_request", "taskStatus is one of IN_PROGRESS, COMPLETED, FAILED, CANCELED");
    }
    f.status = *status;
  }
  if (type) {
    if (*type != kTaskOnDemand && *type != kTaskScheduled) {
      return JsonError(400, "bad_request", "taskType is ON_DEMAND_AUDIT_TASK or SCHEDULED_AUDIT_TASK");
    }
    f.task_type = *type;
  }
  if (auto st = OptionalTime("startTime", start, f.started_after); !st.ok()) return FromStatus(st, log_);
  if (auto st = OptionalTime("endTime", end, f.started_before); !st.ok()) return FromStatus(st, log_);
  if (cursor) {
    auto key = DecodeCursor("audits", *cursor);
    if (!key) return FromStatus(key.error(), log_);
    f.cursor = *key;
  }
  auto page = options_.audit->ListAuditTasks(f);
  if (!page) return FromStatus(page.error(), log_);
  json tasks = json::array();
  for (const AuditTask& t : page->tasks) {
    json tj = {{"taskId", t.id},
               {"taskStatus", t.status},
               {"taskType", t.task_type},
               {"taskStartTime", sh::FormatRfc3339(t.started_at)}};
    if (t.ended_at) tj["taskEndTime"] = sh::FormatRfc3339(*t.ended_at);
    tasks.push_back(std::move(tj));
  }
  json out = {{"tasks", std::move(tasks)}};
  if (!page->next_cursor.empty()) out["nextToken"] = EncodeCursor("audits", page->next_cursor);
  return Json(200, out);
}

ApiResponse ApiService::GetAuditStatus(const ApiRequest& r, const PathParams& p) {
  auto q = ReadQuery(r, {"limit", "nextToken"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> cursor = q->Get("nextToken");
  const int64_t limit = q->limit;
  const std::string& id = p.at("taskId");
  if (!IsLowerHex(id, 32)) return JsonError(400, "bad_request", "a task id is 32 lowercase hex digits");
  int64_t after = 0;
  if (cursor) {
    auto key = DecodeIntCursor("audit-findings", *cursor);
    if (!key) return FromStatus(key.error(), log_);
    after = *key;
  }
  auto page = options_.audit->AuditReportPage(id, after, limit);
  if (!page) {
    if (page.error().code() == Code::kNotFound) return JsonError(404, "not_found", "no such audit task");
    return FromStatus(page.error(), log_);
  }
  if (page->next_after) page->report["nextToken"] = EncodeCursor("audit-findings", std::to_string(*page->next_after));
  return Json(200, page->report);
}

namespace {

json SuppressionJson(const AuditSuppression& s) {
  return {{"checkName", s.check_name},
          {"resourceId", s.resource_id},
          {"createdAt", sh::FormatRfc3339(s.created_at)},
          {"expirationDate", sh::FormatRfc3339(s.expires_at)},
          {"description", s.description},
          {"createdBy", s.created_by}};
}

}  // namespace

ApiResponse ApiService::ListSuppressions(const ApiRequest& r) {
  auto q = ReadQuery(r, {"includeExpired"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> all = q->Get("includeExpired");
  if (all && *all != "true" && *all != "false") {
    return JsonError(400, "bad_request", "includeExpired is true or false");
  }
  auto list = options_.audit->ListSuppressions(all && *all == "true");
  if (!list) return FromStatus(list.error(), log_);
  json items = json::array();
  for (const auto& x : *list) items.push_back(SuppressionJson(x));
  return Json(200, json{{"suppressions", std::move(items)}});
}

ApiResponse ApiService::CreateSuppression(const ApiRequest& r, const Principal& who) {
  auto body = ParseSuppressionBody(r.body);
  if (!body) return FromStatus(body.error(), log_);
  if (FindAuditCheck(body->check_name) == nullptr) {
    return JsonError(400, "bad_request", "unknown check '" + body->check_name + "'");
  }
  AuditSuppression s;
  s.check_name = body->check_name;
  s.resource_id = body->resource_id;
  s.created_at = clock_.Now();
  s.expires_at = body->expires_at ? *body->expires_at : s.created_at + *body->duration;
  s.description = body->description;
  s.created_by = "api:" + who.name;
  if (sh::Status st = options_.audit->Suppress(s); !st.ok()) return FromStatus(st, log_);
  log_.Info("audit finding suppressed", {{"check", s.check_name}, {"resource", s.resource_id}, {"by", who.name}});
  return Json(201, SuppressionJson(s));
}

ApiResponse ApiService::DeleteSuppression(const ApiRequest& r) {
  auto body = ParseSuppressionDeleteBody(r.body);
  if (!body) return FromStatus(body.error(), log_);
  if (sh::Status st = options_.audit->Unsuppress(body->check_name, body->resource_id); !st.ok()) {
    return FromStatus(st, log_);
  }
  return Json(200, json{{"checkName", body->check_name}, {"resourceId", body->resource_id}});
}

ApiResponse ApiService::ListThings(const ApiRequest& r) {
  auto q = ReadQuery(r, {"limit", "nextToken"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> cursor = q->Get("nextToken");
  const int64_t limit = q->limit;
  std::string after;
  if (cursor) {
    auto key = DecodeCursor("things", *cursor);
    if (!key) return FromStatus(key.error(), log_);
    after = *key;
  }
  auto page = state_.registry->ListThingsPage(after, limit);
  if (!page) return FromStatus(page.error(), log_);
  json items = json::array();
  for (const auto& t : page->items) items.push_back(ThingToJson(t));
  json out = {{"things", std::move(items)}};
  if (page->next) out["nextToken"] = EncodeCursor("things", *page->next);
  return Json(200, out);
}

ApiResponse ApiService::DescribeThing(const PathParams& p) {
  const std::string& name = p.at("thingName");
  if (!IsValidThingName(name)) return JsonError(400, "bad_request", "invalid thing name");
  auto t = state_.registry->FindThing(name);
  if (!t) return FromStatus(t.error(), log_);
  if (!*t) return JsonError(404, "not_found", "no such thing");
  json out = ThingToJson(**t);
  auto certs = state_.registry->ListCerts(name, kApiMaxPageSize);
  if (!certs) return FromStatus(certs.error(), log_);
  json cj = json::array();
  for (const auto& c : *certs) cj.push_back(CertToJson(c, false));
  out["certificates"] = std::move(cj);
  auto pending = state_.registry->FindPendingRotation(name);
  if (!pending) return FromStatus(pending.error(), log_);
  if (*pending) out["pendingRotation"] = RotationToJson(**pending);
  return Json(200, out);
}

ApiResponse ApiService::SetQuarantine(const ApiRequest& r, const PathParams& p, const Principal& who, bool on) {
  const std::string& name = p.at("thingName");
  if (!IsValidThingName(name)) return JsonError(400, "bad_request", "invalid thing name");
  auto reason = ParseStatusChangeBody(r.body);
  if (!reason) return FromStatus(reason.error(), log_);
  if (!on && !reason->empty()) return JsonError(400, "bad_request", "unquarantine takes no reason");
  sh::Status st = state_.registry->SetQuarantine(
      name, on ? std::optional<std::string>(reason->empty() ? "operator" : *reason) : std::nullopt, who.name,
      clock_.Now());
  if (!st.ok()) return FromStatus(st, log_);
  log_.Info(on ? "thing quarantined" : "thing unquarantined", {{"thing", name}, {"by", who.name}});
  if (options_.quarantine_changed) options_.quarantine_changed();
  return DescribeThing(p);
}

ApiResponse ApiService::ListCertificates(const ApiRequest& r) {
  auto q = ReadQuery(r, {"limit", "nextToken", "status", "thingName", "expiringBefore"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> cursor = q->Get("nextToken");
  const std::optional<std::string> status = q->Get("status");
  const std::optional<std::string> thing = q->Get("thingName");
  const std::optional<std::string> before = q->Get("expiringBefore");
  const int64_t limit = q->limit;
  CertFilter f;
  if (status) {
    auto s = ParseCertStatus(*status);
    if (!s) return JsonError(400, "bad_request", "status must be PENDING_ACTIVATION, ACTIVE, INACTIVE or REVOKED");
    f.status = *s;
  }
  if (thing) {
    if (!IsValidThingName(*thing)) return JsonError(400, "bad_request", "invalid thingName");
    f.thing = *thing;
  }
  if (auto st = OptionalTime("expiringBefore", before, f.expiring_before); !st.ok()) return FromStatus(st, log_);
  if (cursor) {
    auto key = DecodeIntCursor("certificates", *cursor);
    if (!key) return FromStatus(key.error(), log_);
    f.after = *key;
  }
  auto page = state_.registry->ListCertsPage(f, limit);
  if (!page) return FromStatus(page.error(), log_);
  json items = json::array();
  for (const auto& c : page->items) items.push_back(CertToJson(c, false));
  json out = {{"certificates", std::move(items)}};
  if (page->next) out["nextToken"] = EncodeCursor("certificates", std::to_string(*page->next));
  return Json(200, out);
}

ApiResponse ApiService::DescribeCertificate(const PathParams& p) {
  const std::string& id = p.at("certificateId");
  if (!IsLowerHex(id, 64)) return JsonError(400, "bad_request", "certificateId must be 64 lowercase hex digits");
  auto c = state_.registry->FindCert(id);
  if (!c) return FromStatus(c.error(), log_);
  if (!*c) return JsonError(404, "not_found", "no such certificate");
  return Json(200, CertToJson(**c, true));
}

ApiResponse ApiService::ChangeCertificate(const ApiRequest& r, const PathParams& p, const Principal& who,
                                          CertStatus status) {
  const std::string& id = p.at("certificateId");
  if (!IsLowerHex(id, 64)) return JsonError(400, "bad_request", "certificateId must be 64 lowercase hex digits");
  auto reason = ParseStatusChangeBody(r.body);
  if (!reason) return FromStatus(reason.error(), log_);
  sh::Status st = ChangeCertificateStatus(*state_.registry, id, status, who.name, *reason, clock_.Now());
  if (!st.ok()) return FromStatus(st, log_);
  log_.Info("certificate status changed through the API",
            {{"certificate", id}, {"status", std::string(CertStatusName(status))}, {"by", who.name}});
  auto c = state_.registry->FindCert(id);
  if (!c || !*c) return FromStatus(c ? sh::Status(Code::kInternal, "certificate vanished") : c.error(), log_);
  return Json(200, CertToJson(**c, false));
}

ApiResponse ApiService::ListRotations(const ApiRequest& r) {
  auto q = ReadQuery(r, {"limit", "state", "thingName", "nextToken"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> state = q->Get("state");
  const std::optional<std::string> thing = q->Get("thingName");
  const std::optional<std::string> cursor = q->Get("nextToken");
  const int64_t limit = q->limit;
  RotationFilter f;
  if (state) {
    auto s = ParseRotationState(*state);
    if (!s) return JsonError(400, "bad_request", "state must be PENDING, COMPLETED or CANCELLED");
    f.state = *s;
  }
  if (thing) {
    if (!IsValidThingName(*thing)) return JsonError(400, "bad_request", "invalid thingName");
    f.thing = *thing;
  }
  if (cursor) {
    auto pos = DecodePositionCursor("rotations", *cursor);
    if (!pos) return FromStatus(pos.error(), log_);
    f.before = *pos;
  }
  auto list = state_.registry->ListRotations(f, limit + 1);
  if (!list) return FromStatus(list.error(), log_);
  const bool more = static_cast<int64_t>(list->size()) > limit;
  if (more) list->pop_back();
  json items = json::array();
  for (const auto& x : *list) items.push_back(RotationToJson(x));
  json out = {{"rotations", std::move(items)}};
  if (more) out["nextToken"] = PositionCursor("rotations", list->back().created_at, list->back().id);
  return Json(200, out);
}

ApiResponse ApiService::DescribeRotation(const PathParams& p) {
  const std::string& id = p.at("rotationId");
  if (!IsLowerHex(id, 32)) return JsonError(400, "bad_request", "rotationId must be 32 lowercase hex digits");
  auto x = state_.registry->FindRotation(id);
  if (!x) return FromStatus(x.error(), log_);
  if (!*x) return JsonError(404, "not_found", "no such rotation request");
  return Json(200, RotationToJson(**x));
}

ApiResponse ApiService::CreateRotation(const ApiRequest& r, const Principal& who) {
  auto body = ParseCreateRotationBody(r.body);
  if (!body) return FromStatus(body.error(), log_);
  if (!IsValidThingName(body->thing_name)) return JsonError(400, "bad_request", "invalid thingName");
  auto rec = CreateRotationRequest(*state_.registry, state_.config.rotation, body->thing_name, body->reason,
                                   body->deadline, "api:" + who.name, clock_.Now());
  if (!rec) return FromStatus(rec.error(), log_);
  log_.Info("rotation requested through the API", {{"thing", rec->thing_name}, {"id", rec->id}, {"by", who.name}});
  return Json(201, RotationToJson(*rec));
}

ApiResponse ApiService::CancelRotation(const PathParams& p) {
  const std::string& id = p.at("rotationId");
  if (!IsLowerHex(id, 32)) return JsonError(400, "bad_request", "rotationId must be 32 lowercase hex digits");
  sh::Status st = state_.registry->CancelRotation(id);
  if (!st.ok()) return FromStatus(st, log_);
  auto x = state_.registry->FindRotation(id);
  if (!x || !*x) return FromStatus(x ? sh::Status(Code::kInternal, "rotation vanished") : x.error(), log_);
  return Json(200, RotationToJson(**x));
}

ApiResponse ApiService::ListEnrollmentTokens(const ApiRequest& r) {
  auto q = ReadQuery(r, {"limit", "nextToken"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> cursor = q->Get("nextToken");
  const int64_t limit = q->limit;
  std::optional<ListPosition> before;
  if (cursor) {
    auto pos = DecodePositionCursor("enrollment-tokens", *cursor);
    if (!pos) return FromStatus(pos.error(), log_);
    if (pos->key.size() > 18 || pos->key.find_first_not_of("0123456789") != std::string::npos) {
      return JsonError(400, "bad_request", "malformed nextToken");
    }
    before = *pos;
  }
  auto list = state_.registry->ListTokens(limit + 1, before);
  if (!list) return FromStatus(list.error(), log_);
  const bool more = static_cast<int64_t>(list->size()) > limit;
  if (more) list->pop_back();
  const sh::WallTime now = clock_.Now();
  json items = json::array();
  for (const auto& t : *list) {
    std::string state = t.used_at ? "USED" : (t.expires_at <= now ? "EXPIRED" : "UNUSED");
    json j = {{"serial", t.serial}, {"createdAt", sh::FormatRfc3339(t.created_at)},
              {"expiresAt", sh::FormatRfc3339(t.expires_at)}, {"state", state}};
    if (t.used_at) j["usedAt"] = sh::FormatRfc3339(*t.used_at);
    items.push_back(std::move(j));
  }
  json out = {{"enrollmentTokens", std::move(items)}};
  if (more) out["nextToken"] = PositionCursor("enrollment-tokens", list->back().created_at, list->back().position);
  return Json(200, out);
}

ApiResponse ApiService::CreateEnrollmentToken(const ApiRequest& r, const Principal& who) {
  auto body = ParseCreateEnrollmentTokenBody(r.body);
  if (!body) return FromStatus(body.error(), log_);
  auto tok = companion::CreateEnrollmentToken(*state_.registry, state_.config.tokens, body->serial, body->ttl,
                                              clock_.Now());
  if (!tok) return FromStatus(tok.error(), log_);
  log_.Info("enrollment token created through the API", {{"serial", tok->serial}, {"by", who.name}});
  ApiResponse res = Json(201, json{{"token", tok->secret}, {"serial", tok->serial},
                                   {"expiresAt", sh::FormatRfc3339(tok->expires_at)}});
  res.headers.emplace_back("Cache-Control", "no-store");
  return res;
}

ApiResponse ApiService::ListTemplates() {
  json items = json::array();
  for (const auto& [name, t] : options_.templates) items.push_back(TemplateJson(t, false));
  return Json(200, json{{"templates", std::move(items)}});
}

ApiResponse ApiService::DescribeTemplate(const PathParams& p) {
  auto it = options_.templates.find(p.at("templateName"));
  if (it == options_.templates.end()) return JsonError(404, "not_found", "no such template");
  return Json(200, TemplateJson(it->second, true));
}

ApiResponse ApiService::ListEvents(const ApiRequest& r) {
  auto q = ReadQuery(r, {"limit", "nextToken", "kind", "subject", "since", "until"});
  if (!q) return FromStatus(q.error(), log_);
  const std::optional<std::string> cursor = q->Get("nextToken");
  const std::optional<std::string> kind = q->Get("kind");
  const std::optional<std::string> subject = q->Get("subject");
  const std::optional<std::string> since = q->Get("since");
  const std::optional<std::string> until = q->Get("until");
  const int64_t limit = q->limit;
  EventFilter f;
  if (kind) {
    if (kind->empty() || kind->size() > 64) return JsonError(400, "bad_request", "kind must be 1-64 bytes");
    f.kind = *kind;
  }
  if (subject) {
    if (subject->empty() || subject->size() > 256) {
      return JsonError(400, "bad_request", "subject must be 1-256 bytes");
    }
    f.subject = *subject;
  }
  if (auto st = OptionalTime("since", since, f.since); !st.ok()) return FromStatus(st, log_);
  if (auto st = OptionalTime("until", until, f.until); !st.ok()) return FromStatus(st, log_);
  if (cursor) {
    auto key = DecodeIntCursor("events", *cursor);
    if (!key) return FromStatus(key.error(), log_);
    f.before = *key;
  }
  auto page = state_.registry->ListSecurityEventsPage(f, limit);
  if (!page) return FromStatus(page.error(), log_);
  json items = json::array();
  for (const auto& e : page->items) items.push_back(EventJson(e));
  json out = {{"securityEvents", std::move(items)}};
  if (page->next) out["nextToken"] = EncodeCursor("events", std::to_string(*page->next));
  return Json(200, out);
}

ApiResponse ApiService::Scrape() {
  auto text = options_.metrics->Scrape(*state_.registry, clock_.Now());
  if (!text) return FromStatus(text.error(), log_);
  ApiResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = std::move(*text);
  return r;
}

}  // namespace certfleet::companion
