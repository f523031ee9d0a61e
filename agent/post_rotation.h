// After a rotation is committed: the configured [[hooks.post_rotation]] commands and the
// [[export]] copies of the certificate for other local services (docs/agent.md).
//
// Hooks run without a shell (posix_spawn of an absolute path), with a minimal
// environment (PATH plus CERTFLEET_* variables describing the new identity), stdin from
// /dev/null, and a time limit after which they are killed (SIGKILL). Exports are written
// atomically: a temporary file created with O_EXCL and its final mode, chown'ed to the
// configured owner/group before anything is written (only when running as root), fsync,
// rename, fsync of the directory. Failures are returned, never thrown; the rotation stays
// committed. Thread-compatible.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "agent/config.h"
#include "agent/daemon.h"
#include "shared/core/log.h"
#include "shared/core/status.h"

namespace certfleet::agent {

// kDeadlineExceeded when killed for the timeout; kInternal for a non-zero exit or a
// signal; kUnavailable if it cannot be started.
shared::Status RunHook(const std::vector<std::string>& command, const std::vector<std::string>& env,
                       std::chrono::milliseconds timeout);

// The content of an export: "cert" (the leaf), "ca" (CA certificates), "chain" (both).
std::string ExportContent(const std::string& what, const CommittedIdentity& identity);
shared::Status WriteExport(const AgentConfig::Export& e, const std::string& content);

// Runs every export then every hook; logs each result.
void RunPostRotation(const AgentConfig& config, const CommittedIdentity& identity, shared::Logger& log);

}  // namespace certfleet::agent
