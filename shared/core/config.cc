#include "shared/core/config.h"

#include <toml++/toml.h>

#include "shared/core/log.h"

namespace certfleet::shared {
namespace {

std::string Where(const std::string& source, const toml::source_region& r) {
  return source + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

Status WalkTable(const toml::table& table, const std::string& prefix, const std::string& source,
                 const std::function<Status(const std::string&, const ConfigValue&)>& visit) {
  for (const auto& [key, node] : table) {
    std::string full = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const toml::table* sub = node.as_table()) {
      Status st = WalkTable(*sub, full, source, visit);
      if (!st.ok()) return st;
      continue;
    }
    Status st = visit(full, ConfigValue(node));
    if (!st.ok()) return st.WithContext(Where(source, node.source()));
  }
  return Status::Ok();
}

std::string TypeName(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::array: return "array";
    case toml::node_type::table: return "table";
    default: return "date/time";
  }
}

}  // namespace

Result<std::string> ConfigValue::AsString() const {
  if (auto v = node_.value_exact<std::string>()) return *v;
  return Error(Code::kInvalidArgument, "expected a string, got " + TypeName(node_));
}
Result<int64_t> ConfigValue::AsInt() const {
  if (auto v = node_.value_exact<int64_t>()) return *v;
  return Error(Code::kInvalidArgument, "expected an integer, got " + TypeName(node_));
}
Result<bool> ConfigValue::AsBool() const {
  if (auto v = node_.value_exact<bool>()) return *v;
  return Error(Code::kInvalidArgument, "expected true or false, got " + TypeName(node_));
}
Result<double> ConfigValue::AsDouble() const {
  if (auto v = node_.value<double>()) return *v;
  return Error(Code::kInvalidArgument, "expected a number, got " + TypeName(node_));
}
Result<std::vector<std::string>> ConfigValue::AsStringList() const {
  const toml::array* arr = node_.as_array();
  if (arr == nullptr) return Error(Code::kInvalidArgument, "expected an array of strings, got " + TypeName(node_));
  std::vector<std::string> out;
  for (const auto& el : *arr) {
    auto s = el.value_exact<std::string>();
    if (!s) return Error(Code::kInvalidArgument, "expected an array of strings, found a " + TypeName(el));
    out.push_back(*s);
  }
  return out;
}

Status ConfigValue::ForEachTableEntry(
    const std::function<Status(size_t index, const std::string& key, const ConfigValue& value)>& visit) const {
  const toml::array* arr = node_.as_array();
  if (arr == nullptr) return Status(Code::kInvalidArgument, "expected an array of tables, got " + TypeName(node_));
  for (size_t i = 0; i < arr->size(); ++i) {
    const toml::table* table = (*arr)[i].as_table();
    if (table == nullptr) return Status(Code::kInvalidArgument, "expected an array of tables, found a " + TypeName((*arr)[i]));
    std::function<Status(const toml::table&, const std::string&)> walk = [&](const toml::table& t,
                                                                            const std::string& prefix) -> Status {
      for (const auto& [key, node] : t) {
        std::string full = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
        if (const toml::table* sub = node.as_table()) {
          Status st = walk(*sub, full);
          if (!st.ok()) return st;
          continue;
        }
        Status st = visit(i, full, ConfigValue(node));
        if (!st.ok()) {
          return st.WithContext("entry " + std::to_string(i + 1) + ", key '" + full + "', line " +
                                std::to_string(node.source().begin.line));
        }
      }
      return Status::Ok();
    };
    Status st = walk(*table, "");
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

namespace config_internal {

Status Walk(std::string_view text, const std::string& source,
            const std::function<Status(const std::string&, const ConfigValue&)>& visit) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return Status(Code::kInvalidArgument, Where(source, e.source()) + ": " + std::string(e.description()));
  }
  return WalkTable(root, "", source, visit);
}

}  // namespace config_internal

Status CheckHostPort(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    return Status(Code::kInvalidArgument, "expected ADDRESS:PORT, got '" + s + "'");
  }
  std::string port = s.substr(colon + 1);
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) > 65535) {
    return Status(Code::kInvalidArgument, "bad port in '" + s + "'");
  }
  return Status::Ok();
}

Status CheckLogLevel(const std::string& s) {
  auto level = ParseLogLevel(s);
  return level ? Status::Ok() : level.error();
}

Status CheckAbsolutePath(const std::string& s) {
  if (s.empty() || s.front() != '/') return Status(Code::kInvalidArgument, "expected an absolute path, got '" + s + "'");
  return Status::Ok();
}

std::string TomlQuote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {  // TOML forbids raw DEL too
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace certfleet::shared
