// Helpers shared by the MQTT load generators (provision-load, rotation-load): a queue that
// hands messages from libmosquitto's network thread to a worker, and whole-file reads.
// Header-only.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>

#include "shared/core/status.h"
#include "shared/mqtt/client.h"

namespace certfleet::bench {

// Messages from the network thread (which only queues and signals) to one worker thread.
// Thread-safe.
class Inbox {
 public:
  void Push(const shared::MqttMessage& m) {
    {
      std::lock_guard lock(mu_);
      messages_.push_back(m);
    }
    cv_.notify_all();
  }
  // The next message, or nullopt at the deadline.
  std::optional<shared::MqttMessage> Pop(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_until(lock, deadline, [&] { return !messages_.empty(); })) return std::nullopt;
    shared::MqttMessage m = std::move(messages_.front());
    messages_.pop_front();
    return m;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<shared::MqttMessage> messages_;
};

inline shared::Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return shared::Error(shared::Code::kNotFound, "cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace certfleet::bench
