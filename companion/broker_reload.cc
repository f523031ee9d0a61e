#include "companion/broker_reload.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <thread>

#include "companion/hooks.h"

namespace certfleet::companion {

using shared::Code;
using shared::Status;

namespace {

// Waits for `pid` until `deadline`; true with its wait status once it exited.
bool WaitUntil(pid_t pid, std::chrono::steady_clock::time_point deadline, int* wstatus) {
  for (;;) {
    pid_t r = waitpid(pid, wstatus, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) return true;  // already reaped: nothing to wait for
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Status RunCommand(const BrokerReloadSpec& spec) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  if (posix_spawn_file_actions_init(&fa) != 0) return Status(Code::kInternal, "posix_spawn setup failed");
  if (posix_spawnattr_init(&attr) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    return Status(Code::kInternal, "posix_spawn setup failed");
  }
  sigset_t no_signals;
  sigset_t default_signals;
  sigemptyset(&no_signals);
  sigfillset(&default_signals);
  bool ok = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0) == 0 &&
            posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0) == 0 &&
            posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0) == 0 &&
            posix_spawn_file_actions_addclosefrom_np(&fa, 3) == 0 &&
            posix_spawn_file_actions_addchdir_np(&fa, "/") == 0 &&
            posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) == 0 &&
            posix_spawnattr_setpgroup(&attr, 0) == 0 && posix_spawnattr_setsigmask(&attr, &no_signals) == 0 &&
            posix_spawnattr_setsigdefault(&attr, &default_signals) == 0;
  std::vector<char*> argv;
  for (const auto& a : spec.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  char env_path[] = "PATH=/usr/bin:/bin";
  char* envp[] = {env_path, nullptr};
  pid_t pid = -1;
  int rc = ok ? posix_spawn(&pid, spec.command[0].c_str(), &fa, &attr, argv.data(), envp) : -1;
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (!ok) return Status(Code::kInternal, "posix_spawn setup failed");
  if (rc != 0) return Status(Code::kInternal, "starting " + spec.command[0] + ": " + std::strerror(rc));

  int wstatus = 0;
  if (!WaitUntil(pid, std::chrono::steady_clock::now() + spec.timeout, &wstatus)) {
    kill(-pid, SIGKILL);
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    return Status(Code::kDeadlineExceeded, spec.command[0] + " did not finish within " +
                                               std::to_string(spec.timeout.count()) + " ms; killed");
  }
  if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) return Status::Ok();
  if (WIFSIGNALED(wstatus)) {
    return Status(Code::kInternal, spec.command[0] + " died of signal " + std::to_string(WTERMSIG(wstatus)));
  }
  return Status(Code::kInternal, spec.command[0] + " exited with status " + std::to_string(WEXITSTATUS(wstatus)));
}

Status SignalPidFile(const std::string& path, const shared::Filesystem& fs) {
  CF_ASSIGN_OR_RETURN(std::string text, fs.ReadFile(path, 64));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  long pid = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), pid);
  if (ec != std::errc() || end != text.data() + text.size() || pid <= 1) {
    return Status(Code::kInvalidArgument, "pid file " + path + " does not hold a process id");
  }
  if (kill(static_cast<pid_t>(pid), SIGHUP) != 0) {
    int err = errno;
    return Status(err == ESRCH ? Code::kNotFound : Code::kPermissionDenied,
                  "SIGHUP to " + std::to_string(pid) + " (" + path + "): " + std::strerror(err));
  }
  return Status::Ok();
}

}  // namespace

Status ValidateBrokerReloadSpec(const BrokerReloadSpec& spec) {
  if (!spec.command.empty()) {
    HookConfig hc;
    hc.command = spec.command;
    auto parsed = ParseHookSpec(hc);
    if (!parsed) return parsed.error().WithContext("broker.reload_command");
  }
  if (!spec.pid_file.empty() && spec.pid_file.front() != '/') {
    return Status(Code::kInvalidArgument, "broker.pid_file must be an absolute path");
  }
  return Status::Ok();
}

Status ReloadBroker(const BrokerReloadSpec& spec, const shared::Filesystem& fs) {
  if (!spec.command.empty()) CF_RETURN_IF_ERROR(RunCommand(spec));
  if (!spec.pid_file.empty()) CF_RETURN_IF_ERROR(SignalPidFile(spec.pid_file, fs));
  return Status::Ok();
}

}  // namespace certfleet::companion
