// The hooks of a running companion: the specs built from the [hooks.*] tables, and the
// queue that runs post-hooks off the request path.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "companion/config.h"
#include "companion/hooks.h"
#include "shared/core/log.h"
#include "shared/core/status.h"

namespace certfleet::companion {

// One optional spec per flow step; unset means no hook (a pre-hook then allows).
struct HookSet {
  std::optional<HookSpec> pre_provision;
  std::optional<HookSpec> post_provision;
  std::optional<HookSpec> pre_enroll;
  std::optional<HookSpec> post_enroll;
  std::optional<HookSpec> pre_reenroll;
  std::optional<HookSpec> post_reenroll;
  std::optional<HookSpec> post_audit;
};

// Builds every configured hook with ParseHookSpec (executables and secret files checked on
// disk). Errors are ParseHookSpec's, prefixed with the table: "[hooks.pre_enroll]: ...".
shared::Result<HookSet> BuildHookSet(const HooksConfig& config);

// Runs post-hooks in order on one background thread, so that the flow that queued one
// never waits for it and a hook's failure is only logged (ReportPostHook).
// Thread-safe. `runner`, `log` and every queued spec must outlive the queue; destruction
// finishes the runs already queued, then joins the thread.
class PostHookQueue {
 public:
  // At most `capacity` runs wait; more are dropped and logged as errors.
  PostHookQueue(HookRunner& runner, shared::Logger& log, size_t capacity = 1024);
  ~PostHookQueue();
  PostHookQueue(const PostHookQueue&) = delete;
  PostHookQueue& operator=(const PostHookQueue&) = delete;

  // False when the queue was full and the run was dropped (and logged).
  bool Post(const HookSpec& spec, std::string_view event, nlohmann::json input);
  // Blocks until every run queued before the call has finished.
  void Drain();

 private:
  struct Item {
    const HookSpec* spec;
    std::string event;
    nlohmann::json input;
  };
  void Loop();

  HookRunner& runner_;
  shared::Logger& log_;
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<Item> queue_;
  bool busy_ = false;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace certfleet::companion
