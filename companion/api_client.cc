#include "companion/api_client.h"

#include <curl/curl.h>

#include <memory>

namespace certfleet::companion {

using shared::Code;

namespace {

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

constexpr size_t kMaxReplyBytes = 16 << 20;

size_t Collect(char* data, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::string*>(user);
  if (out->size() + size * n > kMaxReplyBytes) return 0;
  out->append(data, size * n);
  return size * n;
}

}  // namespace

shared::Result<ApiReply> ApiClient::Get(const std::string& path,
                                        const std::vector<std::pair<std::string, std::string>>& query) {
  std::unique_ptr<CURL, CurlDeleter> esc(curl_easy_init());
  if (!esc) return shared::Error(Code::kInternal, "curl_easy_init failed");
  std::string url = options_.server + path;
  char sep = '?';
  for (const auto& [k, v] : query) {
    char* e = curl_easy_escape(esc.get(), v.c_str(), static_cast<int>(v.size()));
    url += sep + k + "=" + (e != nullptr ? e : "");
    curl_free(e);
    sep = '&';
  }
  return Perform("GET", url, "");
}

shared::Result<ApiReply> ApiClient::Post(const std::string& path, const std::string& json_body) {
  return Perform("POST", options_.server + path, json_body);
}

shared::Result<ApiReply> ApiClient::Perform(const std::string& method, const std::string& url,
                                            const std::string& body) {
  std::unique_ptr<CURL, CurlDeleter> c(curl_easy_init());
  if (!c) return shared::Error(Code::kInternal, "curl_easy_init failed");
  ApiReply reply;
  std::unique_ptr<curl_slist, SlistDeleter> headers;
  auto add_header = [&](const std::string& h) { headers.reset(curl_slist_append(headers.release(), h.c_str())); };
  add_header("Accept: application/json");
  std::string auth;
  if (!options_.token.empty()) {
    auth = "Authorization: Bearer " + options_.token;
    add_header(auth);
  }
  if (method == "POST") add_header("Content-Type: application/json");
  curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(c.get(), CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_2);
  curl_easy_setopt(c.get(), CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c.get(), CURLOPT_SSL_VERIFYHOST, 2L);
  if (!options_.ca_file.empty()) curl_easy_setopt(c.get(), CURLOPT_CAINFO, options_.ca_file.c_str());
  if (!options_.cert_file.empty()) {
    curl_easy_setopt(c.get(), CURLOPT_SSLCERT, options_.cert_file.c_str());
    curl_easy_setopt(c.get(), CURLOPT_SSLKEY, options_.key_file.c_str());
  }
  curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c.get(), CURLOPT_TIMEOUT, 30L);
  curl_easy_setopt(c.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, Collect);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &reply.body);
  if (method == "POST") {
    curl_easy_setopt(c.get(), CURLOPT_POST, 1L);
    curl_easy_setopt(c.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  CURLcode rc = curl_easy_perform(c.get());
  if (rc != CURLE_OK) return shared::Error(Code::kUnavailable, std::string("API request failed: ") + curl_easy_strerror(rc));
  curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &reply.status);
  return reply;
}

}  // namespace certfleet::companion
