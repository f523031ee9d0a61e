// Structured logging: a message plus key=value fields. One Logger is created in main
// and passed down. Never log key material or tokens; log serial, subject,
// fingerprint, notAfter. Thread-safe.
#pragma once

#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shared/core/status.h"

namespace certfleet::shared {

enum class LogLevel { kDebug = 7, kInfo = 6, kNotice = 5, kWarning = 4, kError = 3 };

using LogField = std::pair<std::string_view, std::string>;

class Logger {
 public:
  virtual ~Logger() = default;
  virtual void Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) = 0;

  void Debug(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kDebug, m, f); }
  void Info(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kInfo, m, f); }
  void Warn(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kWarning, m, f); }
  void Error(std::string_view m, std::initializer_list<LogField> f = {}) { Log(LogLevel::kError, m, f); }
};

// Writes one line per record to stderr. With `journal_prefix`, lines start with the
// "<N>" priority prefix that journald understands (for units with StandardError=journal).
class StderrLogger final : public Logger {
 public:
  explicit StderrLogger(LogLevel min_level = LogLevel::kInfo, bool journal_prefix = false)
      : min_level_(min_level), journal_prefix_(journal_prefix) {}
  void Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) override;
  // For a configuration reload.
  void set_min_level(LogLevel level) {
    std::lock_guard lock(mu_);
    min_level_ = level;
  }

 private:
  std::mutex mu_;
  LogLevel min_level_;
  bool journal_prefix_;
};

// Keeps records in memory. For tests.
class CaptureLogger final : public Logger {
 public:
  struct Record {
    LogLevel level;
    std::string line;  // "message k=v k=v"
  };
  void Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) override;
  std::vector<Record> records() const {
    std::lock_guard lock(mu_);
    return records_;
  }
  bool Contains(std::string_view needle) const;

 private:
  mutable std::mutex mu_;
  std::vector<Record> records_;
};

class NullLogger final : public Logger {
 public:
  void Log(LogLevel, std::string_view, std::initializer_list<LogField>) override {}
};

// "debug", "info", "warning", "error" (the config and flag spellings).
Result<LogLevel> ParseLogLevel(std::string_view name);

// "message k=v k2=\"v with space\"".
std::string FormatLogLine(std::string_view message, std::initializer_list<LogField> fields);

}  // namespace certfleet::shared
