// Table-driven TOML config loading: each known key maps to a parser that checks the
// value and stores it in the program's config struct. Unknown keys, wrong types and bad
// values are errors that name the file, line and column.
//
//   ConfigSchema<MyConfig> schema;
//   schema.Add("est.listen", StringValue<MyConfig>([](MyConfig& c) -> auto& { return c.listen; }));
//   Result<MyConfig> cfg = schema.Parse(text, "/etc/certfleet/x.toml", MyConfig{});
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/duration.h"
#include "shared/core/status.h"

namespace toml {
inline namespace v3 {
class node;
}
}  // namespace toml

namespace certfleet::shared {

// A view of one TOML value handed to a key's parser.
class ConfigValue {
 public:
  explicit ConfigValue(const toml::node& node) : node_(node) {}
  Result<std::string> AsString() const;
  Result<int64_t> AsInt() const;
  Result<bool> AsBool() const;
  Result<double> AsDouble() const;
  Result<std::vector<std::string>> AsStringList() const;
  // For an array of tables (`[[name]]`): calls `visit(index, key, value)` for every leaf
  // of every table, nested keys joined with '.'. kInvalidArgument if this is not an array
  // of tables; errors from `visit` get "entry N, line L" as context.
  Status ForEachTableEntry(
      const std::function<Status(size_t index, const std::string& key, const ConfigValue& value)>& visit) const;

 private:
  const toml::node& node_;
};

template <class T>
using ConfigSetter = std::function<Status(const ConfigValue&, T&)>;
// For a family of keys under one prefix: gets the rest of the dotted key after the prefix.
template <class T>
using ConfigPrefixSetter = std::function<Status(const std::string& rest, const ConfigValue&, T&)>;

namespace config_internal {
// Parses `text`, calls `visit(dotted_key, value, where)` for every leaf; returns the
// first error, prefixed with "source:line:col".
Status Walk(std::string_view text, const std::string& source,
            const std::function<Status(const std::string&, const ConfigValue&)>& visit);
}  // namespace config_internal

template <class T>
class ConfigSchema {
 public:
  ConfigSchema& Add(std::string key, ConfigSetter<T> setter) {
    setters_.emplace(std::move(key), std::move(setter));
    return *this;
  }
  // Accepts every leaf key "<prefix><rest>" with a non-empty rest (e.g. prefix
  // "provisioning.parameters." for a TOML table of free-form keys). Exact keys win.
  ConfigSchema& AddPrefix(std::string prefix, ConfigPrefixSetter<T> setter) {
    prefixes_.emplace_back(std::move(prefix), std::move(setter));
    return *this;
  }
  // Parses `text` on top of `defaults`. Nothing of a failed parse is returned.
  Result<T> Parse(std::string_view text, const std::string& source, T defaults) const {
    Status st = config_internal::Walk(text, source, [&](const std::string& key, const ConfigValue& v) {
      auto it = setters_.find(key);
      if (it != setters_.end()) return it->second(v, defaults).WithContext("key '" + key + "'");
      for (const auto& [prefix, setter] : prefixes_) {
        if (key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0) {
          return setter(key.substr(prefix.size()), v, defaults).WithContext("key '" + key + "'");
        }
      }
      return Status(Code::kInvalidArgument, "unknown key '" + key + "'");
    });
    if (!st.ok()) return Error(st);
    return defaults;
  }
  std::vector<std::string> Keys() const {
    std::vector<std::string> keys;
    for (const auto& [k, v] : setters_) keys.push_back(k);
    for (const auto& [p, v] : prefixes_) keys.push_back(p + "*");
    return keys;
  }

 private:
  std::map<std::string, ConfigSetter<T>> setters_;
  std::vector<std::pair<std::string, ConfigPrefixSetter<T>>> prefixes_;
};

// Ready-made setters. `get` returns a reference to the member to fill.
template <class T, class Get>
ConfigSetter<T> StringValue(Get get, std::function<Status(const std::string&)> check = nullptr) {
  return [get, check](const ConfigValue& v, T& cfg) -> Status {
    auto s = v.AsString();
    if (!s) return s.error();
    if (check) {
      Status st = check(*s);
      if (!st.ok()) return st;
    }
    get(cfg) = *s;
    return Status::Ok();
  };
}

template <class T, class Get>
ConfigSetter<T> IntValue(Get get, int64_t min, int64_t max) {
  return [get, min, max](const ConfigValue& v, T& cfg) -> Status {
    auto n = v.AsInt();
    if (!n) return n.error();
    if (*n < min || *n > max) {
      return Status(Code::kInvalidArgument,
                    "value " + std::to_string(*n) + " out of range [" + std::to_string(min) + ", " +
                        std::to_string(max) + "]");
    }
    get(cfg) = static_cast<std::remove_reference_t<decltype(get(cfg))>>(*n);
    return Status::Ok();
  };
}

template <class T, class Get>
ConfigSetter<T> BoolValue(Get get) {
  return [get](const ConfigValue& v, T& cfg) -> Status {
    auto b = v.AsBool();
    if (!b) return b.error();
    get(cfg) = *b;
    return Status::Ok();
  };
}

template <class T, class Get>
ConfigSetter<T> DurationValue(Get get, std::chrono::seconds min, std::chrono::seconds max) {
  return [get, min, max](const ConfigValue& v, T& cfg) -> Status {
    auto s = v.AsString();
    if (!s) return s.error();
    auto d = ParseDuration(*s);
    if (!d) return d.error();
    if (*d < min || *d > max) {
      return Status(Code::kInvalidArgument, "duration " + *s + " out of range [" + FormatDuration(min) +
                                                ", " + FormatDuration(max) + "]");
    }
    get(cfg) = *d;
    return Status::Ok();
  };
}

template <class T, class Get>
ConfigSetter<T> StringListValue(Get get, std::function<Status(const std::string&)> check = nullptr) {
  return [get, check](const ConfigValue& v, T& cfg) -> Status {
    auto list = v.AsStringList();
    if (!list) return list.error();
    if (check) {
      for (const auto& s : *list) {
        Status st = check(s);
        if (!st.ok()) return st;
      }
    }
    get(cfg) = *list;
    return Status::Ok();
  };
}

// Checks for common value shapes.
Status CheckHostPort(const std::string& s);       // "ADDR:PORT", "[v6]:PORT"
Status CheckAbsolutePath(const std::string& s);
Status CheckLogLevel(const std::string& s);    // ParseLogLevel accepts it

// Quotes a string as a TOML basic string (for writing config files).
std::string TomlQuote(std::string_view s);

}  // namespace certfleet::shared
