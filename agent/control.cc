#include "agent/control.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace certfleet::agent {

using shared::Code;
using shared::Status;
namespace sh = shared;

namespace {

constexpr size_t kMaxLine = 256;

sh::Result<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return sh::Error(Code::kInvalidArgument, "socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Reads up to a newline or kMaxLine bytes until the deadline.
sh::Result<std::string> ReadLine(int fd, std::chrono::milliseconds timeout, size_t max) {
  std::string line;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return sh::Error(Code::kDeadlineExceeded, "no answer in time");
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
    if (line.find('\n') != std::string::npos || line.size() >= max) break;
  }
  auto nl = line.find('\n');
  if (nl != std::string::npos) line.resize(nl);
  if (line.size() > max) line.resize(max);
  return line;
}

void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

sh::Result<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& path, Handler handler,
                                                                sh::Logger& log) {
  CF_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return sh::Error(Code::kInternal, std::string("socket: ") + std::strerror(errno));
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      close(fd);
      return sh::Error(Code::kAlreadyExists, path + " exists and is not a socket");
    }
    unlink(path.c_str());  // a stale socket of an earlier run
  }
  // Created 0600 from the start: bind honours the umask.
  mode_t old = umask(0177);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  umask(old);
  if (rc != 0 || listen(fd, 8) != 0) {
    if (rc == 0) err = errno;
    close(fd);
    return sh::Error(Code::kUnavailable, "bind/listen " + path + ": " + std::strerror(err));
  }
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    close(fd);
    return sh::Error(Code::kInternal, std::string("pipe: ") + std::strerror(errno));
  }
  std::unique_ptr<ControlServer> server(new ControlServer(path, fd, pipefd[0], pipefd[1], std::move(handler), log));
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

ControlServer::ControlServer(std::string path, int fd, int stop_read, int stop_write, Handler handler, sh::Logger& log)
    : path_(std::move(path)), fd_(fd), stop_read_(stop_read), stop_write_(stop_write), handler_(std::move(handler)), log_(log) {}

ControlServer::~ControlServer() {
  WriteAll(stop_write_, "x");
  if (thread_.joinable()) thread_.join();
  close(fd_);
  close(stop_read_);
  close(stop_write_);
  unlink(path_.c_str());
}

void ControlServer::Serve() {
  for (;;) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {stop_read_, POLLIN, 0}};
    int r = poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (p[1].revents & POLLIN) != 0) return;
    if ((p[0].revents & POLLIN) == 0) continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    ServeOne(c);
    close(c);
  }
}

void ControlServer::ServeOne(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != 0 && cred.uid != geteuid())) {
    log_.Warn("control request from another user refused", {{"uid", std::to_string(cred.uid)}});
    WriteAll(fd, "error permission denied\n");
    return;
  }
  auto line = ReadLine(fd, std::chrono::milliseconds(5000), kMaxLine);
  if (!line) return;
  WriteAll(fd, handler_(*line) + "\n");
}

sh::Result<std::string> ControlRequest(const std::string& path, const std::string& command,
                                       std::chrono::milliseconds timeout) {
  CF_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return sh::Error(Code::kInternal, std::string("socket: ") + std::strerror(errno));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    close(fd);
    return sh::Error(Code::kUnavailable, "is the daemon running? " + path + ": " + std::strerror(err));
  }
  WriteAll(fd, command + "\n");
  auto answer = ReadLine(fd, timeout, 64 * 1024);
  close(fd);
  return answer;
}

}  // namespace certfleet::agent
