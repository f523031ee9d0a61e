#include "shared/wire/topics.h"

#include <algorithm>
#include <array>

#include "shared/wire/utf8.h"

namespace certfleet::shared {
namespace {

constexpr std::string_view kAwsRoot = "$aws";
constexpr std::string_view kCertfleetRoot = "certfleet/provisioning";
constexpr std::string_view kJson = "json";
constexpr size_t kMaxThingSuffixLength = 256;

// The levels after the root (and, for kCertfleet, the client id). Template names fill
// the "+" level of kRegisterThing.
std::string_view OperationPath(Operation operation) {
  switch (operation) {
    case Operation::kCreateKeysAndCertificate: return "certificates/create/json";
    case Operation::kCreateCertificateFromCsr: return "certificates/create-from-csr/json";
    case Operation::kRegisterThing: return "provisioning-templates/+/provision/json";
  }
  return "";
}

constexpr std::array<Operation, 3> kOperations = {
    Operation::kCreateKeysAndCertificate, Operation::kCreateCertificateFromCsr, Operation::kRegisterThing};

bool IsTemplateChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

bool IsThingNameChar(char c) { return IsTemplateChar(c) || c == ':' || c == '.'; }

// A topic level that may hold any UTF-8 text except the separators and wildcards.
Status ValidateLevel(std::string_view what, std::string_view value, size_t max_length) {
  if (value.empty()) return Status(Code::kInvalidArgument, std::string(what) + " is empty");
  if (value.size() > max_length) {
    return Status(Code::kInvalidArgument,
                  std::string(what) + " is longer than " + std::to_string(max_length) + " bytes");
  }
  if (value.find_first_of(std::string_view("/+#\0", 4)) != std::string_view::npos) {
    return Status(Code::kInvalidArgument, std::string(what) + " contains '/', '+', '#' or NUL");
  }
  if (!IsValidUtf8(value)) return Status(Code::kInvalidArgument, std::string(what) + " is not valid UTF-8");
  return Status::Ok();
}

Status ValidateCharset(std::string_view what, std::string_view value, size_t max_length, bool (*allowed)(char),
                       std::string_view charset) {
  if (value.empty()) return Status(Code::kInvalidArgument, std::string(what) + " is empty");
  if (value.size() > max_length) {
    return Status(Code::kInvalidArgument,
                  std::string(what) + " is longer than " + std::to_string(max_length) + " characters");
  }
  for (char c : value) {
    if (!allowed(c)) {
      return Status(Code::kInvalidArgument, std::string(what) + " has a character outside " + std::string(charset));
    }
  }
  return Status::Ok();
}

Status NotARequestTopic() {
  return Status(Code::kInvalidArgument, "not a fleet provisioning request topic");
}

// Matches levels[offset..] against the request path of one operation ("+" = template).
bool MatchOperation(Operation operation, const std::string_view* levels, size_t count, std::string_view* tmpl) {
  std::string_view path = OperationPath(operation);
  size_t i = 0;
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    std::string_view want = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (i >= count) return false;
    if (want == "+") {
      *tmpl = levels[i];
    } else if (levels[i] != want) {
      return false;
    }
    ++i;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return i == count;
}

Status ValidateThingSuffix(std::string_view suffix) {
  if (suffix.empty()) return Status(Code::kInvalidArgument, "thing topic suffix is empty");
  if (suffix.size() > kMaxThingSuffixLength) {
    return Status(Code::kInvalidArgument,
                  "thing topic suffix is longer than " + std::to_string(kMaxThingSuffixLength) + " bytes");
  }
  if (suffix.find_first_of(std::string_view("+#\0", 3)) != std::string_view::npos) {
    return Status(Code::kInvalidArgument, "thing topic suffix contains '+', '#' or NUL");
  }
  if (suffix.front() == '/' || suffix.back() == '/' || suffix.find("//") != std::string_view::npos) {
    return Status(Code::kInvalidArgument, "thing topic suffix has an empty level");
  }
  if (!IsValidUtf8(suffix)) return Status(Code::kInvalidArgument, "thing topic suffix is not valid UTF-8");
  return Status::Ok();
}

}  // namespace

std::string_view DialectName(Dialect dialect) {
  switch (dialect) {
    case Dialect::kAws: return "aws";
    case Dialect::kCertfleet: return "certfleet";
  }
  return "unknown";
}

Result<Dialect> ParseDialect(std::string_view name) {
  if (name == "aws") return Dialect::kAws;
  if (name == "certfleet") return Dialect::kCertfleet;
  return Error(Code::kInvalidArgument, "unknown provisioning topic dialect (want \"aws\" or \"certfleet\")");
}

std::string_view OperationName(Operation operation) {
  switch (operation) {
    case Operation::kCreateKeysAndCertificate: return "CreateKeysAndCertificate";
    case Operation::kCreateCertificateFromCsr: return "CreateCertificateFromCsr";
    case Operation::kRegisterThing: return "RegisterThing";
  }
  return "Unknown";
}

Status ValidateClientId(std::string_view client_id) {
  return ValidateLevel("client id", client_id, kMaxClientIdLength);
}

Status ValidateTemplateName(std::string_view template_name) {
  return ValidateCharset("template name", template_name, kMaxTemplateNameLength, IsTemplateChar, "[A-Za-z0-9_-]");
}

Status ValidateThingName(std::string_view thing_name) {
  return ValidateCharset("thing name", thing_name, kMaxThingNameLength, IsThingNameChar, "[A-Za-z0-9:_.-]");
}

bool IsValidThingName(std::string_view name) {
  constexpr size_t kMaxRegistryThingName = 64;
  constexpr std::string_view kReserved = "certfleet-";
  if (name.empty() || name.size() > kMaxRegistryThingName || name.substr(0, kReserved.size()) == kReserved) return false;
  return std::all_of(name.begin(), name.end(), IsThingNameChar);
}

Status ValidateClaimSubject(std::string_view claim_subject) {
  return ValidateLevel("claim subject", claim_subject, kMaxClaimSubjectLength);
}

Status ValidateShareGroup(std::string_view group) {
  return ValidateLevel("shared subscription group", group, kMaxShareGroupLength);
}

Result<std::string> RequestTopic(const ProvisioningTopic& topic) {
  std::string out;
  if (topic.dialect == Dialect::kAws) {
    out = kAwsRoot;
  } else {
    CF_RETURN_IF_ERROR(ValidateClaimSubject(topic.claim_subject));
    CF_RETURN_IF_ERROR(ValidateClientId(topic.client_id));
    out = kCertfleetRoot;
    out += '/';
    out += topic.claim_subject;
    out += '/';
    out += topic.client_id;
  }
  out += '/';
  if (topic.operation == Operation::kRegisterThing) {
    CF_RETURN_IF_ERROR(ValidateTemplateName(topic.template_name));
    out += "provisioning-templates/";
    out += topic.template_name;
    out += "/provision/";
    out += kJson;
  } else {
    out += OperationPath(topic.operation);
  }
  return out;
}

Result<std::string> ReplyTopic(const ProvisioningTopic& topic, Reply reply) {
  CF_ASSIGN_OR_RETURN(std::string out, RequestTopic(topic));
  out += reply == Reply::kAccepted ? "/accepted" : "/rejected";
  return out;
}

Result<ProvisioningTopic> ParseRequestTopic(std::string_view topic) {
  // Longest request topic:
  // certfleet/provisioning/<claim>/<id>/provisioning-templates/<t>/provision/json = 8 levels;
  // anything with more levels is not a request topic.
  std::array<std::string_view, 8> levels{};
  size_t count = 0;
  for (size_t start = 0;;) {
    if (count == levels.size()) return Error(NotARequestTopic());
    size_t slash = topic.find('/', start);
    levels[count++] = topic.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }

  ProvisioningTopic out;
  size_t first = 0;  // index of the first operation level
  if (count >= 1 && levels[0] == kAwsRoot) {
    out.dialect = Dialect::kAws;
    first = 1;
  } else if (count >= 4 && levels[0] == "certfleet" && levels[1] == "provisioning") {
    out.dialect = Dialect::kCertfleet;
    first = 4;
  } else {
    return Error(NotARequestTopic());
  }

  for (Operation operation : kOperations) {
    std::string_view tmpl;
    if (!MatchOperation(operation, levels.data() + first, count - first, &tmpl)) continue;
    out.operation = operation;
    if (out.dialect == Dialect::kCertfleet) {
      CF_RETURN_IF_ERROR(ValidateClaimSubject(levels[2]));
      CF_RETURN_IF_ERROR(ValidateClientId(levels[3]));
      out.claim_subject = levels[2];
      out.client_id = levels[3];
    }
    if (operation == Operation::kRegisterThing) {
      CF_RETURN_IF_ERROR(ValidateTemplateName(tmpl));
      out.template_name = tmpl;
    }
    return out;
  }
  return Error(NotARequestTopic());
}

Result<std::vector<std::string>> CompanionSubscriptions(Dialect dialect, std::string_view share_group) {
  std::string prefix;
  if (dialect == Dialect::kAws) {
    prefix = kAwsRoot;
    prefix += '/';
  } else {
    if (!share_group.empty()) {
      CF_RETURN_IF_ERROR(ValidateShareGroup(share_group));
      prefix = "$share/";
      prefix += share_group;
      prefix += '/';
    }
    prefix += kCertfleetRoot;
    prefix += "/+/+/";
  }
  std::vector<std::string> filters;
  filters.reserve(kOperations.size());
  for (Operation operation : kOperations) filters.push_back(prefix + std::string(OperationPath(operation)));
  return filters;
}

Result<std::string> ThingTopicPrefix(std::string_view thing_name) {
  CF_RETURN_IF_ERROR(ValidateThingName(thing_name));
  std::string out(kThingTopicRoot);
  out += thing_name;
  out += '/';
  return out;
}

Result<std::string> ThingTopic(std::string_view thing_name, std::string_view suffix) {
  CF_ASSIGN_OR_RETURN(std::string out, ThingTopicPrefix(thing_name));
  CF_RETURN_IF_ERROR(ValidateThingSuffix(suffix));
  out += suffix;
  return out;
}

Result<ThingTopicParts> ParseThingTopic(std::string_view topic) {
  if (topic.substr(0, kThingTopicRoot.size()) != kThingTopicRoot) {
    return Error(Code::kInvalidArgument, "not a thing topic");
  }
  std::string_view rest = topic.substr(kThingTopicRoot.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return Error(Code::kInvalidArgument, "thing topic has no suffix");
  ThingTopicParts parts;
  CF_RETURN_IF_ERROR(ValidateThingName(rest.substr(0, slash)));
  CF_RETURN_IF_ERROR(ValidateThingSuffix(rest.substr(slash + 1)));
  parts.thing_name = rest.substr(0, slash);
  parts.suffix = rest.substr(slash + 1);
  return parts;
}

}  // namespace certfleet::shared
