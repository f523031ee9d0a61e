// IOT_POLICY_OVERLY_PERMISSIVE_CHECK over mosquitto ACL files (docs/audit.md).
//
// A grant (read, write, readwrite; not deny) is overly permissive when one client may
// reach other things' topics through a wildcard:
//   - a `pattern` line whose topic has a wildcard (+ or #) in a level before the first
//     level that names the client (%u or %c), or that never names it;
//   - a `topic` line outside any `user` section (it applies to every client) with a wildcard;
//   - a `topic` line in a `user` section, other than the exempt user (the companion),
//     with a wildcard in a level before a level equal to that user's name.
// Pure; thread-safe. Input is untrusted text: any bytes are accepted (fuzzed).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace certfleet::companion {

struct PermissiveGrant {
  int line = 0;       // 1-based
  std::string user;   // "" outside a user section; "%u/%c pattern" lines give ""
  std::string grant;  // the line, trimmed
};

std::vector<PermissiveGrant> FindPermissiveAclGrants(std::string_view acl, std::string_view exempt_user);

}  // namespace certfleet::companion
