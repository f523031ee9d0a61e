// Agent-internal helpers shared by the commands that obtain a new identity (EST enroll
// and reenroll, fleet provisioning): the key for a new identity, the check of an issued
// certificate, and the "is this slot already certified" test. Pure functions of their
// arguments plus the key store and filesystem they are given; thread-safe as those are.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hal/keystore.h"
#include "shared/core/clock.h"
#include "shared/core/filesystem.h"
#include "shared/core/handles.h"
#include "shared/core/log.h"
#include "shared/core/status.h"

namespace certfleet::agent {

// Checks an issued certificate: it carries `key`'s public key, and it chains to the trust
// anchor(s) in `anchor_pem` (through the untrusted `ca_certs`, e.g. the ones the server
// published) at `now`. kDataLoss for a foreign key, kUnauthenticated for a bad chain.
shared::Status VerifyIssued(X509* cert, EVP_PKEY* key, const std::string& anchor_pem,
                            const std::vector<shared::X509Ptr>& ca_certs, shared::WallTime now);

// A key for a new identity in `slot`: a leftover from an interrupted attempt is reused
// (it was never certified), otherwise a new key of `type` is generated.
shared::Result<std::unique_ptr<hal::KeyHandle>> KeyForSlot(hal::KeyStore& keys, const std::string& slot,
                                                           shared::KeyType type, shared::Logger& log);

// The slot among `slots` whose key the certificate in `cert_file` carries, or "" when the
// file is missing, does not parse, or matches none of them.
std::string SlotCertifiedBy(const shared::Filesystem& fs, hal::KeyStore& keys, const std::string& cert_file,
                            const std::vector<std::string>& slots);

}  // namespace certfleet::agent
