// certfleetctl's client for the operator API (remote mode): HTTPS with libcurl, the
// server verified against a CA file (or the system store), a bearer token or a client
// certificate. curl_global_init must have run.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "shared/core/status.h"

namespace certfleet::companion {

struct ApiClientOptions {
  std::string server;     // "https://host:port"
  std::string ca_file;    // PEM; empty: the system trust store
  std::string token;      // bearer secret; empty: none
  std::string cert_file;  // client certificate (PEM), with key_file
  std::string key_file;
};

struct ApiReply {
  long status = 0;
  std::string body;
};

class ApiClient {
 public:
  explicit ApiClient(ApiClientOptions options) : options_(std::move(options)) {}
  // `query`: name/value pairs, URL-encoded here. kUnavailable for transport failures
  // (connection, TLS); any HTTP status is a reply.
  shared::Result<ApiReply> Get(const std::string& path, const std::vector<std::pair<std::string, std::string>>& query);
  shared::Result<ApiReply> Post(const std::string& path, const std::string& json_body);

 private:
  shared::Result<ApiReply> Perform(const std::string& method, const std::string& url, const std::string& body);
  ApiClientOptions options_;
};

}  // namespace certfleet::companion
