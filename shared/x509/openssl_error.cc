#include "shared/x509/openssl_error.h"

#include <openssl/err.h>

namespace certfleet::shared {

std::string DrainOpenSslErrors() {
  std::string out;
  unsigned long err;
  while ((err = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*userdata*/) { return -1; }

Status OpenSslStatus(Code code, std::string_view what) {
  std::string msg(what);
  std::string errs = DrainOpenSslErrors();
  if (!errs.empty()) {
    msg += ": ";
    msg += errs;
  }
  return Status(code, std::move(msg));
}

}  // namespace certfleet::shared
