#include "agent/post_rotation.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <thread>

namespace certfleet::agent {

using shared::Code;
using shared::Status;
namespace sh = shared;

namespace {

Status Errno(std::string_view what, const std::string& path) {
  return Status(Code::kInternal, std::string(what) + " " + path + ": " + std::strerror(errno));
}

}  // namespace

Status RunHook(const std::vector<std::string>& command, const std::vector<std::string>& env,
               std::chrono::milliseconds timeout) {
  if (command.empty() || command.front().empty() || command.front().front() != '/') {
    return Status(Code::kInvalidArgument, "a hook is an absolute path and arguments");
  }
  std::vector<char*> argv;
  for (const auto& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group, so that the timeout kills what it started too.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Status(Code::kUnavailable, "cannot start " + command.front() + ": " + std::strerror(rc));

  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return Errno("waitpid", command.front());
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return Status(Code::kDeadlineExceeded, command.front() + " killed after " + std::to_string(timeout.count()) + " ms");
    }
    // A child process is not a condition variable: poll its exit.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  if (WIFEXITED(status)) {
    return Status(Code::kInternal, command.front() + " exited with status " + std::to_string(WEXITSTATUS(status)));
  }
  return Status(Code::kInternal, command.front() + " killed by signal " + std::to_string(WTERMSIG(status)));
}

std::string ExportContent(const std::string& what, const CommittedIdentity& identity) {
  if (what == "cert") return identity.cert_pem;
  if (what == "ca") return identity.ca_pem;
  return identity.cert_pem + identity.ca_pem;
}

Status WriteExport(const AgentConfig::Export& e, const std::string& content) {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  if (geteuid() == 0) {
    if (!e.owner.empty()) {
      struct passwd* pw = getpwnam(e.owner.c_str());
      if (pw == nullptr) return Status(Code::kNotFound, "no user '" + e.owner + "'");
      uid = pw->pw_uid;
    }
    if (!e.group.empty()) {
      struct group* gr = getgrnam(e.group.c_str());
      if (gr == nullptr) return Status(Code::kNotFound, "no group '" + e.group + "'");
      gid = gr->gr_gid;
    }
  }
  std::random_device rd;
  std::string tmp = e.path + ".tmp-" + std::to_string(rd());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, e.mode);
  if (fd < 0) return Errno("create", tmp);
  auto fail = [&](std::string_view what) {
    Status st = Errno(what, tmp);
    close(fd);
    unlink(tmp.c_str());
    return st;
  };
  if (fchmod(fd, e.mode) != 0) return fail("fchmod");  // the umask may have removed bits
  if ((uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) && fchown(fd, uid, gid) != 0) return fail("fchown");
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("write");
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return fail("fsync");
  close(fd);
  if (rename(tmp.c_str(), e.path.c_str()) != 0) {
    Status st = Errno("rename", e.path);
    unlink(tmp.c_str());
    return st;
  }
  std::string dir = sh::DirName(e.path);
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return Status::Ok();
}

void RunPostRotation(const AgentConfig& config, const CommittedIdentity& identity, sh::Logger& log) {
  for (const auto& e : config.exports) {
    Status st = WriteExport(e, ExportContent(e.what, identity));
    if (st.ok()) {
      log.Info("exported", {{"path", e.path}, {"what", e.what}});
    } else {
      log.Error("export failed", {{"path", e.path}, {"error", st.ToString()}});
    }
  }
  std::vector<std::string> env = {
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "CERTFLEET_THING_NAME=" + identity.thing_name,
      "CERTFLEET_CERTIFICATE_ID=" + identity.certificate_id,
      "CERTFLEET_CERT_FILE=" + identity.cert_file,
      "CERTFLEET_KEY_URI=" + identity.key_uri,
  };
  for (const auto& h : config.post_rotation_hooks) {
    Status st = RunHook(h.command, env, h.timeout);
    if (st.ok()) {
      log.Info("post-rotation hook ran", {{"command", h.command.front()}});
    } else {
      log.Error("post-rotation hook failed", {{"command", h.command.front()}, {"error", st.ToString()}});
    }
  }
}

}  // namespace certfleet::agent
