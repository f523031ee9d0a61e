#include "companion/hook_set.h"

#include <utility>

namespace certfleet::companion {

namespace sh = shared;

sh::Result<HookSet> BuildHookSet(const HooksConfig& config) {
  HookSet set;
  auto build = [](const std::optional<HookConfig>& hc, std::string_view table,
                  std::optional<HookSpec>& out) -> sh::Status {
    if (!hc) return sh::Status::Ok();
    auto spec = ParseHookSpec(*hc);
    if (!spec) return spec.error().WithContext("[hooks." + std::string(table) + "]");
    out = std::move(*spec);
    return sh::Status::Ok();
  };
  CF_RETURN_IF_ERROR(build(config.pre_provision, "pre_provision", set.pre_provision));
  CF_RETURN_IF_ERROR(build(config.post_provision, "post_provision", set.post_provision));
  CF_RETURN_IF_ERROR(build(config.pre_enroll, "pre_enroll", set.pre_enroll));
  CF_RETURN_IF_ERROR(build(config.post_enroll, "post_enroll", set.post_enroll));
  CF_RETURN_IF_ERROR(build(config.pre_reenroll, "pre_reenroll", set.pre_reenroll));
  CF_RETURN_IF_ERROR(build(config.post_reenroll, "post_reenroll", set.post_reenroll));
  CF_RETURN_IF_ERROR(build(config.post_audit, "post_audit", set.post_audit));
  return set;
}

PostHookQueue::PostHookQueue(HookRunner& runner, sh::Logger& log, size_t capacity)
    : runner_(runner), log_(log), capacity_(capacity), thread_([this] { Loop(); }) {}

PostHookQueue::~PostHookQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool PostHookQueue::Post(const HookSpec& spec, std::string_view event, nlohmann::json input) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() < capacity_) {
      queue_.push_back(Item{&spec, std::string(event), std::move(input)});
      wake_.notify_one();
      return true;
    }
  }
  log_.Error("post-hook dropped: queue full", {{"event", std::string(event)}, {"capacity", std::to_string(capacity_)}});
  return false;
}

void PostHookQueue::Drain() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

void PostHookQueue::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to run
    Item item = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    try {
      runner_.RunPostHook(*item.spec, item.event, item.input);
    } catch (...) {
      // RunPostHook does not throw; a post-hook must never end the companion regardless.
    }
    lock.lock();
    busy_ = false;
    if (queue_.empty()) idle_.notify_all();
  }
}

}  // namespace certfleet::companion
