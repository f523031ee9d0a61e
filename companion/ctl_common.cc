#include "companion/ctl_common.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace certfleet::companion {

using nlohmann::json;

int CtlFail(const shared::Status& st) {
  std::fprintf(stderr, "certfleetctl: %s\n", st.ToString().c_str());
  return 1;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& r : rows) {
    widths.resize(std::max(widths.size(), r.size()));
    for (size_t i = 0; i < r.size(); ++i) widths[i] = std::max(widths[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(widths[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string OperatorName() {
  struct passwd* pw = getpwuid(getuid());
  return std::string("operator:") + (pw != nullptr && pw->pw_name != nullptr ? pw->pw_name : std::to_string(getuid()));
}

std::string JsonText(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "-";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

const json& JsonField(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

std::string NextToken(const json& reply) {
  const json& t = JsonField(reply, "nextToken");
  return t.is_string() ? t.get<std::string>() : "";
}

std::optional<json> RemoteCaller::Call(const std::string& method, const std::string& path, const QueryList& query,
                                       const json& body) {
  auto reply = method == "GET" ? client.Get(path, query) : client.Post(path, body.is_null() ? "" : body.dump());
  if (!reply) {
    CtlFail(reply.error());
    return std::nullopt;
  }
  json j = json::parse(reply->body, nullptr, false);
  if (reply->status >= 300 || !j.is_object()) {
    std::fprintf(stderr, "certfleetctl: server answered %ld: %s\n", reply->status,
                 !j.is_object() ? "(not a JSON object)" : (JsonText(j, "error") + ": " + JsonText(j, "message")).c_str());
    return std::nullopt;
  }
  return j;
}

int RemoteCaller::List(const std::string& path, const char* member, QueryList query, int64_t limit,
                       const std::vector<std::pair<std::string, std::string>>& columns) {
  json all = json::array();
  std::string next;
  for (;;) {
    auto q = query;
    q.emplace_back("limit", std::to_string(std::min<int64_t>(limit - static_cast<int64_t>(all.size()), 500)));
    if (!next.empty()) q.emplace_back("nextToken", next);
    auto j = Call("GET", path, q);
    if (!j) return 1;
    const json& items = JsonField(*j, member);
    if (items.is_array()) all.insert(all.end(), items.begin(), items.end());
    next = NextToken(*j);
    if (next.empty() || static_cast<int64_t>(all.size()) >= limit) break;
  }
  if (as_json) {
    std::printf("%s\n", all.dump(2).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows(1);
  for (const auto& [title, key] : columns) rows[0].push_back(title);
  for (const auto& x : all) {
    std::vector<std::string> row;
    for (const auto& [title, key] : columns) row.push_back(JsonText(x, key.c_str()));
    rows.push_back(std::move(row));
  }
  PrintTable(rows);
  return 0;
}

int RemoteCaller::Show(const std::string& method, const std::string& path, const json& body) {
  auto j = Call(method, path, {}, body);
  if (!j) return 1;
  if (as_json) {
    std::printf("%s\n", j->dump(2).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& [k, v] : j->items()) {
    if (v.is_array() || v.is_object()) continue;
    rows.push_back({k, v.is_string() ? v.get<std::string>() : v.dump()});
  }
  PrintTable(rows);
  return 0;
}

}  // namespace certfleet::companion
