// certfleetctl's audit commands (local admin mode; docs/cli.md): audit start|list|show|
// suppress|suppressions|unsuppress, quarantine, unquarantine.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

namespace certfleet::companion {

struct AuditCommands;
struct RemoteCaller;

// Registers the commands on `app`; `config_path` and `as_json` are the global options,
// read when the command runs.
std::shared_ptr<AuditCommands> AddAuditCommands(CLI::App& app, const std::string* config_path);
// Runs the selected command: its exit code, or -1 when no audit command was selected.
int RunAuditCommands(AuditCommands& commands);
// The same in remote mode, over the operator API: audit start (queued on the companion;
// prints the task id), list, show, suppressions, quarantine, unquarantine.
int RunRemoteAuditCommands(AuditCommands& commands, RemoteCaller& remote);

}  // namespace certfleet::companion
