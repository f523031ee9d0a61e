#include "shared/wire/json_payload.h"

#include <string>

namespace certfleet::shared {

Result<nlohmann::json> ParseJsonPayload(std::string_view what, std::string_view payload, size_t max_bytes) {
  if (payload.size() > max_bytes) {
    return Error(Code::kResourceExhausted, std::string(what) + ": payload of " + std::to_string(payload.size()) +
                                               " bytes is larger than " + std::to_string(max_bytes));
  }
  // A raw NUL is never valid JSON text, but nlohmann's lexer takes it for the end of the
  // input and would accept "{}\0<anything>".
  if (payload.find('\0') != std::string_view::npos) {
    return Error(Code::kInvalidArgument, std::string(what) + ": payload is not valid JSON (NUL byte)");
  }
  // Non-throwing parse: a syntax error (or a number out of double range) yields a
  // discarded value instead of an exception.
  nlohmann::json value = nlohmann::json::parse(payload.begin(), payload.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return Error(Code::kInvalidArgument, std::string(what) + ": payload is not valid JSON");
  if (!value.is_object()) return Error(Code::kInvalidArgument, std::string(what) + ": payload is not a JSON object");
  return value;
}

}  // namespace certfleet::shared
