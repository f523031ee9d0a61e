// The service manager's side channel: readiness, status, watchdog, reload and stop
// notifications (sd_notify), and a logger that writes to the journal with structured
// fields (sd_journal_send). Outside systemd (no NOTIFY_SOCKET, no JOURNAL_STREAM) every
// notification is a no-op and the caller logs to stderr.
//
// Built on libsystemd when CERTFLEET_SYSTEMD is ON; without it the same API exists and
// does nothing, so that callers never need an #ifdef.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "shared/core/log.h"

namespace certfleet::shared {

// Thread-safe. Messages go out as one datagram each; failures are ignored (systemd
// treats a missing notification as the failure it is: a start timeout or a watchdog kill).
class ServiceNotifier {
 public:
  ServiceNotifier();

  // READY=1 with a STATUS= line. Also sent again after a reload.
  void Ready(std::string_view status);
  // STATUS= only when `status` differs from the last one sent.
  void Status(std::string_view status);
  // RELOADING=1 (and, on systemd >= 253, MONOTONIC_USEC=).
  void Reloading();
  void Stopping(std::string_view status = "stopping");
  void Watchdog();

  // Half of WATCHDOG_USEC when the unit has WatchdogSec= (and the watchdog is meant for
  // this process); nullopt otherwise.
  std::optional<std::chrono::milliseconds> watchdog_interval() const { return watchdog_interval_; }
  // Whether NOTIFY_SOCKET was set at start.
  bool enabled() const { return enabled_; }

 private:
  void Send(const std::string& message);

  std::mutex mu_;
  bool enabled_ = false;
  std::optional<std::chrono::milliseconds> watchdog_interval_;
  std::string last_status_;
};

// Whether stderr is connected to the journal (JOURNAL_STREAM names our stderr).
bool StderrIsJournal();

// Writes records to the journal: MESSAGE= (the formatted line, so that plain journalctl
// shows the fields too), PRIORITY=, SYSLOG_IDENTIFIER= and one FIELD= per log field,
// named in upper case (thing -> THING, certificate_id -> CERT_ID, rotation_id ->
// ROTATION_ID; other names upper-cased with characters outside [A-Z0-9_] as '_').
// Falls back to stderr with priority prefixes when libsystemd is not built in.
class JournalLogger final : public Logger {
 public:
  JournalLogger(std::string identifier, LogLevel min_level);
  void Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) override;
  void set_min_level(LogLevel level);

 private:
  std::string identifier_;
  std::mutex mu_;
  LogLevel min_level_;
};

// The journal field name for a log field name (see JournalLogger).
std::string JournalFieldName(std::string_view key);

}  // namespace certfleet::shared
