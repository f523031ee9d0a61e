#include "shared/core/log.h"

#include <cstdio>

namespace certfleet::shared {

Result<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warning") return LogLevel::kWarning;
  if (name == "error") return LogLevel::kError;
  return Error(Code::kInvalidArgument, "log level must be debug, info, warning or error, not '" + std::string(name) + "'");
}

std::string FormatLogLine(std::string_view message, std::initializer_list<LogField> fields) {
  std::string line(message);
  for (const auto& [key, value] : fields) {
    line += ' ';
    line += key;
    line += '=';
    bool quote = value.empty() || value.find_first_of(" \"=\t") != std::string::npos;
    if (quote) line += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') line += '\\';
      if (c == '\n') {
        line += "\\n";
        continue;
      }
      line += c;
    }
    if (quote) line += '"';
  }
  return line;
}

void StderrLogger::Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) {
  std::string line = FormatLogLine(message, fields);
  std::lock_guard lock(mu_);
  if (static_cast<int>(level) > static_cast<int>(min_level_)) return;
  if (journal_prefix_) {
    std::fprintf(stderr, "<%d>%s\n", static_cast<int>(level), line.c_str());
  } else {
    const char* name = "info";
    switch (level) {
      case LogLevel::kDebug: name = "debug"; break;
      case LogLevel::kInfo: name = "info"; break;
      case LogLevel::kNotice: name = "notice"; break;
      case LogLevel::kWarning: name = "warning"; break;
      case LogLevel::kError: name = "error"; break;
    }
    std::fprintf(stderr, "%s: %s\n", name, line.c_str());
  }
  std::fflush(stderr);
}

void CaptureLogger::Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) {
  std::lock_guard lock(mu_);
  records_.push_back({level, FormatLogLine(message, fields)});
}

bool CaptureLogger::Contains(std::string_view needle) const {
  std::lock_guard lock(mu_);
  for (const auto& r : records_) {
    if (r.line.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace certfleet::shared
