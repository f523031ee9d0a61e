// Status and Result: expected failures as values.
//
// A Status carries a code that tells the caller whether retrying can help
// (kUnavailable, kDeadlineExceeded, kResourceExhausted) or not (everything else),
// a human-readable message, and optional context prepended by callers on the way up.
// Result<T> is tl::expected<T, Status>. Neither type throws.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <tl/expected.hpp>

namespace certfleet::shared {

enum class Code {
  kOk = 0,
  kInvalidArgument,     // the input is malformed or violates policy; do not retry as is
  kNotFound,
  kAlreadyExists,
  kPermissionDenied,    // authenticated but not allowed
  kUnauthenticated,     // no or bad credentials
  kFailedPrecondition,  // state does not allow it (expired, revoked, used token ...)
  kResourceExhausted,   // too large, too many; retry later may help
  kUnavailable,         // transient: network, server busy; retry
  kDeadlineExceeded,    // timed out; retry
  kUnimplemented,
  kDataLoss,            // stored data is corrupt
  kInternal,
};

std::string_view CodeName(Code code);
bool IsRetryable(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // Returns a copy whose message reads "context: message".
  Status WithContext(std::string_view context) const;
  // "CODE: message", or "OK".
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

template <class T>
using Result = tl::expected<T, Status>;

inline tl::unexpected<Status> Error(Code code, std::string message) {
  return tl::unexpected<Status>(Status(code, std::move(message)));
}
inline tl::unexpected<Status> Error(Status status) {
  return tl::unexpected<Status>(std::move(status));
}

// Converts to a Status or to any Result<T>: lets one macro serve both kinds of function.
class [[nodiscard]] ErrorReturn {
 public:
  explicit ErrorReturn(Status status) : status_(std::move(status)) {}
  operator Status() && { return std::move(status_); }  // NOLINT(google-explicit-constructor)
  template <class T>
  operator tl::expected<T, Status>() && {  // NOLINT(google-explicit-constructor)
    return tl::unexpected<Status>(std::move(status_));
  }

 private:
  Status status_;
};

}  // namespace certfleet::shared

// Propagates a failed Status (from a Status or a Result) to the caller.
#define CF_RETURN_IF_ERROR(expr)                                    \
  do {                                                              \
    ::certfleet::shared::Status cf_status_ = (expr);                \
    if (!cf_status_.ok()) return ::certfleet::shared::ErrorReturn(std::move(cf_status_)); \
  } while (0)

#define CF_CONCAT_INNER(a, b) a##b
#define CF_CONCAT(a, b) CF_CONCAT_INNER(a, b)
// Declares `lhs` from a Result, returning its error to the caller on failure.
#define CF_ASSIGN_OR_RETURN(lhs, expr)                                  \
  auto CF_CONCAT(cf_result_, __LINE__) = (expr);                         \
  if (!CF_CONCAT(cf_result_, __LINE__))                                 \
    return ::certfleet::shared::ErrorReturn(std::move(CF_CONCAT(cf_result_, __LINE__)).error()); \
  lhs = std::move(*CF_CONCAT(cf_result_, __LINE__))
