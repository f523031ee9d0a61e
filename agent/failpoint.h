// Failpoints: named places right after a durable side effect of provisioning or
// rotation where a fault-injection test kills the agent, to prove that a restart from
// whatever is on disk at that instant ends with a working identity.
//
// CERTFLEET_AGENT_FAILPOINT=NAME (or NAME:N, the Nth time the point is reached) is read
// once, at the first Failpoint call. When the named point is reached the process writes
// one line to stderr and raises SIGKILL: no destructor, flush or atexit handler runs,
// as with a power cut. Unset (production) the check is a string compare. Only someone
// who controls the agent's environment can set it, and they can kill it anyway.
//
// Thread-safe. Names are the constants below; FailpointNames lists them all.
#pragma once

#include <string_view>
#include <vector>

namespace certfleet::agent {

inline constexpr std::string_view kFailpointEnv = "CERTFLEET_AGENT_FAILPOINT";

// Rotation (daemon.cc), in the order a rotation reaches them.
inline constexpr std::string_view kFpRotatingJournaled = "rotate.journal-rotating";
inline constexpr std::string_view kFpRotateKeyGenerated = "rotate.key-generated";
inline constexpr std::string_view kFpRotateCertIssued = "rotate.cert-issued";
inline constexpr std::string_view kFpVerifyingJournaled = "rotate.journal-verifying";
inline constexpr std::string_view kFpAckAcknowledged = "rotate.ack-puback";
inline constexpr std::string_view kFpCommittingJournaled = "rotate.journal-committing";
inline constexpr std::string_view kFpRotateCertFileWritten = "rotate.cert-file-written";
inline constexpr std::string_view kFpActiveJournaled = "rotate.journal-active";
inline constexpr std::string_view kFpOldKeyDeleted = "rotate.old-key-deleted";
// Provisioning: the daemon's bootstrap (daemon.cc), EST enrollment (est_commands.cc) and
// claim provisioning (provision.cc).
inline constexpr std::string_view kFpProvisioningJournaled = "provision.journal-provisioning";
inline constexpr std::string_view kFpEnrollKeyGenerated = "provision.enroll-key-generated";
inline constexpr std::string_view kFpEnrollCertReceived = "provision.enroll-cert-received";
inline constexpr std::string_view kFpEnrollCertFileWritten = "provision.enroll-cert-file-written";
inline constexpr std::string_view kFpClaimKeyGenerated = "provision.claim-key-generated";
inline constexpr std::string_view kFpClaimCertReceived = "provision.claim-cert-received";
inline constexpr std::string_view kFpClaimRegistered = "provision.claim-registered";
inline constexpr std::string_view kFpClaimStateFileWritten = "provision.claim-state-file-written";
inline constexpr std::string_view kFpClaimCertFileWritten = "provision.claim-cert-file-written";
inline constexpr std::string_view kFpProvisionedJournaled = "provision.journal-active";

const std::vector<std::string_view>& FailpointNames();

// Kills the process (SIGKILL) if CERTFLEET_AGENT_FAILPOINT names `name` and this is the
// hit it asks for; otherwise returns at once.
void Failpoint(std::string_view name);

}  // namespace certfleet::agent
