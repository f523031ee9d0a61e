#include "shared/systemd/notifier.h"

#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef CERTFLEET_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#endif

namespace certfleet::shared {

ServiceNotifier::ServiceNotifier() {
#ifdef CERTFLEET_HAVE_SYSTEMD
  const char* socket = std::getenv("NOTIFY_SOCKET");
  enabled_ = socket != nullptr && *socket != '\0';
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_interval_ = std::chrono::milliseconds(std::max<uint64_t>(usec / 2000, 1));
  }
#endif
}

void ServiceNotifier::Send(const std::string& message) {
#ifdef CERTFLEET_HAVE_SYSTEMD
  if (enabled_) sd_notify(0, message.c_str());
#else
  (void)message;
#endif
}

namespace {

// STATUS= is one line.
std::string OneLine(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

}  // namespace

void ServiceNotifier::Ready(std::string_view status) {
  std::lock_guard lock(mu_);
  last_status_ = OneLine(status);
  Send("READY=1\nSTATUS=" + last_status_);
}

void ServiceNotifier::Status(std::string_view status) {
  std::lock_guard lock(mu_);
  std::string line = OneLine(status);
  if (line == last_status_) return;
  last_status_ = line;
  Send("STATUS=" + line);
}

void ServiceNotifier::Reloading() {
  std::lock_guard lock(mu_);
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t usec = static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
  last_status_ = "reloading configuration";
  Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\nSTATUS=" + last_status_);
}

void ServiceNotifier::Stopping(std::string_view status) {
  std::lock_guard lock(mu_);
  last_status_ = OneLine(status);
  Send("STOPPING=1\nSTATUS=" + last_status_);
}

void ServiceNotifier::Watchdog() {
  std::lock_guard lock(mu_);
  Send("WATCHDOG=1");
}

bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino;
}

std::string JournalFieldName(std::string_view key) {
  if (key == "thing") return "THING";
  if (key == "certificate_id" || key == "cert_id") return "CERT_ID";
  if (key == "rotation_id") return "ROTATION_ID";
  std::string out;
  for (char c : key) {
    if (c >= 'a' && c <= 'z') {
      out += static_cast<char>(c - 'a' + 'A');
    } else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
      out += c;
    } else {
      out += '_';
    }
  }
  // Journal field names must not start with a digit or '_' (those are trusted fields).
  if (out.empty() || out[0] == '_' || (out[0] >= '0' && out[0] <= '9')) out = "F" + out;
  return out;
}

JournalLogger::JournalLogger(std::string identifier, LogLevel min_level)
    : identifier_(std::move(identifier)), min_level_(min_level) {}

void JournalLogger::set_min_level(LogLevel level) {
  std::lock_guard lock(mu_);
  min_level_ = level;
}

void JournalLogger::Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) {
  std::lock_guard lock(mu_);
  if (static_cast<int>(level) > static_cast<int>(min_level_)) return;
  std::string line = FormatLogLine(message, fields);
#ifdef CERTFLEET_HAVE_SYSTEMD
  std::vector<std::string> items;
  items.reserve(fields.size() + 3);
  items.push_back("MESSAGE=" + line);
  items.push_back("PRIORITY=" + std::to_string(static_cast<int>(level)));
  items.push_back("SYSLOG_IDENTIFIER=" + identifier_);
  for (const auto& [key, value] : fields) items.push_back(JournalFieldName(key) + "=" + value);
  std::vector<iovec> iov;
  iov.reserve(items.size());
  for (auto& item : items) iov.push_back({item.data(), item.size()});
  if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0) return;
#endif
  std::fprintf(stderr, "<%d>%s\n", static_cast<int>(level), line.c_str());
  std::fflush(stderr);
}

}  // namespace certfleet::shared
