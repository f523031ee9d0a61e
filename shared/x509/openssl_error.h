// Turns the OpenSSL error queue into a Status.
#pragma once

#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::shared {

// Empties this thread's OpenSSL error queue and returns its entries joined by "; ".
std::string DrainOpenSslErrors();

// A Status with `code` and "what: <drained OpenSSL errors>".
Status OpenSslStatus(Code code, std::string_view what);

// PEM pass phrase callback that refuses. Pass it to every PEM_read_*: with a null
// callback OpenSSL prompts on the terminal (or reads stdin) when a PEM header says
// "ENCRYPTED", which input from outside must never be able to trigger.
int NoPassphrase(char* buf, int size, int rwflag, void* userdata);

}  // namespace certfleet::shared
