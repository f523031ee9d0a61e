#include "companion/audit_policy.h"

namespace certfleet::companion {

namespace {

std::string_view Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    const size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

// Splits a line into whitespace-separated words (at most 3: keyword, access, topic; the
// topic keeps any spaces after it).
std::vector<std::string_view> Words(std::string_view line) {
  std::vector<std::string_view> out;
  while (!line.empty() && out.size() < 2) {
    const size_t end = line.find_first_of(" \t");
    out.push_back(line.substr(0, end));
    if (end == std::string_view::npos) return out;
    line = Trim(line.substr(end));
  }
  if (!line.empty()) out.push_back(line);
  return out;
}

bool IsWildcard(std::string_view level) { return level == "+" || level == "#"; }

// Whether a wildcard level comes before the first level for which names_client holds.
template <class Pred>
bool WildcardBeforeClient(std::string_view topic, Pred names_client) {
  for (std::string_view level : Split(topic, '/')) {
    if (names_client(level)) return false;
    if (IsWildcard(level)) return true;
  }
  return false;
}

}  // namespace

std::vector<PermissiveGrant> FindPermissiveAclGrants(std::string_view acl, std::string_view exempt_user) {
  std::vector<PermissiveGrant> out;
  std::string user;
  bool in_user = false;
  int line_no = 0;
  for (std::string_view raw : Split(acl, '\n')) {
    ++line_no;
    const std::string_view line = Trim(raw);
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string_view> w = Words(line);
    if (w[0] == "user") {
      in_user = w.size() >= 2;
      user = in_user ? std::string(Trim(line.substr(4))) : std::string();
      continue;
    }
    if (w[0] != "topic" && w[0] != "pattern") continue;
    std::string_view access = "readwrite";
    std::string_view topic;
    if (w.size() == 2) {
      topic = w[1];
    } else if (w.size() == 3) {
      access = w[1];
      topic = w[2];
    } else {
      continue;
    }
    if (access == "deny") continue;
    bool permissive = false;
    if (w[0] == "pattern") {
      permissive = WildcardBeforeClient(topic, [](std::string_view level) {
        return level.find("%u") != std::string_view::npos || level.find("%c") != std::string_view::npos;
      });
    } else if (!in_user) {
      permissive = topic.find_first_of("+#") != std::string_view::npos;
    } else if (user != exempt_user) {
      permissive = WildcardBeforeClient(topic, [&](std::string_view level) { return level == user; });
    }
    if (permissive) out.push_back({line_no, w[0] == "pattern" ? std::string() : user, std::string(line)});
  }
  return out;
}

}  // namespace certfleet::companion
