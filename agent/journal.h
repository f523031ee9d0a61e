// The daemon's durable state: one JSON file (STATE_DIR/state.json, 0600) rewritten with
// Filesystem::WriteFileAtomic before each lifecycle transition takes effect, so that a
// restart at any instruction finds either the previous record or the new one.
//
// The record names the lifecycle state, the key slot that certifies identity.cert_file
// (the current-identity pointer is the certificate file itself: it is certified by the
// key in exactly one of the A/B slots), the rotation in progress and the bookkeeping of
// the renewal policy. docs/agent.md lists the states and what a restart does in each.
//
// ParseJournal is strict: unknown versions, unknown states, wrong types, missing
// fields, bad slot names, bad times and oversized input are kDataLoss naming the field
// (never echoing the input). A corrupt journal stops the daemon with that error; only a
// missing journal means "fresh start". Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/status.h"

namespace certfleet::agent {

inline constexpr size_t kMaxJournalBytes = 256 * 1024;
inline constexpr int kJournalVersion = 1;

enum class AgentState {
  kUnprovisioned,  // no identity yet
  kProvisioning,   // claim provisioning / first enrollment under way
  kActive,         // identity in cert_file, certified by current_slot
  kRotating,       // pending key in pending.slot, no certificate yet
  kVerifying,      // pending certificate issued and checked; proving it to the broker
  kCommitting,     // the broker accepted the ack: roll forward on restart
  kRecovering,     // current certificate expired and re-enrollment refused: claim provisioning
                   // of a new identity into OtherSlot(current_slot) under way
};
std::string_view StateName(AgentState state);
std::optional<AgentState> ParseStateName(std::string_view name);

struct PendingRotation {
  std::string slot;             // the new key's slot: OtherSlot(current_slot)
  std::string rotation_id;      // "" for a rotation the agent started itself
  std::string certificate_pem;  // set from kVerifying on
  std::string ca_pem;           // the CA certificates the EST server published with it
  bool operator==(const PendingRotation&) const = default;
};

struct Journal {
  AgentState state = AgentState::kUnprovisioned;
  std::string thing_name;
  std::string current_slot;  // "" while unprovisioned
  std::optional<PendingRotation> pending;
  // A slot whose key belonged to the identity just replaced: deleted after the commit
  // (and on the next start if a crash came first).
  std::string retired_slot;
  std::string ca_pem;  // CA certificates of the current identity (for [[export]] "ca"/"chain")
  std::optional<shared::WallTime> last_rotation;
  std::string last_rotation_id;  // the last rotation request acted on (retained requests come back)
  // The rotation ack sent for it (JSON, as published): sent again while the companion's
  // retained request for last_rotation_id is still there, in case the first was lost.
  std::string last_ack;
  std::string last_error;
  std::optional<shared::WallTime> last_trusted_time;
  int failures = 0;  // consecutive failed attempts
  std::optional<shared::WallTime> next_attempt;  // not before (backoff)
  std::optional<shared::WallTime> next_renewal;  // planned by the renewal policy (for status)
  // A rotation was asked for (request or `renew --now`) and not yet done.
  bool rotation_requested = false;
  std::string requested_rotation_id;
  std::optional<shared::WallTime> updated_at;
  bool operator==(const Journal&) const = default;
};

std::string EncodeJournal(const Journal& journal);
// kDataLoss for anything malformed (see above).
shared::Result<Journal> ParseJournal(std::string_view text);

// The journal file in `state_dir`.
class JournalStore {
 public:
  JournalStore(shared::Filesystem& fs, std::string state_dir);
  const std::string& path() const { return path_; }
  // nullopt when there is no journal yet; kDataLoss (with the path) when it is corrupt.
  shared::Result<std::optional<Journal>> Load() const;
  // Atomic and durable (0600) when it returns OK; creates state_dir (0700) if needed.
  shared::Status Save(const Journal& journal);

 private:
  shared::Filesystem& fs_;
  std::string dir_;
  std::string path_;
};

}  // namespace certfleet::agent
