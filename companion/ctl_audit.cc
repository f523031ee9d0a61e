#include "companion/ctl_audit.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "companion/audit.h"
#include "companion/ctl_common.h"
#include "companion/hook_set.h"
#include "companion/init.h"
#include "shared/core/duration.h"
#include "shared/core/filesystem.h"
#include "shared/core/log.h"

namespace certfleet::companion {

namespace sh = certfleet::shared;
using nlohmann::json;

struct AuditCommands {
  const std::string* config_path = nullptr;
  CLI::App* start = nullptr;
  CLI::App* list = nullptr;
  CLI::App* show = nullptr;
  CLI::App* suppress = nullptr;
  CLI::App* suppressions = nullptr;
  CLI::App* unsuppress = nullptr;
  CLI::App* quarantine = nullptr;
  CLI::App* unquarantine = nullptr;
  std::vector<std::string> checks;
  std::string task_id;
  std::string status_filter;
  std::string type_filter;
  std::string cursor;
  int64_t limit = 50;
  std::string check;
  std::string resource;
  std::string until;
  std::string for_duration;
  std::string description;
  std::string thing;
  std::string reason;
  bool all = false;
  bool as_json = false;
};

namespace {

int Fail(const sh::Status& st) { return CtlFail(st); }

// The companion's state, its audit store and an engine over both (no MQTT here: NOTIFY
// reaches the post_audit hook only).
struct Local {
  CompanionState state;
  std::unique_ptr<AuditStore> store;
  std::unique_ptr<HookRunner> runner;
  std::optional<HookSet> hooks;
  std::unique_ptr<AuditEngine> engine;
};

sh::Result<std::unique_ptr<Local>> OpenLocal(const std::string& config_path, sh::Logger& log) {
  auto& fs = sh::PosixFilesystem::Instance();
  CF_ASSIGN_OR_RETURN(CompanionConfig cfg, LoadCompanionConfig(config_path, fs));
  LoadOptions lo;
  lo.load_issuer = false;
  auto local = std::make_unique<Local>();
  CF_ASSIGN_OR_RETURN(local->state, LoadCompanionState(cfg, fs, lo));
  CF_ASSIGN_OR_RETURN(local->store, OpenSqliteAuditStore(local->state.config.registry_path));
  AuditNotifier notifier;
  CF_ASSIGN_OR_RETURN(HookSet hooks, BuildHookSet(local->state.config.hooks));
  local->hooks = std::move(hooks);
  if (local->hooks->post_audit) {
    local->runner = std::make_unique<HookRunner>(log, sh::SystemClock::Instance());
    notifier.hook = [l = local.get()](const json& input) -> Status {
      auto out = l->runner->Run(*l->hooks->post_audit, kHookEventPostAudit, input);
      return out ? Status::Ok() : out.error();
    };
  }
  local->engine = std::make_unique<AuditEngine>(AuditOptionsFromConfig(local->state.config), *local->state.registry,
                                                *local->store, fs, sh::SystemClock::Instance(), log, notifier);
  return local;
}

std::string Opt(const std::optional<sh::WallTime>& t) { return t ? sh::FormatRfc3339(*t) : "-"; }

json TaskJson(const AuditTask& t) {
  json checks = json::object();
  for (const auto& c : t.checks) {
    checks[c.check_name] = {{"checkRunStatus", c.run_status}, {"totalResourcesCount", c.total},
                            {"nonCompliantResourcesCount", c.non_compliant},
                            {"suppressedNonCompliantResourcesCount", c.suppressed}};
  }
  json j = {{"taskId", t.id}, {"taskStatus", t.status}, {"taskType", t.task_type},
            {"taskStartTime", sh::FormatRfc3339(t.started_at)}, {"auditDetails", checks}};
  if (t.ended_at) j["taskEndTime"] = sh::FormatRfc3339(*t.ended_at);
  if (!t.report_path.empty()) j["reportPath"] = t.report_path;
  return j;
}

void PrintSummary(const AuditTask& t) {
  std::printf("task %s  %s  %s  started %s  ended %s\n", t.id.c_str(), t.task_type.c_str(), t.status.c_str(),
              sh::FormatRfc3339(t.started_at).c_str(), Opt(t.ended_at).c_str());
  if (!t.report_path.empty()) std::printf("report %s\n", t.report_path.c_str());
  std::vector<std::vector<std::string>> rows{{"CHECK", "STATUS", "RESOURCES", "NON-COMPLIANT", "SUPPRESSED"}};
  for (const auto& c : t.checks) {
    rows.push_back({c.check_name, c.run_status, std::to_string(c.total), std::to_string(c.non_compliant),
                    std::to_string(c.suppressed)});
  }
  PrintTable(rows);
}

}  // namespace

std::shared_ptr<AuditCommands> AddAuditCommands(CLI::App& app, const std::string* config_path) {
  auto c = std::make_shared<AuditCommands>();
  c->config_path = config_path;
  auto* audit = app.add_subcommand("audit", "fleet audits (docs/audit.md)")->require_subcommand(1);
  c->start = audit->add_subcommand("start", "run an on-demand audit now; prints the task summary");
  c->start->add_option("--checks", c->checks, "check names (default: every enabled check)")->delimiter(',');
  c->start->add_flag("--json", c->as_json, "JSON output");
  c->list = audit->add_subcommand("list", "audit tasks, newest first");
  c->list->add_option("--status", c->status_filter, "IN_PROGRESS, COMPLETED, FAILED");
  c->list->add_option("--type", c->type_filter, "ON_DEMAND_AUDIT_TASK or SCHEDULED_AUDIT_TASK");
  c->list->add_option("--limit", c->limit, "page size")->check(CLI::Range(int64_t{1}, int64_t{1000}));
  c->list->add_option("--cursor", c->cursor, "next page (printed after a full page)");
  c->list->add_flag("--json", c->as_json, "JSON output");
  c->show = audit->add_subcommand("show", "a task's summary and findings (--json: the full report)");
  c->show->add_option("TASK_ID", c->task_id, "task id")->required();
  c->show->add_flag("--json", c->as_json, "JSON output");
  c->suppress = audit->add_subcommand("suppress", "suppress a check's finding for one resource until a time");
  c->suppress->add_option("--check", c->check, "check name")->required();
  c->suppress->add_option("--resource", c->resource, "certificate id, thing, policy or rotation id")->required();
  auto* until = c->suppress->add_option("--until", c->until, "RFC 3339 UTC time (2026-12-31T00:00:00Z)");
  auto* dur = c->suppress->add_option("--for", c->for_duration, "duration from now (30d)");
  until->excludes(dur);
  c->suppress->add_option("--description", c->description, "why");
  c->suppressions = audit->add_subcommand("suppressions", "list suppressions");
  c->suppressions->add_flag("--all", c->all, "include expired ones");
  c->suppressions->add_flag("--json", c->as_json, "JSON output");
  c->unsuppress = audit->add_subcommand("unsuppress", "delete a suppression");
  c->unsuppress->add_option("--check", c->check, "check name")->required();
  c->unsuppress->add_option("--resource", c->resource, "resource")->required();
  c->quarantine = app.add_subcommand("quarantine", "quarantine a thing (broker denies it, EST refuses it)");
  c->quarantine->add_option("THING", c->thing, "thing name")->required();
  c->quarantine->add_option("--reason", c->reason, "why (recorded)")->default_val("operator");
  c->unquarantine = app.add_subcommand("unquarantine", "lift a thing's quarantine");
  c->unquarantine->add_option("THING", c->thing, "thing name")->required();
  return c;
}

int RunAuditCommands(AuditCommands& c) {
  const bool any = *c.start || *c.list || *c.show || *c.suppress || *c.suppressions || *c.unsuppress ||
                   *c.quarantine || *c.unquarantine;
  if (!any) return -1;
  sh::StderrLogger log(sh::LogLevel::kWarning);
  auto local = OpenLocal(*c.config_path, log);
  if (!local) return Fail(local.error());
  AuditEngine& engine = *(*local)->engine;
  Registry& registry = *(*local)->state.registry;
  const sh::WallTime now = sh::SystemClock::Instance().Now();

  if (*c.start) {
    auto id = engine.StartAudit(c.checks);
    if (!id) return Fail(id.error());
    auto task = engine.GetAuditTask(*id);
    if (!task || !*task) return Fail(task ? sh::Status(sh::Code::kNotFound, "task vanished") : task.error());
    if (c.as_json) {
      std::printf("%s\n", TaskJson(**task).dump(2).c_str());
    } else {
      PrintSummary(**task);
    }
    return (*task)->status == "COMPLETED" ? 0 : 1;
  }
  if (*c.list) {
    AuditTaskFilter f;
    f.status = c.status_filter;
    f.task_type = c.type_filter;
    f.cursor = c.cursor;
    f.limit = c.limit;
    auto page = engine.ListAuditTasks(f);
    if (!page) return Fail(page.error());
    if (c.as_json) {
      json tasks = json::array();
      for (const auto& t : page->tasks) tasks.push_back(TaskJson(t));
      json out = {{"tasks", tasks}};
      if (!page->next_cursor.empty()) out["nextToken"] = page->next_cursor;
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::vector<std::vector<std::string>> rows{{"TASK", "TYPE", "STATUS", "STARTED", "NON-COMPLIANT CHECKS"}};
      for (const auto& t : page->tasks) {
        int bad = 0;
        for (const auto& s : t.checks) bad += s.run_status == "COMPLETED_NON_COMPLIANT" ? 1 : 0;
        rows.push_back({t.id, t.task_type, t.status, sh::FormatRfc3339(t.started_at), std::to_string(bad)});
      }
      PrintTable(rows);
      if (!page->next_cursor.empty()) std::printf("more: --cursor %s\n", page->next_cursor.c_str());
    }
    return 0;
  }
  if (*c.show) {
    if (c.as_json) {
      auto report = engine.AuditReportJson(c.task_id);
      if (!report) return Fail(report.error());
      std::printf("%s\n", report->dump(2).c_str());
      return 0;
    }
    auto task = engine.GetAuditTask(c.task_id);
    if (!task) return Fail(task.error());
    if (!*task) return Fail(sh::Status(sh::Code::kNotFound, "no audit task " + c.task_id));
    PrintSummary(**task);
    auto report = engine.AuditReportJson(c.task_id);
    if (!report) return Fail(report.error());
    std::vector<std::vector<std::string>> rows{{"CHECK", "SEVERITY", "RESOURCE", "REASON", "SUPPRESSED"}};
    for (const json& f : (*report)["findings"]) {
      const json& id = f["nonCompliantResource"]["resourceIdentifier"];
      std::string resource = id.begin().value().is_string() ? id.begin().value().get<std::string>() : id.dump();
      rows.push_back({f["checkName"], f["severity"], resource, f["reasonForNonComplianceCode"],
                      f["isSuppressed"].get<bool>() ? "yes" : "no"});
    }
    std::printf("\n");
    PrintTable(rows);
    return 0;
  }
  if (*c.suppress) {
    AuditSuppression s;
    s.check_name = c.check;
    s.resource_id = c.resource;
    s.created_at = now;
    s.description = c.description;
    s.created_by = OperatorName();
    if (!c.until.empty()) {
      if (!sh::ParseRfc3339(c.until, &s.expires_at)) {
        return Fail(sh::Status(sh::Code::kInvalidArgument, "--until: expected YYYY-MM-DDTHH:MM:SSZ"));
      }
    } else if (!c.for_duration.empty()) {
      auto d = sh::ParseDuration(c.for_duration);
      if (!d) return Fail(d.error().WithContext("--for"));
      s.expires_at = now + *d;
    } else {
      return Fail(sh::Status(sh::Code::kInvalidArgument, "give --until or --for"));
    }
    sh::Status st = engine.Suppress(s);
    if (!st.ok()) return Fail(st);
    std::printf("suppressed %s for %s until %s\n", c.check.c_str(), c.resource.c_str(),
                sh::FormatRfc3339(s.expires_at).c_str());
    return 0;
  }
  if (*c.suppressions) {
    auto list = engine.ListSuppressions(c.all);
    if (!list) return Fail(list.error());
    if (c.as_json) {
      json out = json::array();
      for (const auto& s : *list) {
        out.push_back({{"checkName", s.check_name}, {"resourceIdentifier", s.resource_id},
                       {"createdAt", sh::FormatRfc3339(s.created_at)}, {"expirationDate", sh::FormatRfc3339(s.expires_at)},
                       {"description", s.description}, {"createdBy", s.created_by}});
      }
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::vector<std::vector<std::string>> rows{{"CHECK", "RESOURCE", "UNTIL", "BY", "DESCRIPTION"}};
      for (const auto& s : *list) {
        rows.push_back({s.check_name, s.resource_id, sh::FormatRfc3339(s.expires_at), s.created_by, s.description});
      }
      PrintTable(rows);
    }
    return 0;
  }
  if (*c.unsuppress) {
    sh::Status st = engine.Unsuppress(c.check, c.resource);
    if (!st.ok()) return Fail(st);
    std::printf("unsuppressed %s for %s\n", c.check.c_str(), c.resource.c_str());
    return 0;
  }
  const bool on = static_cast<bool>(*c.quarantine);
  sh::Status st = registry.SetQuarantine(c.thing, on ? std::optional<std::string>(c.reason) : std::nullopt,
                                         OperatorName(), now);
  if (!st.ok()) return Fail(st);
  std::printf("%s %s\n", c.thing.c_str(), on ? "quarantined" : "unquarantined");
  return 0;
}

int RunRemoteAuditCommands(AuditCommands& c, RemoteCaller& r) {
  const bool any = *c.start || *c.list || *c.show || *c.suppress || *c.suppressions || *c.unsuppress ||
                   *c.quarantine || *c.unquarantine;
  if (!any) return -1;
  r.as_json = r.as_json || c.as_json;
  if (*c.start) {
    json body = json::object();
    if (!c.checks.empty()) body["targetCheckNames"] = c.checks;
    auto j = r.Call("POST", "/start-audit", {}, body);
    if (!j) return 1;
    if (r.as_json) {
      std::printf("%s\n", j->dump(2).c_str());
    } else {
      std::printf("audit %s started on the companion; follow it with: certfleetctl --server ... audit show %s\n",
                  JsonText(*j, "taskId").c_str(), JsonText(*j, "taskId").c_str());
    }
    return 0;
  }
  if (*c.list) {
    QueryList q;
    if (!c.status_filter.empty()) q.emplace_back("taskStatus", c.status_filter);
    if (!c.type_filter.empty()) q.emplace_back("taskType", c.type_filter);
    if (!c.cursor.empty()) q.emplace_back("nextToken", c.cursor);
    return r.List("/list-audits", "tasks", q, c.limit,
                  {{"TASK", "taskId"}, {"TYPE", "taskType"}, {"STATUS", "taskStatus"}, {"STARTED", "taskStartTime"},
                   {"ENDED", "taskEndTime"}});
  }
  if (*c.show) {
    // Every page of findings, merged into one report.
    json report;
    std::string next;
    for (;;) {
      QueryList q{{"limit", "500"}};
      if (!next.empty()) q.emplace_back("nextToken", next);
      auto j = r.Call("GET", "/get-audit-status/" + c.task_id, q);
      if (!j) return 1;
      next = NextToken(*j);
      if (report.is_null()) {
        report = std::move(*j);
        for (const char* list : {"findings", "mitigationActions"}) {
          if (!report[list].is_array()) report[list] = json::array();
        }
      } else {
        for (const char* list : {"findings", "mitigationActions"}) {
          const json& more = JsonField(*j, list);
          if (more.is_array()) report[list].insert(report[list].end(), more.begin(), more.end());
        }
      }
      if (next.empty()) break;
    }
    report.erase("nextToken");
    if (r.as_json) {
      std::printf("%s\n", report.dump(2).c_str());
      return 0;
    }
    std::printf("task %s  %s  %s  started %s  ended %s\n", JsonText(report, "taskId").c_str(),
                JsonText(report, "taskType").c_str(), JsonText(report, "taskStatus").c_str(),
                JsonText(report, "taskStartTime").c_str(), JsonText(report, "taskEndTime").c_str());
    std::vector<std::vector<std::string>> rows{{"CHECK", "STATUS", "RESOURCES", "NON-COMPLIANT", "SUPPRESSED"}};
    const json& details = JsonField(report, "auditDetails");
    if (details.is_object()) {
      for (const auto& [name, d] : details.items()) {
        rows.push_back({name, JsonText(d, "checkRunStatus"), JsonText(d, "totalResourcesCount"),
                        JsonText(d, "nonCompliantResourcesCount"), JsonText(d, "suppressedNonCompliantResourcesCount")});
      }
    }
    PrintTable(rows);
    std::vector<std::vector<std::string>> findings{{"CHECK", "SEVERITY", "RESOURCE", "REASON", "SUPPRESSED"}};
    for (const json& f : report["findings"]) {
      const json& id = JsonField(JsonField(f, "nonCompliantResource"), "resourceIdentifier");
      std::string resource = id.is_object() && !id.empty() && id.begin().value().is_string()
                                 ? id.begin().value().get<std::string>()
                                 : id.dump();
      findings.push_back({JsonText(f, "checkName"), JsonText(f, "severity"), resource,
                          JsonText(f, "reasonForNonComplianceCode"),
                          JsonField(f, "isSuppressed") == true ? "yes" : "no"});
    }
    std::printf("\n");
    PrintTable(findings);
    return 0;
  }
  if (*c.quarantine || *c.unquarantine) {
    const bool on = static_cast<bool>(*c.quarantine);
    json body = json::object();
    if (on) body["reason"] = c.reason;
    return r.Show("POST", "/things/" + c.thing + (on ? "/quarantine" : "/unquarantine"), body);
  }
  if (*c.suppress) {
    json body = {{"checkName", c.check}, {"resourceId", c.resource}};
    if (!c.until.empty()) {
      body["expirationDate"] = c.until;
    } else if (!c.for_duration.empty()) {
      body["duration"] = c.for_duration;
    } else {
      return Fail(sh::Status(sh::Code::kInvalidArgument, "give --until or --for"));
    }
    if (!c.description.empty()) body["description"] = c.description;
    return r.Show("POST", "/audit-suppressions", body);
  }
  if (*c.unsuppress) {
    return r.Show("POST", "/audit-suppressions/delete", {{"checkName", c.check}, {"resourceId", c.resource}});
  }
  QueryList q;
  if (c.all) q.emplace_back("includeExpired", "true");
  auto j = r.Call("GET", "/audit-suppressions", q);
  if (!j) return 1;
  if (r.as_json) {
    std::printf("%s\n", (*j)["suppressions"].dump(2).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows{{"CHECK", "RESOURCE", "UNTIL", "BY", "DESCRIPTION"}};
  for (const json& x : (*j)["suppressions"]) {
    rows.push_back({JsonText(x, "checkName"), JsonText(x, "resourceId"), JsonText(x, "expirationDate"),
                    JsonText(x, "createdBy"), JsonText(x, "description")});
  }
  PrintTable(rows);
  return 0;
}

}  // namespace certfleet::companion
