#include "companion/hooks.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <thread>
#include <utility>

#include "shared/core/handles.h"
#include "shared/x509/cert.h"

namespace certfleet::companion {

namespace sh = shared;
using sh::Code;
using sh::Result;
using sh::Status;
using Json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr std::chrono::milliseconds kMinTimeout{1};
constexpr std::chrono::milliseconds kMaxTimeout{10 * 60 * 1000};
constexpr int64_t kMinOutputBytes = 2;  // "{}"
constexpr int64_t kMaxOutputBytes = 16 << 20;
// A hook's own reason is cut to this many bytes (at a UTF-8 boundary) for logs and events.
constexpr size_t kMaxDecisionReasonBytes = 256;
constexpr size_t kMinSecretBytes = 16;
constexpr size_t kMaxSecretBytes = 4096;
constexpr size_t kStderrCapBytes = 4096;
constexpr size_t kStderrLogBytes = 1024;

// ---- small helpers ----

std::string ErrnoText(int err) { return std::strerror(err); }

Code CodeForErrno(int err) {
  if (err == ENOENT || err == ENOTDIR) return Code::kNotFound;
  if (err == EACCES || err == EPERM) return Code::kPermissionDenied;
  return Code::kInternal;
}

std::string OctalMode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Owner rule shared by executables and secret files: root or this process's user.
Status CheckOwner(const struct stat& st, const std::string& what, const std::string& path) {
  if (st.st_uid != 0 && st.st_uid != geteuid()) {
    return {Code::kPermissionDenied,
            what + " " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not by root or this user"};
  }
  return Status::Ok();
}

bool ValidEventName(std::string_view event) {
  if (event.empty() || event.size() > 64) return false;
  return std::all_of(event.begin(), event.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

// A control-character-free, capped copy of what a hook wrote to stderr, for one log field.
std::string PrintableExcerpt(std::string_view s, size_t cap) {
  std::string out;
  out.reserve(std::min(s.size(), cap));
  for (char c : s.substr(0, cap)) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (s.size() > cap) out += "...";
  return out;
}

// The hook's answer must be exactly one JSON object. Parsing does not throw.
Result<Json> ParseHookOutput(const std::string& text, const std::string& who) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return sh::Error(Code::kInvalidArgument, who + " answered nothing");
  }
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return sh::Error(Code::kInvalidArgument, who + " answered something that is not JSON");
  if (!j.is_object()) return sh::Error(Code::kInvalidArgument, who + " answered JSON that is not an object");
  return j;
}

// ---- exec hooks ----

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A close-on-exec pipe whose ends are both >= 3, so that the dup2 onto 0, 1 and 2 in the child
// can never overwrite another of the pipe ends (possible if the parent runs with 0-2 closed).
Status MakePipe(UniqueFd& read_end, UniqueFd& write_end) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {Code::kInternal, "pipe2: " + ErrnoText(errno)};
  UniqueFd r(fds[0]);
  UniqueFd w(fds[1]);
  for (UniqueFd* end : {&r, &w}) {
    if (end->get() < 3) {
      int moved = fcntl(end->get(), F_DUPFD_CLOEXEC, 3);
      if (moved < 0) return {Code::kInternal, "fcntl(F_DUPFD_CLOEXEC): " + ErrnoText(errno)};
      *end = UniqueFd(moved);
    }
  }
  read_end = std::move(r);
  write_end = std::move(w);
  return Status::Ok();
}

Status SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return {Code::kInternal, "fcntl(O_NONBLOCK): " + ErrnoText(errno)};
  }
  return Status::Ok();
}

// Blocks SIGPIPE on this thread while a hook's stdin is written: a hook that exits without
// reading its input must cost an EPIPE, not the companion. A SIGPIPE raised meanwhile is
// thread-directed and is consumed before the old mask comes back.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~SigpipeBlock() {
    if (sigismember(&old_, SIGPIPE) == 1) return;  // the caller keeps it blocked; leave it so
    timespec zero{0, 0};
    while (sigtimedwait(&set_, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t set_;
  sigset_t old_;
};

class SpawnAttr {
 public:
  SpawnAttr() { ok_ = posix_spawnattr_init(&attr_) == 0; }
  ~SpawnAttr() {
    if (ok_) posix_spawnattr_destroy(&attr_);
  }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
  bool ok() const { return ok_; }
  posix_spawnattr_t* get() { return &attr_; }

 private:
  posix_spawnattr_t attr_;
  bool ok_ = false;
};

class SpawnFileActions {
 public:
  SpawnFileActions() { ok_ = posix_spawn_file_actions_init(&fa_) == 0; }
  ~SpawnFileActions() {
    if (ok_) posix_spawn_file_actions_destroy(&fa_);
  }
  SpawnFileActions(const SpawnFileActions&) = delete;
  SpawnFileActions& operator=(const SpawnFileActions&) = delete;
  bool ok() const { return ok_; }
  posix_spawn_file_actions_t* get() { return &fa_; }

 private:
  posix_spawn_file_actions_t fa_;
  bool ok_ = false;
};

Status CheckExecutable(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0].empty()) return {Code::kInvalidArgument, "hook command is empty"};
  for (const auto& arg : argv) {
    if (arg.find('\0') != std::string::npos) return {Code::kInvalidArgument, "hook argument contains a NUL byte"};
  }
  const std::string& path = argv[0];
  if (path.front() != '/') return {Code::kInvalidArgument, "hook executable must be an absolute path: " + path};
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    return {CodeForErrno(err), "hook executable " + path + ": " + ErrnoText(err)};
  }
  if (!S_ISREG(st.st_mode)) return {Code::kInvalidArgument, "hook executable " + path + " is not a regular file"};
  if ((st.st_mode & 0111) == 0) {
    return {Code::kPermissionDenied,
            "hook executable " + path + " has no execute bit (mode " + OctalMode(st.st_mode) + ")"};
  }
  if ((st.st_mode & 022) != 0) {
    return {Code::kPermissionDenied, "hook executable " + path + " is writable by group or others (mode " +
                                         OctalMode(st.st_mode) + ")"};
  }
  return CheckOwner(st, "hook executable", path);
}

// Waits until `pid` has exited, without reaping it, or until `deadline`. True if it exited.
bool WaitForExit(pid_t pid, SteadyClock::time_point deadline) {
#ifdef SYS_pidfd_open
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));  // close-on-exec by definition
  if (pidfd.valid()) {
    for (;;) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now());
      if (left.count() <= 0) left = std::chrono::milliseconds(0);
      pollfd p{pidfd.get(), POLLIN, 0};
      int n = ::poll(&p, 1, static_cast<int>(left.count()));
      if (n > 0) return true;
      if (n == 0) return false;
      if (errno != EINTR) break;  // fall back to polling waitid
    }
  }
#endif
  auto nap = std::chrono::milliseconds(1);
  for (;;) {
    siginfo_t si{};
    if (waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOHANG | WNOWAIT) != 0 && errno != EINTR) return true;
    if (si.si_pid == pid) return true;
    if (SteadyClock::now() >= deadline) return false;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::milliseconds(20));
  }
}

// Kills whatever is left of the hook's process group, then reaps the hook. The group is
// signalled while the (possibly zombie) leader still holds the group id, so the id cannot
// have been reused by an unrelated process.
int KillGroupAndReap(pid_t pid) {
  ::kill(-pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

// ---- webhooks ----

using CurlUrlPtr = std::unique_ptr<CURLU, sh::FnDeleter<curl_url_cleanup>>;

struct CurlString {
  char* p = nullptr;
  ~CurlString() { curl_free(p); }
};

struct ParsedUrl {
  std::string scheme;
  std::string host;
  std::string redacted;  // scheme://host[:port]/path, for logs
};

Result<ParsedUrl> ParseWebhookUrl(const std::string& url, bool allow_insecure_loopback) {
  CurlUrlPtr u(curl_url());
  if (!u) return sh::Error(Code::kInternal, "curl_url failed");
  if (curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) {
    return sh::Error(Code::kInvalidArgument, "webhook URL is malformed: " + url);
  }
  CurlString scheme, host, user, port, path;
  if (curl_url_get(u.get(), CURLUPART_SCHEME, &scheme.p, 0) != CURLUE_OK ||
      curl_url_get(u.get(), CURLUPART_HOST, &host.p, 0) != CURLUE_OK) {
    return sh::Error(Code::kInvalidArgument, "webhook URL lacks a scheme or host: " + url);
  }
  if (curl_url_get(u.get(), CURLUPART_USER, &user.p, 0) == CURLUE_OK) {
    return sh::Error(Code::kInvalidArgument, "webhook URL must not carry credentials");
  }
  ParsedUrl out;
  out.scheme = scheme.p;
  out.host = host.p;
  std::transform(out.scheme.begin(), out.scheme.end(), out.scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (out.scheme != "https") {
    bool loopback = out.host == "127.0.0.1" || out.host == "[::1]" || out.host == "localhost";
    if (out.scheme != "http" || !allow_insecure_loopback || !loopback) {
      return sh::Error(Code::kInvalidArgument,
                       "webhook URL must use https (http only to a loopback host with allow_insecure_loopback): " +
                           url);
    }
  }
  out.redacted = out.scheme + "://" + out.host;
  if (curl_url_get(u.get(), CURLUPART_PORT, &port.p, 0) == CURLUE_OK) out.redacted += ":" + std::string(port.p);
  if (curl_url_get(u.get(), CURLUPART_PATH, &path.p, 0) == CURLUE_OK) out.redacted += path.p;
  return out;
}

Status CheckWebhookSpec(const HookSpec& spec) {
  if (auto url = ParseWebhookUrl(spec.url, spec.allow_insecure_loopback); !url) return url.error();
  if (spec.hmac_secret.empty()) {
    return {Code::kFailedPrecondition, "webhook has no HMAC secret loaded (build the spec with ParseHookSpec)"};
  }
  return Status::Ok();
}

// Reads a secret through one open file: the mode and owner checked are those of the file read.
Result<std::string> LoadSecretFile(const std::string& path) {
  if (path.empty() || path.front() != '/') {
    return sh::Error(Code::kInvalidArgument, "webhook secret_file must be an absolute path: " + path);
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) {
    int err = errno;
    return sh::Error(CodeForErrno(err), "webhook secret file " + path + ": " + ErrnoText(err));
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return sh::Error(Code::kInternal, "fstat " + path + ": " + ErrnoText(errno));
  if (!S_ISREG(st.st_mode)) {
    return sh::Error(Code::kInvalidArgument, "webhook secret file " + path + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    return sh::Error(Code::kPermissionDenied, "webhook secret file " + path +
                                                  " is accessible to group or others (mode " + OctalMode(st.st_mode) +
                                                  "); chmod 600 it");
  }
  CF_RETURN_IF_ERROR(CheckOwner(st, "webhook secret file", path));
  std::string data;
  char buf[1024];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sh::Error(Code::kInternal, "read " + path + ": " + ErrnoText(errno));
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > kMaxSecretBytes + 64) break;
  }
  auto first = data.find_first_not_of(" \t\r\n");
  auto last = data.find_last_not_of(" \t\r\n");
  std::string secret = first == std::string::npos ? std::string() : data.substr(first, last - first + 1);
  OPENSSL_cleanse(data.data(), data.size());
  if (secret.size() < kMinSecretBytes || secret.size() > kMaxSecretBytes) {
    return sh::Error(Code::kInvalidArgument, "webhook secret in " + path + " must be " +
                                                 std::to_string(kMinSecretBytes) + " to " +
                                                 std::to_string(kMaxSecretBytes) + " bytes");
  }
  return secret;
}

Status CheckTrustAnchorFile(const std::string& path) {
  if (path.front() != '/') {
    return {Code::kInvalidArgument, "webhook trust_anchor_file must be an absolute path: " + path};
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) {
    int err = errno;
    return {CodeForErrno(err), "webhook trust anchor file " + path + ": " + ErrnoText(err)};
  }
  std::string pem;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return {Code::kInternal, "read " + path + ": " + ErrnoText(errno)};
    if (n == 0) break;
    pem.append(buf, static_cast<size_t>(n));
    if (pem.size() > (4 << 20)) return {Code::kInvalidArgument, "webhook trust anchor file " + path + " is too large"};
  }
  auto certs = sh::CertsFromPem(pem);
  if (!certs || certs->empty()) {
    return {Code::kInvalidArgument, "webhook trust anchor file " + path + " holds no PEM certificate"};
  }
  return Status::Ok();
}

struct Body {
  std::string data;
  size_t cap = 0;
  bool too_large = false;
};

size_t OnWebhookBody(char* data, size_t size, size_t n, void* user) {
  auto* b = static_cast<Body*>(user);
  size_t len = size * n;
  if (b->data.size() + len > b->cap) {
    b->too_large = true;
    return 0;  // aborts the transfer
  }
  b->data.append(data, len);
  return len;
}

std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[p[i] >> 4]);
    out.push_back(kDigits[p[i] & 0xf]);
  }
  return out;
}

std::string HmacSha256Hex(std::string_view key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t len = 0;
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, sizeof mac, &len) == nullptr) {
    return {};
  }
  return Hex(mac, len);
}

std::string KindName(HookSpec::Kind kind) { return kind == HookSpec::kExec ? "exec" : "webhook"; }

std::string TargetForLog(const HookSpec& spec) {
  if (spec.kind == HookSpec::kExec) return spec.argv.empty() ? std::string() : spec.argv[0];
  auto parsed = ParseWebhookUrl(spec.url, true);
  return parsed ? parsed->redacted : std::string("(invalid URL)");
}

}  // namespace

// ---- ParseHookSpec ----

Status CheckHookConfig(const HookConfig& config) {
  bool is_exec = !config.command.empty();
  bool is_webhook = !config.url.empty();
  if (is_exec && is_webhook) return {Code::kInvalidArgument, "a hook needs either command or url, not both"};
  if (!is_exec && !is_webhook) return {Code::kInvalidArgument, "a hook needs either command or url"};
  if (config.timeout < kMinTimeout || config.timeout > kMaxTimeout) {
    return {Code::kInvalidArgument, "hook timeout must be 1 ms to 10 min"};
  }
  if (config.max_output_bytes < kMinOutputBytes || config.max_output_bytes > kMaxOutputBytes) {
    return {Code::kInvalidArgument, "hook max_output_bytes must be 2 to 16777216"};
  }
  if (is_exec) {
    if (!config.secret_file.empty() || !config.trust_anchor_file.empty() || config.allow_insecure_loopback) {
      return {Code::kInvalidArgument, "secret_file, trust_anchor_file and allow_insecure_loopback apply to webhooks only"};
    }
    const std::string& path = config.command.front();
    if (path.empty() || path.front() != '/') {
      return {Code::kInvalidArgument, "hook executable must be an absolute path: " + path};
    }
    return Status::Ok();
  }
  if (auto url = ParseWebhookUrl(config.url, config.allow_insecure_loopback); !url) return url.error();
  if (config.secret_file.empty()) return {Code::kInvalidArgument, "a webhook needs secret_file"};
  if (config.secret_file.front() != '/') {
    return {Code::kInvalidArgument, "webhook secret_file must be an absolute path: " + config.secret_file};
  }
  if (!config.trust_anchor_file.empty() && config.trust_anchor_file.front() != '/') {
    return {Code::kInvalidArgument, "webhook trust_anchor_file must be an absolute path: " + config.trust_anchor_file};
  }
  return Status::Ok();
}

Result<HookSpec> ParseHookSpec(const HookConfig& config) {
  CF_RETURN_IF_ERROR(CheckHookConfig(config));
  HookSpec spec;
  spec.timeout = config.timeout;
  spec.max_output_bytes = static_cast<size_t>(config.max_output_bytes);
  if (!config.command.empty()) {
    spec.kind = HookSpec::kExec;
    spec.argv = config.command;
    CF_RETURN_IF_ERROR(CheckExecutable(spec.argv));
    return spec;
  }
  spec.kind = HookSpec::kWebhook;
  spec.url = config.url;
  spec.allow_insecure_loopback = config.allow_insecure_loopback;
  CF_ASSIGN_OR_RETURN(spec.hmac_secret, LoadSecretFile(config.secret_file));
  spec.hmac_secret_file = config.secret_file;
  if (!config.trust_anchor_file.empty()) {
    CF_RETURN_IF_ERROR(CheckTrustAnchorFile(config.trust_anchor_file));
    spec.trust_anchor_file = config.trust_anchor_file;
  }
  return spec;
}

// ---- HookRunner ----

HookRunner::HookRunner(sh::Logger& logger, const sh::Clock& clock) : logger_(logger), clock_(clock) {}

Result<Json> HookRunner::Run(const HookSpec& spec, std::string_view event, const Json& input, HookRunInfo* info) {
  HookRunInfo local;
  HookRunInfo& run = info != nullptr ? *info : local;
  run = HookRunInfo{};
  auto start = SteadyClock::now();
  Result<Json> result = sh::Error(Code::kInternal, "hook did not run");
  try {
    if (!ValidEventName(event)) {
      result = sh::Error(Code::kInvalidArgument, "invalid hook event name");
    } else if (spec.timeout < kMinTimeout || spec.timeout > kMaxTimeout ||
               spec.max_output_bytes < static_cast<size_t>(kMinOutputBytes) ||
               spec.max_output_bytes > static_cast<size_t>(kMaxOutputBytes)) {
      result = sh::Error(Code::kInvalidArgument, "hook timeout or max_output_bytes out of range");
    } else {
      const std::string body = input.dump(-1, ' ', false, Json::error_handler_t::replace);
      result = spec.kind == HookSpec::kExec ? RunExec(spec, event, body, run) : RunWebhook(spec, event, body, run);
    }
  } catch (const std::exception& e) {
    result = sh::Error(Code::kInternal, std::string("hook runner: ") + e.what());
  }
  run.duration = std::chrono::duration_cast<std::chrono::microseconds>(SteadyClock::now() - start);
  run.outcome = result ? Code::kOk : result.error().code();
  if (observer_) observer_(event, run.duration, result.has_value());
  std::string duration_ms = std::to_string(run.duration.count() / 1000);
  std::string target = TargetForLog(spec);
  std::string detail = spec.kind == HookSpec::kExec
                           ? (run.term_signal != 0 ? "signal " + std::to_string(run.term_signal)
                                                   : "exit " + std::to_string(run.exit_code))
                           : "http " + std::to_string(run.http_status);
  if (result) {
    logger_.Info("hook ran", {{"event", std::string(event)},
                              {"kind", KindName(spec.kind)},
                              {"target", target},
                              {"outcome", "ok"},
                              {"result", detail},
                              {"duration_ms", duration_ms}});
  } else {
    logger_.Warn("hook failed", {{"event", std::string(event)},
                                 {"kind", KindName(spec.kind)},
                                 {"target", target},
                                 {"outcome", std::string(sh::CodeName(result.error().code()))},
                                 {"result", detail},
                                 {"duration_ms", duration_ms},
                                 {"error", result.error().message()}});
  }
  return result;
}

void HookRunner::RunPostHook(const HookSpec& spec, std::string_view event, const Json& input) {
  ReportPostHook(logger_, event, Run(spec, event, input));
}

Result<Json> HookRunner::RunExec(const HookSpec& spec, std::string_view event, const std::string& body,
                                 HookRunInfo& info) {
  const auto deadline = SteadyClock::now() + spec.timeout;
  CF_RETURN_IF_ERROR(CheckExecutable(spec.argv));
  const std::string& path = spec.argv[0];

  UniqueFd in_r, in_w, out_r, out_w, err_r, err_w;
  CF_RETURN_IF_ERROR(MakePipe(in_r, in_w));
  CF_RETURN_IF_ERROR(MakePipe(out_r, out_w));
  CF_RETURN_IF_ERROR(MakePipe(err_r, err_w));

  SpawnFileActions fa;
  SpawnAttr attr;
  if (!fa.ok() || !attr.ok()) return sh::Error(Code::kInternal, "posix_spawn setup failed");
  // The pipe ends are close-on-exec; dup2 onto 0-2 clears the flag on the copies only.
  // closefrom(3) also drops any descriptor someone else opened without O_CLOEXEC.
  bool fa_ok = posix_spawn_file_actions_adddup2(fa.get(), in_r.get(), STDIN_FILENO) == 0 &&
               posix_spawn_file_actions_adddup2(fa.get(), out_w.get(), STDOUT_FILENO) == 0 &&
               posix_spawn_file_actions_adddup2(fa.get(), err_w.get(), STDERR_FILENO) == 0 &&
               posix_spawn_file_actions_addclosefrom_np(fa.get(), 3) == 0 &&
               posix_spawn_file_actions_addchdir_np(fa.get(), "/") == 0;
  sigset_t no_signals, default_signals;
  sigemptyset(&no_signals);
  sigfillset(&default_signals);
  sigdelset(&default_signals, SIGKILL);
  sigdelset(&default_signals, SIGSTOP);
  const short flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  bool attr_ok = posix_spawnattr_setflags(attr.get(), flags) == 0 && posix_spawnattr_setpgroup(attr.get(), 0) == 0 &&
                 posix_spawnattr_setsigmask(attr.get(), &no_signals) == 0 &&
                 posix_spawnattr_setsigdefault(attr.get(), &default_signals) == 0;
  if (!fa_ok || !attr_ok) return sh::Error(Code::kInternal, "posix_spawn setup failed");

  std::vector<std::string> env = {"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "CERTFLEET_HOOK_EVENT=" + std::string(event)};
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = spec.argv;
  std::vector<char*> argvp;
  for (auto& a : args) argvp.push_back(a.data());
  argvp.push_back(nullptr);

  pid_t pid = -1;
  int rc = posix_spawn(&pid, path.c_str(), fa.get(), attr.get(), argvp.data(), envp.data());
  if (rc != 0) {
    Code code = rc == ENOEXEC ? Code::kInvalidArgument : CodeForErrno(rc);
    return sh::Error(code, "cannot start hook " + path + ": " + ErrnoText(rc));
  }
  in_r.Reset();
  out_w.Reset();
  err_w.Reset();

  SigpipeBlock no_sigpipe;
  Status io = SetNonBlocking(in_w.get());
  if (io.ok()) io = SetNonBlocking(out_r.get());
  if (io.ok()) io = SetNonBlocking(err_r.get());

  std::string out, err;
  size_t written = 0;
  bool timed_out = false, too_large = false;
  if (body.empty()) in_w.Reset();
  char buf[16384];
  while (io.ok() && (out_r.valid() || err_r.valid())) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    std::array<pollfd, 3> fds{};
    nfds_t n = 0;
    int i_in = -1, i_out = -1, i_err = -1;
    if (in_w.valid()) fds[i_in = static_cast<int>(n++)] = {in_w.get(), POLLOUT, 0};
    if (out_r.valid()) fds[i_out = static_cast<int>(n++)] = {out_r.get(), POLLIN, 0};
    if (err_r.valid()) fds[i_err = static_cast<int>(n++)] = {err_r.get(), POLLIN, 0};
    int ready = ::poll(fds.data(), n, static_cast<int>(std::min<int64_t>(left.count(), 60000)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      io = Status(Code::kInternal, "poll: " + ErrnoText(errno));
      break;
    }
    if (i_in >= 0 && fds[i_in].revents != 0) {
      ssize_t w = ::write(in_w.get(), body.data() + written, body.size() - written);
      if (w > 0) written += static_cast<size_t>(w);
      // EPIPE: the hook stopped reading; what it answers still decides.
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == body.size()) in_w.Reset();
    }
    if (i_out >= 0 && fds[i_out].revents != 0) {
      for (;;) {
        ssize_t r = ::read(out_r.get(), buf, sizeof buf);
        if (r > 0) {
          if (out.size() + static_cast<size_t>(r) > spec.max_output_bytes) {
            too_large = true;
            break;
          }
          out.append(buf, static_cast<size_t>(r));
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r == 0 || errno != EAGAIN) out_r.Reset();
        break;
      }
      if (too_large) break;
    }
    if (i_err >= 0 && fds[i_err].revents != 0) {
      for (;;) {
        ssize_t r = ::read(err_r.get(), buf, sizeof buf);
        if (r > 0) {
          size_t keep = std::min(static_cast<size_t>(r), kStderrCapBytes - std::min(err.size(), kStderrCapBytes));
          err.append(buf, keep);  // the rest is drained and dropped
          continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r == 0 || errno != EAGAIN) err_r.Reset();
        break;
      }
    }
  }
  in_w.Reset();
  if (io.ok() && !timed_out && !too_large && !WaitForExit(pid, deadline)) timed_out = true;
  int status = KillGroupAndReap(pid);
  out_r.Reset();
  err_r.Reset();
  if (status >= 0 && WIFEXITED(status)) info.exit_code = WEXITSTATUS(status);
  if (status >= 0 && WIFSIGNALED(status)) info.term_signal = WTERMSIG(status);

  if (!err.empty()) {
    logger_.Debug("hook stderr", {{"event", std::string(event)},
                                  {"target", path},
                                  {"stderr", PrintableExcerpt(err, kStderrLogBytes)}});
  }
  if (!io.ok()) return sh::Error(io.WithContext("hook " + path));
  if (timed_out) {
    return sh::Error(Code::kDeadlineExceeded,
                     "hook " + path + " timed out after " + std::to_string(spec.timeout.count()) + " ms; killed");
  }
  if (too_large) {
    return sh::Error(Code::kResourceExhausted, "hook " + path + " wrote more than " +
                                                   std::to_string(spec.max_output_bytes) + " bytes; killed");
  }
  if (status < 0) return sh::Error(Code::kInternal, "hook " + path + ": waitpid: " + ErrnoText(errno));
  if (info.term_signal != 0) {
    return sh::Error(Code::kInternal, "hook " + path + " was killed by signal " + std::to_string(info.term_signal));
  }
  if (info.exit_code != 0) {
    return sh::Error(Code::kInternal, "hook " + path + " exited with status " + std::to_string(info.exit_code));
  }
  return ParseHookOutput(out, "hook " + path);
}

Result<Json> HookRunner::RunWebhook(const HookSpec& spec, std::string_view event, const std::string& body,
                                    HookRunInfo& info) {
  CF_RETURN_IF_ERROR(CheckWebhookSpec(spec));
  CF_ASSIGN_OR_RETURN(ParsedUrl url, ParseWebhookUrl(spec.url, spec.allow_insecure_loopback));
  const std::string who = "webhook " + url.redacted;
  const int64_t timestamp = sh::ToUnixSeconds(clock_.Now());
  const std::string signature = HookSignature(spec.hmac_secret, timestamp, body);
  if (signature == "sha256=") return sh::Error(Code::kInternal, who + ": HMAC-SHA256 failed");

  sh::CurlPtr curl(curl_easy_init());
  if (!curl) return sh::Error(Code::kInternal, "curl_easy_init failed");
  CURL* c = curl.get();
  sh::CurlSlistPtr headers;
  for (const std::string& h : {std::string("Content-Type: application/json"), std::string("Accept: application/json"),
                               std::string("Expect:"), "X-Certfleet-Event: " + std::string(event),
                               "X-Certfleet-Timestamp: " + std::to_string(timestamp),
                               "X-Certfleet-Signature: " + signature}) {
    curl_slist* next = curl_slist_append(headers.get(), h.c_str());
    if (next == nullptr) return sh::Error(Code::kInternal, "curl_slist_append failed");
    if (next != headers.get()) {  // the first append creates the list; later ones return its head
      (void)headers.release();
      headers.reset(next);
    }
  }
  Body response{{}, spec.max_output_bytes, false};
  char errbuf[CURL_ERROR_SIZE] = {0};
  const long timeout_ms = static_cast<long>(spec.timeout.count());
  curl_easy_setopt(c, CURLOPT_URL, spec.url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, spec.allow_insecure_loopback ? "http,https" : "https");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!spec.trust_anchor_file.empty()) {
    curl_easy_setopt(c, CURLOPT_CAINFO, spec.trust_anchor_file.c_str());
    curl_easy_setopt(c, CURLOPT_CAPATH, nullptr);
  }
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "127.0.0.1,localhost,::1");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "certfleet-companion-hooks");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnWebhookBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response);

  CURLcode rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &info.http_status);
  if (rc != CURLE_OK) {
    if (response.too_large) {
      return sh::Error(Code::kResourceExhausted,
                       who + " answered more than " + std::to_string(spec.max_output_bytes) + " bytes");
    }
    std::string why = errbuf[0] != 0 ? errbuf : curl_easy_strerror(rc);
    Code code = Code::kUnavailable;
    if (rc == CURLE_OPERATION_TIMEDOUT) code = Code::kDeadlineExceeded;
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE) code = Code::kUnauthenticated;
    if (rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT) code = Code::kInvalidArgument;
    return sh::Error(code, who + ": " + why);
  }
  const long status = info.http_status;
  if (status >= 300 && status < 400) {
    return sh::Error(Code::kFailedPrecondition, who + " answered HTTP " + std::to_string(status) +
                                                    " (a redirect); redirects are not followed");
  }
  if (status < 200 || status >= 300) {
    Code code = Code::kInternal;
    if (status == 401 || status == 403) code = Code::kPermissionDenied;
    if (status == 429 || status >= 500) code = Code::kUnavailable;
    return sh::Error(code, who + " answered HTTP " + std::to_string(status));
  }
  return ParseHookOutput(response.data, who);
}

// ---- signatures ----

std::string HookSignature(std::string_view secret, int64_t unix_seconds, std::string_view body) {
  std::string message = std::to_string(unix_seconds);
  message.push_back('.');
  message.append(body);
  return "sha256=" + HmacSha256Hex(secret, message);
}

Status VerifyHookSignature(std::string_view secret, std::string_view timestamp_header,
                           std::string_view signature_header, std::string_view body, sh::WallTime now,
                           std::chrono::seconds max_skew) {
  if (timestamp_header.empty() || timestamp_header.size() > 15 ||
      !std::all_of(timestamp_header.begin(), timestamp_header.end(),
                   [](unsigned char ch) { return std::isdigit(ch) != 0; })) {
    return {Code::kUnauthenticated, "malformed X-Certfleet-Timestamp"};
  }
  int64_t ts = std::stoll(std::string(timestamp_header));
  int64_t skew = ts - sh::ToUnixSeconds(now);
  if (skew > max_skew.count() || -skew > max_skew.count()) {
    return {Code::kUnauthenticated, "X-Certfleet-Timestamp is outside the accepted window"};
  }
  constexpr std::string_view kPrefix = "sha256=";
  if (signature_header.size() != kPrefix.size() + 64 || signature_header.substr(0, kPrefix.size()) != kPrefix) {
    return {Code::kUnauthenticated, "malformed X-Certfleet-Signature"};
  }
  std::string expected = HookSignature(secret, ts, body);
  if (expected.size() != signature_header.size() ||
      CRYPTO_memcmp(expected.data(), signature_header.data(), expected.size()) != 0) {
    return {Code::kUnauthenticated, "X-Certfleet-Signature does not match"};
  }
  return Status::Ok();
}

// ---- policy ----

Json BuildPreProvisionHookInput(const PreProvisionHookInput& in) {
  Json params = Json::object();
  for (const auto& [k, v] : in.parameters) params[k] = v;
  return Json{{"claimCertificateId", in.claim_certificate_id},
              {"certificateId", in.certificate_id},
              {"certificatePem", in.certificate_pem},
              {"templateArn", in.template_arn},
              {"clientId", in.client_id},
              {"parameters", std::move(params)}};
}

PreProvisionDecision DecidePreProvision(const Result<Json>& hook_output) {
  PreProvisionDecision deny;
  deny.allow = false;
  if (!hook_output) {
    deny.reason = "pre-provisioning hook failed: " + hook_output.error().ToString();
    return deny;
  }
  const Json& j = *hook_output;
  if (!j.is_object()) {
    deny.reason = "pre-provisioning hook output is not a JSON object";
    return deny;
  }
  auto allow = j.find("allowProvisioning");
  if (allow == j.end()) {
    deny.reason = "pre-provisioning hook output lacks allowProvisioning";
    return deny;
  }
  if (!allow->is_boolean()) {
    deny.reason = "pre-provisioning hook output: allowProvisioning is not a boolean";
    return deny;
  }
  if (!allow->get<bool>()) {
    deny.reason = "pre-provisioning hook denied provisioning";
    return deny;
  }
  PreProvisionDecision ok;
  ok.allow = true;
  ok.reason = "allowed by pre-provisioning hook";
  auto overrides = j.find("parameterOverrides");
  if (overrides != j.end()) {
    if (!overrides->is_object()) {
      deny.reason = "pre-provisioning hook output: parameterOverrides is not an object";
      return deny;
    }
    for (const auto& [key, value] : overrides->items()) {
      if (!value.is_string()) {
        deny.reason = "pre-provisioning hook output: parameterOverrides." + key + " is not a string";
        return deny;
      }
      ok.parameter_overrides[key] = value.get<std::string>();
    }
  }
  return ok;
}

Json BuildEnrollHookInput(const EnrollHookInput& in) {
  Json j{{"event", in.event},
         {"method", in.method},
         {"thingName", in.thing_name},
         {"csrSubject", in.csr_subject},
         {"csrPublicKeyType", in.csr_public_key_type},
         {"remoteAddress", in.remote_address},
         {"labels", in.labels}};
  if (!in.client_certificate_id.empty()) j["clientCertificateId"] = in.client_certificate_id;
  return j;
}

Json BuildIssuedHookInput(const IssuedHookInput& in) {
  Json j{{"event", in.event},
         {"method", in.method},
         {"thingName", in.thing_name},
         {"certificateId", in.certificate_id},
         {"serial", in.serial},
         {"notAfter", sh::FormatRfc3339(in.not_after)}};
  if (!in.previous_certificate_id.empty()) j["previousCertificateId"] = in.previous_certificate_id;
  return j;
}

HookDecision DecideAllow(const Result<Json>& hook_output) {
  HookDecision deny;
  if (!hook_output) {
    deny.reason = "hook failed: " + hook_output.error().ToString();
    return deny;
  }
  const Json& j = *hook_output;
  if (!j.is_object()) {
    deny.reason = "hook output is not a JSON object";
    return deny;
  }
  auto allow = j.find("allow");
  if (allow == j.end()) {
    deny.reason = "hook output lacks allow";
    return deny;
  }
  if (!allow->is_boolean()) {
    deny.reason = "hook output: allow is not a boolean";
    return deny;
  }
  std::string given;
  auto reason = j.find("reason");
  if (reason != j.end()) {
    if (!reason->is_string()) {
      deny.reason = "hook output: reason is not a string";
      return deny;
    }
    given = reason->get<std::string>();
    if (given.size() > kMaxDecisionReasonBytes) {
      size_t cut = kMaxDecisionReasonBytes;
      while (cut > 0 && (static_cast<unsigned char>(given[cut]) & 0xC0) == 0x80) --cut;
      given.resize(cut);
    }
  }
  HookDecision out;
  out.allow = allow->get<bool>();
  out.reason = (out.allow ? "allowed by hook" : "denied by hook") + (given.empty() ? "" : ": " + given);
  return out;
}

void ReportPostHook(sh::Logger& logger, std::string_view event, const Result<Json>& result) {
  try {
    if (result) {
      logger.Debug("post-hook done", {{"event", std::string(event)}});
    } else {
      logger.Error("post-hook failed", {{"event", std::string(event)},
                                        {"code", std::string(sh::CodeName(result.error().code()))},
                                        {"error", result.error().message()}});
    }
  } catch (...) {
    // Logging a post-hook's failure must never take the flow down.
  }
}

}  // namespace certfleet::companion
