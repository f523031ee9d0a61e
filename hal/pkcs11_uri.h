// PKCS#11 URIs (RFC 7512) naming a token, and PIN files. Both come from outside the
// process (config files, files written by provisioning), so they are parsed strictly.
#pragma once

#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace certfleet::hal {

// The parts of a PKCS#11 URI the key store uses. Path attributes ("token", "object",
// "id", ...) are separated by ';', query attributes ("module-path", "pin-source",
// "pin-value") follow '?' and are separated by '&'. Values are percent-decoded.
// Unknown path attributes that narrow the token (manufacturer, model, serial,
// library-*, slot-*) are accepted and ignored; unknown query attributes are rejected.
struct Pkcs11Uri {
  std::string token;        // token label
  std::string object;       // object label
  std::string id;           // object CKA_ID, decoded bytes
  std::string module_path;  // absolute path of the PKCS#11 module
  std::string pin_source;   // "file:/path" or "/path": a PIN file
  std::string pin_value;    // the PIN itself (discouraged: it ends up in config)
};

// kInvalidArgument for anything that is not a well-formed pkcs11: URI: a wrong scheme,
// bad percent escapes, a repeated attribute, an unknown query attribute, or a
// module-path that is not absolute.
shared::Result<Pkcs11Uri> ParsePkcs11Uri(std::string_view uri);

// Percent-encodes the characters RFC 7512 does not allow unescaped in a value.
std::string Pkcs11Escape(std::string_view value);

// The PIN in a PIN file's contents: one line, a trailing "\n" or "\r\n" allowed.
// kInvalidArgument if empty, longer than 256 bytes, or holding other control characters.
shared::Result<std::string> ParsePinFileContents(std::string_view contents);

// Reads a PIN file. Strict mode: the file must be a regular file owned by the
// effective user and not readable or writable by group or others
// (kPermissionDenied otherwise). The file is opened once (O_NOFOLLOW) and checked
// through its descriptor. kNotFound if missing.
shared::Result<std::string> ReadPinFile(const std::string& path);

}  // namespace certfleet::hal
