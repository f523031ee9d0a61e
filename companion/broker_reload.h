// Asks the MQTT broker to reload its configuration (and with it the CRL file): runs an
// operator-configured command and/or sends SIGHUP to the pid in a pid file. mosquitto
// re-reads its crlfile on SIGHUP for new connections.
//
// The command is an argv (absolute executable path, then arguments), started with
// posix_spawn without a shell, in its own process group, with stdin/stdout/stderr on
// /dev/null, cwd "/" and environment PATH=/usr/bin:/bin only. It must exit 0 within the
// timeout, or its process group is killed (SIGKILL) and reaped. Thread-safe; the same
// preconditions as HookRunner (nothing else reaps arbitrary children).
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "shared/core/filesystem.h"
#include "shared/core/status.h"

namespace certfleet::companion {

struct BrokerReloadSpec {
  std::vector<std::string> command;  // empty: none
  std::string pid_file;              // empty: none
  std::chrono::milliseconds timeout{10000};

  bool empty() const { return command.empty() && pid_file.empty(); }
};

// Checks the spec as the config loader does: the command's executable like a hook's
// (ParseHookSpec: absolute, regular, executable, not group/other-writable, owned by root
// or us), the pid file path absolute. kInvalidArgument, kNotFound or kPermissionDenied.
shared::Status ValidateBrokerReloadSpec(const BrokerReloadSpec& spec);

// Runs the command (if any), then signals the pid file's process (if any). Errors:
// kDeadlineExceeded (command killed after the timeout), kInternal (non-zero exit or death
// by signal, spawn failure), kNotFound (no pid file or no such process),
// kInvalidArgument (a pid file not holding one positive pid), kPermissionDenied (kill).
shared::Status ReloadBroker(const BrokerReloadSpec& spec, const shared::Filesystem& fs);

}  // namespace certfleet::companion
