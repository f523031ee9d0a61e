// The daemon's control socket: a unix stream socket (mode 0600, owned by the daemon)
// taking one command line per connection and answering one line. Only peers with the
// daemon's uid or root are served (SO_PEERCRED). Commands: "status" (JSON), "renew".
//
// ControlServer runs one thread that serves connections one at a time; the handler may
// block (a renewal waits for the rotation). Requests are at most 256 bytes.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "shared/core/log.h"
#include "shared/core/status.h"

namespace certfleet::agent {

class ControlServer {
 public:
  using Handler = std::function<std::string(const std::string& command)>;
  // Removes a stale socket at `path`, binds and listens. The directory must exist.
  static shared::Result<std::unique_ptr<ControlServer>> Start(const std::string& path, Handler handler,
                                                              shared::Logger& log);
  ~ControlServer();  // stops the thread and removes the socket
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

 private:
  ControlServer(std::string path, int fd, int stop_read, int stop_write, Handler handler, shared::Logger& log);
  void Serve();
  void ServeOne(int fd);

  std::string path_;
  int fd_;
  int stop_read_;
  int stop_write_;
  Handler handler_;
  shared::Logger& log_;
  std::thread thread_;
};

// Sends `command` and returns the answer line. kUnavailable if nothing listens.
shared::Result<std::string> ControlRequest(const std::string& path, const std::string& command,
                                           std::chrono::milliseconds timeout);

}  // namespace certfleet::agent
