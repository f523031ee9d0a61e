// UTF-8 checks shared by the wire formats (header-only, internal to shared_wire).
//
// MQTT topic names and JSON strings must be well-formed UTF-8 (MQTT 3.1.1 section 1.5.3,
// RFC 8259 section 8.1). The rules are those of RFC 3629: no overlong forms, no UTF-16
// surrogates (U+D800..U+DFFF), nothing above U+10FFFF. nlohmann::json's lexer applies the
// same rules, so a string this accepts is a string it serialises without error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace certfleet::shared {

// Length in bytes of the well-formed UTF-8 sequence starting at text[pos], or 0 if the
// bytes there are not one. Precondition: pos < text.size().
inline size_t Utf8SequenceLength(std::string_view text, size_t pos) {
  auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  uint8_t b0 = byte(pos);
  if (b0 < 0x80) return 1;
  size_t len = 0;
  uint8_t lo = 0x80;
  uint8_t hi = 0xbf;  // allowed range of the second byte
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    len = 2;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    len = 3;
    if (b0 == 0xe0) lo = 0xa0;  // overlong
    if (b0 == 0xed) hi = 0x9f;  // surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    len = 4;
    if (b0 == 0xf0) lo = 0x90;  // overlong
    if (b0 == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;  // continuation byte, overlong lead (C0, C1) or F5..FF
  }
  if (text.size() - pos < len) return 0;
  if (byte(pos + 1) < lo || byte(pos + 1) > hi) return 0;
  for (size_t i = 2; i < len; ++i) {
    if (byte(pos + i) < 0x80 || byte(pos + i) > 0xbf) return 0;
  }
  return len;
}

inline bool IsValidUtf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    size_t len = Utf8SequenceLength(text, pos);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

}  // namespace certfleet::shared
