#include "agent/journal.h"

#include <nlohmann/json.hpp>

#include "hal/keystore.h"
#include "shared/wire/rotation.h"
#include "shared/wire/topics.h"

namespace certfleet::agent {

using nlohmann::json;
using shared::Code;
using shared::Status;
namespace sh = shared;

namespace {

constexpr std::pair<AgentState, std::string_view> kStateNames[] = {
    {AgentState::kUnprovisioned, "unprovisioned"}, {AgentState::kProvisioning, "provisioning"},
    {AgentState::kActive, "active"},               {AgentState::kRotating, "rotating"},
    {AgentState::kVerifying, "verifying"},         {AgentState::kCommitting, "committing"},
    {AgentState::kRecovering, "recovering"},
};

constexpr size_t kMaxPemBytes = 64 * 1024;

Status Bad(std::string_view field, std::string_view problem) {
  return Status(Code::kDataLoss, "journal: " + std::string(field) + ": " + std::string(problem));
}

std::string TimeText(const std::optional<sh::WallTime>& t) { return t ? sh::FormatRfc3339(*t) : ""; }

sh::Result<const json*> Field(const json& object, const char* name, json::value_t type) {
  auto it = object.find(name);
  if (it == object.end()) return sh::Error(Bad(name, "is missing"));
  bool ok = it->type() == type || (type == json::value_t::number_integer && it->is_number_unsigned());
  if (!ok) return sh::Error(Bad(name, "has the wrong type"));
  return &*it;
}

sh::Result<std::string> Str(const json& object, const char* name, size_t max_len = 1024) {
  CF_ASSIGN_OR_RETURN(const json* v, Field(object, name, json::value_t::string));
  std::string s = v->get<std::string>();
  if (s.size() > max_len) return sh::Error(Bad(name, "is too long"));
  if (s.find('\0') != std::string::npos) return sh::Error(Bad(name, "contains a NUL character"));
  return s;
}

sh::Result<std::optional<sh::WallTime>> OptTime(const json& object, const char* name) {
  CF_ASSIGN_OR_RETURN(std::string s, Str(object, name, 32));
  if (s.empty()) return std::optional<sh::WallTime>();
  sh::WallTime t;
  if (!sh::ParseRfc3339(s, &t)) return sh::Error(Bad(name, "is not an RFC 3339 UTC time"));
  return std::optional<sh::WallTime>(t);
}

Status CheckSlot(const char* name, const std::string& slot, bool allow_empty) {
  if (allow_empty && slot.empty()) return Status::Ok();
  if (!hal::ValidateSlotName(slot).ok()) return Bad(name, "is not a valid key slot name");
  return Status::Ok();
}

Status CheckRotationId(const char* name, const std::string& id) {
  if (id.empty() || sh::ValidateRotationId(id).ok()) return Status::Ok();
  return Bad(name, "is not a rotation id");
}

}  // namespace

std::string_view StateName(AgentState state) {
  for (const auto& [s, name] : kStateNames) {
    if (s == state) return name;
  }
  return "unknown";
}

std::optional<AgentState> ParseStateName(std::string_view name) {
  for (const auto& [s, n] : kStateNames) {
    if (n == name) return s;
  }
  return std::nullopt;
}

std::string EncodeJournal(const Journal& j) {
  json o = json::object();
  o["version"] = kJournalVersion;
  o["state"] = std::string(StateName(j.state));
  o["thingName"] = j.thing_name;
  o["currentSlot"] = j.current_slot;
  if (j.pending) {
    o["pending"] = json{{"slot", j.pending->slot},
                        {"rotationId", j.pending->rotation_id},
                        {"certificatePem", j.pending->certificate_pem},
                        {"caPem", j.pending->ca_pem}};
  } else {
    o["pending"] = nullptr;
  }
  o["retiredSlot"] = j.retired_slot;
  o["caPem"] = j.ca_pem;
  o["lastRotation"] = TimeText(j.last_rotation);
  o["lastRotationId"] = j.last_rotation_id;
  o["lastAck"] = j.last_ack;
  o["lastError"] = j.last_error;
  o["lastTrustedTime"] = TimeText(j.last_trusted_time);
  o["failures"] = j.failures;
  o["nextAttempt"] = TimeText(j.next_attempt);
  o["nextRenewal"] = TimeText(j.next_renewal);
  o["rotationRequested"] = j.rotation_requested;
  o["requestedRotationId"] = j.requested_rotation_id;
  o["updatedAt"] = TimeText(j.updated_at);
  return o.dump(2) + "\n";
}

sh::Result<Journal> ParseJournal(std::string_view text) {
  if (text.size() > kMaxJournalBytes) return sh::Error(Bad("file", "is larger than " + std::to_string(kMaxJournalBytes) + " bytes"));
  if (text.find('\0') != std::string_view::npos) return sh::Error(Bad("file", "contains a NUL byte"));
  json o = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (o.is_discarded()) return sh::Error(Bad("file", "is not valid JSON"));
  if (!o.is_object()) return sh::Error(Bad("file", "is not a JSON object"));

  CF_ASSIGN_OR_RETURN(const json* version, Field(o, "version", json::value_t::number_integer));
  if (!version->is_number_integer() || version->get<int64_t>() != kJournalVersion) {
    return sh::Error(Bad("version", "is not " + std::to_string(kJournalVersion)));
  }
  Journal j;
  CF_ASSIGN_OR_RETURN(std::string state, Str(o, "state", 32));
  auto parsed_state = ParseStateName(state);
  if (!parsed_state) return sh::Error(Bad("state", "is not a known state"));
  j.state = *parsed_state;
  CF_ASSIGN_OR_RETURN(j.thing_name, Str(o, "thingName", sh::kMaxThingNameLength));
  if (!j.thing_name.empty() && !sh::ValidateThingName(j.thing_name).ok()) {
    return sh::Error(Bad("thingName", "is not a valid thing name"));
  }
  CF_ASSIGN_OR_RETURN(j.current_slot, Str(o, "currentSlot", 64));
  CF_RETURN_IF_ERROR(CheckSlot("currentSlot", j.current_slot, true));

  auto pending = o.find("pending");
  if (pending == o.end()) return sh::Error(Bad("pending", "is missing"));
  if (pending->is_object()) {
    PendingRotation p;
    CF_ASSIGN_OR_RETURN(p.slot, Str(*pending, "slot", 64));
    CF_RETURN_IF_ERROR(CheckSlot("pending.slot", p.slot, false));
    CF_ASSIGN_OR_RETURN(p.rotation_id, Str(*pending, "rotationId", 64));
    CF_RETURN_IF_ERROR(CheckRotationId("pending.rotationId", p.rotation_id));
    CF_ASSIGN_OR_RETURN(p.certificate_pem, Str(*pending, "certificatePem", kMaxPemBytes));
    CF_ASSIGN_OR_RETURN(p.ca_pem, Str(*pending, "caPem", kMaxPemBytes));
    j.pending = std::move(p);
  } else if (!pending->is_null()) {
    return sh::Error(Bad("pending", "is neither an object nor null"));
  }
  CF_ASSIGN_OR_RETURN(j.retired_slot, Str(o, "retiredSlot", 64));
  CF_RETURN_IF_ERROR(CheckSlot("retiredSlot", j.retired_slot, true));
  CF_ASSIGN_OR_RETURN(j.ca_pem, Str(o, "caPem", kMaxPemBytes));
  CF_ASSIGN_OR_RETURN(j.last_rotation, OptTime(o, "lastRotation"));
  CF_ASSIGN_OR_RETURN(j.last_rotation_id, Str(o, "lastRotationId", 64));
  CF_RETURN_IF_ERROR(CheckRotationId("lastRotationId", j.last_rotation_id));
  CF_ASSIGN_OR_RETURN(j.last_ack, Str(o, "lastAck", sh::kMaxRotationPayload));
  CF_ASSIGN_OR_RETURN(j.last_error, Str(o, "lastError", sh::kMaxStatusTextLength));
  CF_ASSIGN_OR_RETURN(j.last_trusted_time, OptTime(o, "lastTrustedTime"));
  CF_ASSIGN_OR_RETURN(const json* failures, Field(o, "failures", json::value_t::number_integer));
  if (!failures->is_number_integer() || failures->get<int64_t>() < 0 || failures->get<int64_t>() > 1000000) {
    return sh::Error(Bad("failures", "is out of range"));
  }
  j.failures = static_cast<int>(failures->get<int64_t>());
  CF_ASSIGN_OR_RETURN(j.next_attempt, OptTime(o, "nextAttempt"));
  CF_ASSIGN_OR_RETURN(j.next_renewal, OptTime(o, "nextRenewal"));
  CF_ASSIGN_OR_RETURN(const json* requested, Field(o, "rotationRequested", json::value_t::boolean));
  j.rotation_requested = requested->get<bool>();
  CF_ASSIGN_OR_RETURN(j.requested_rotation_id, Str(o, "requestedRotationId", 64));
  CF_RETURN_IF_ERROR(CheckRotationId("requestedRotationId", j.requested_rotation_id));
  CF_ASSIGN_OR_RETURN(j.updated_at, OptTime(o, "updatedAt"));

  // Cross-field rules: what each state needs.
  bool needs_identity = j.state != AgentState::kUnprovisioned && j.state != AgentState::kProvisioning;
  if (needs_identity && (j.current_slot.empty() || j.thing_name.empty())) {
    return sh::Error(Bad("currentSlot", "state " + state + " needs a thing name and a current slot"));
  }
  bool rotating = j.state == AgentState::kRotating || j.state == AgentState::kVerifying ||
                  j.state == AgentState::kCommitting;
  if (rotating != j.pending.has_value()) {
    return sh::Error(Bad("pending", rotating ? "is missing for state " + state : "is set in state " + state));
  }
  if (j.pending && j.pending->slot == j.current_slot) return sh::Error(Bad("pending.slot", "equals currentSlot"));
  if (j.pending && j.state != AgentState::kRotating && j.pending->certificate_pem.empty()) {
    return sh::Error(Bad("pending.certificatePem", "is empty in state " + state));
  }
  if (!j.retired_slot.empty() && j.retired_slot == j.current_slot) {
    return sh::Error(Bad("retiredSlot", "equals currentSlot"));
  }
  return j;
}

JournalStore::JournalStore(sh::Filesystem& fs, std::string state_dir)
    : fs_(fs), dir_(std::move(state_dir)), path_(sh::JoinPath(dir_, "state.json")) {}

sh::Result<std::optional<Journal>> JournalStore::Load() const {
  auto text = fs_.ReadFile(path_, kMaxJournalBytes + 1);
  if (!text) {
    if (text.error().code() == Code::kNotFound) return std::optional<Journal>();
    return sh::Error(text.error().WithContext(path_));
  }
  auto j = ParseJournal(*text);
  if (!j) return sh::Error(j.error().WithContext(path_));
  return std::optional<Journal>(std::move(*j));
}

Status JournalStore::Save(const Journal& journal) {
  if (!fs_.Exists(dir_)) CF_RETURN_IF_ERROR(fs_.MakeDirs(dir_, 0700).WithContext(dir_));
  return fs_.WriteFileAtomic(path_, EncodeJournal(journal), 0600).WithContext(path_);
}

}  // namespace certfleet::agent
