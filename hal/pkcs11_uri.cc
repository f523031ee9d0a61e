#include "hal/pkcs11_uri.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/crypto.h>

namespace certfleet::hal {

using shared::Code;

namespace {

constexpr size_t kMaxUri = 4096;
constexpr size_t kMaxPin = 256;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

shared::Result<std::string> Unescape(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) {
        return shared::Error(Code::kInvalidArgument, "truncated percent escape in PKCS#11 URI");
      }
      int hi = HexValue(in[i + 1]);
      int lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return shared::Error(Code::kInvalidArgument, "bad percent escape in PKCS#11 URI");
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (static_cast<unsigned char>(c) < 0x21 || c == 0x7f || static_cast<unsigned char>(c) >= 0x80) {
      return shared::Error(Code::kInvalidArgument, "unescaped control, space or non-ASCII byte in PKCS#11 URI");
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Sets `field` once; a repeated attribute is an error (RFC 7512 forbids it for path
// attributes, and a repeated query attribute is ambiguous).
shared::Status SetOnce(std::string& field, bool& seen, std::string_view name, std::string_view raw) {
  if (seen) return shared::Status(Code::kInvalidArgument, "repeated attribute '" + std::string(name) + "' in PKCS#11 URI");
  seen = true;
  CF_ASSIGN_OR_RETURN(field, Unescape(raw));
  return shared::Status::Ok();
}

bool Ignorable(std::string_view name) {
  return name == "manufacturer" || name == "model" || name == "serial" || name == "type" ||
         name == "library-manufacturer" || name == "library-description" || name == "library-version" ||
         name == "slot-manufacturer" || name == "slot-description" || name == "slot-id";
}

}  // namespace

shared::Result<Pkcs11Uri> ParsePkcs11Uri(std::string_view uri) {
  constexpr std::string_view kScheme = "pkcs11:";
  if (uri.size() > kMaxUri) return shared::Error(Code::kInvalidArgument, "PKCS#11 URI is too long");
  if (uri.substr(0, kScheme.size()) != kScheme) {
    return shared::Error(Code::kInvalidArgument, "a PKCS#11 URI starts with 'pkcs11:'");
  }
  std::string_view rest = uri.substr(kScheme.size());
  std::string_view path = rest;
  std::string_view query;
  bool has_query = false;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    path = rest.substr(0, q);
    query = rest.substr(q + 1);
    has_query = true;
  }
  Pkcs11Uri out;
  bool seen[6] = {};
  auto each = [&](std::string_view list, char sep, bool is_query) -> shared::Status {
    while (!list.empty()) {
      size_t end = list.find(sep);
      std::string_view attr = list.substr(0, end);
      list = end == std::string_view::npos ? std::string_view{} : list.substr(end + 1);
      if (attr.empty()) {
        if (end != std::string_view::npos || is_query) {
          return shared::Status(Code::kInvalidArgument, "empty attribute in PKCS#11 URI");
        }
        continue;
      }
      size_t eq = attr.find('=');
      if (eq == std::string_view::npos || eq == 0) {
        return shared::Status(Code::kInvalidArgument, "PKCS#11 URI attribute without name=value");
      }
      std::string_view name = attr.substr(0, eq);
      std::string_view value = attr.substr(eq + 1);
      if (!is_query) {
        if (name == "token") { CF_RETURN_IF_ERROR(SetOnce(out.token, seen[0], name, value)); continue; }
        if (name == "object") { CF_RETURN_IF_ERROR(SetOnce(out.object, seen[1], name, value)); continue; }
        if (name == "id") { CF_RETURN_IF_ERROR(SetOnce(out.id, seen[2], name, value)); continue; }
        if (Ignorable(name)) {
          if (auto v = Unescape(value); !v) return v.error();
          continue;
        }
        return shared::Status(Code::kInvalidArgument, "unknown attribute in PKCS#11 URI path");
      }
      if (name == "module-path") { CF_RETURN_IF_ERROR(SetOnce(out.module_path, seen[3], name, value)); continue; }
      if (name == "pin-source") { CF_RETURN_IF_ERROR(SetOnce(out.pin_source, seen[4], name, value)); continue; }
      if (name == "pin-value") { CF_RETURN_IF_ERROR(SetOnce(out.pin_value, seen[5], name, value)); continue; }
      return shared::Status(Code::kInvalidArgument, "unknown query attribute in PKCS#11 URI");
    }
    return shared::Status::Ok();
  };
  CF_RETURN_IF_ERROR(each(path, ';', false));
  if (has_query) {
    if (query.empty()) return shared::Error(Code::kInvalidArgument, "empty query in PKCS#11 URI");
    CF_RETURN_IF_ERROR(each(query, '&', true));
  }
  if (seen[3] && (out.module_path.empty() || out.module_path.front() != '/' ||
                  out.module_path.find('\0') != std::string::npos)) {
    return shared::Error(Code::kInvalidArgument, "module-path in a PKCS#11 URI must be an absolute path");
  }
  if (seen[4]) {
    std::string_view src = out.pin_source;
    if (src.substr(0, 5) == "file:") src.remove_prefix(5);
    if (src.empty() || src.front() != '/' || src.find('\0') != std::string_view::npos) {
      return shared::Error(Code::kInvalidArgument, "pin-source in a PKCS#11 URI must name an absolute file path");
    }
    out.pin_source = std::string(src);
  }
  if (seen[0] && out.token.find('\0') != std::string::npos) {
    return shared::Error(Code::kInvalidArgument, "NUL byte in PKCS#11 token label");
  }
  return out;
}

std::string Pkcs11Escape(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                 c == '.' || c == '_' || c == '~';
    if (plain) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

shared::Result<std::string> ParsePinFileContents(std::string_view contents) {
  if (contents.size() >= 2 && contents.substr(contents.size() - 2) == "\r\n") {
    contents.remove_suffix(2);
  } else if (!contents.empty() && contents.back() == '\n') {
    contents.remove_suffix(1);
  }
  if (contents.empty()) return shared::Error(Code::kInvalidArgument, "PIN file is empty");
  if (contents.size() > kMaxPin) return shared::Error(Code::kInvalidArgument, "PIN file holds more than one short line");
  for (unsigned char c : contents) {
    if (c < 0x20 || c == 0x7f) return shared::Error(Code::kInvalidArgument, "PIN file holds control characters");
  }
  return std::string(contents);
}

shared::Result<std::string> ReadPinFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    Code code = err == ENOENT ? Code::kNotFound : (err == EACCES || err == ELOOP) ? Code::kPermissionDenied : Code::kInternal;
    return shared::Error(code, "PIN file " + path + ": " + std::strerror(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return shared::Error(Code::kInternal, "PIN file " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return shared::Error(Code::kPermissionDenied, "PIN file " + path + " is not a regular file");
  if (st.st_uid != ::geteuid()) {
    return shared::Error(Code::kPermissionDenied, "PIN file " + path + " is not owned by the user running this program");
  }
  if ((st.st_mode & 077) != 0) {
    return shared::Error(Code::kPermissionDenied, "PIN file " + path + " is accessible by group or others (want mode 0600 or 0400)");
  }
  char buf[kMaxPin + 3];
  size_t len = 0;
  while (len < sizeof(buf)) {
    ssize_t n = ::read(fd, buf + len, sizeof(buf) - len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return shared::Error(Code::kInternal, "PIN file " + path + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    len += static_cast<size_t>(n);
  }
  auto pin = ParsePinFileContents(std::string_view(buf, len));
  OPENSSL_cleanse(buf, sizeof(buf));
  if (!pin) return shared::Error(pin.error().WithContext(path));
  return pin;
}

}  // namespace certfleet::hal
