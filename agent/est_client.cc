#include "agent/est_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <thread>

#include "shared/core/base64.h"
#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"
#include "shared/x509/pkcs7.h"

namespace certfleet::agent {

using shared::Code;
namespace sh = shared;

namespace {

constexpr size_t kMaxResponseBytes = 1 << 20;

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

struct Transfer {
  std::string body;
  std::string content_type;
  std::optional<std::string> retry_after;
  std::optional<std::string> date;
  bool too_large = false;
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  if (t->body.size() + len > kMaxResponseBytes) {
    t->too_large = true;
    return 0;  // aborts the transfer
  }
  t->body.append(data, len);
  return len;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  std::string_view line(data, len);
  auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name = Lower(line.substr(0, colon));
    std::string value = Trim(line.substr(colon + 1));
    if (name == "retry-after") t->retry_after = value;
    if (name == "date") t->date = value;
    if (name == "content-type") t->content_type = value;
  } else if (line.rfind("HTTP/", 0) == 0) {
    // A new response (after 100 Continue or a redirect): forget earlier headers.
    *t = Transfer{};
  }
  return len;
}

struct TlsSetup {
  const EstClientOptions* options;
  std::string error;
};

// Called by libcurl with its SSL_CTX before the handshake: installs the trust anchor
// and, for mTLS, the client certificate chain and the hal key.
CURLcode OnSslCtx(CURL*, void* ssl_ctx, void* user) {
  auto* setup = static_cast<TlsSetup*>(user);
  SSL_CTX* ctx = static_cast<SSL_CTX*>(ssl_ctx);
  const EstClientOptions& o = *setup->options;
  auto anchors = sh::CertsFromPem(o.trust_anchor_pem);
  if (!anchors) {
    setup->error = "trust anchor: " + anchors.error().message();
    return CURLE_SSL_CERTPROBLEM;
  }
  X509_STORE* store = X509_STORE_new();
  for (auto& c : *anchors) X509_STORE_add_cert(store, c.get());
  SSL_CTX_set_cert_store(ctx, store);  // takes ownership; no system CAs
  if (o.client_key != nullptr) {
    auto chain = sh::CertsFromPem(o.client_cert_pem);
    if (!chain) {
      setup->error = "client certificate: " + chain.error().message();
      return CURLE_SSL_CERTPROBLEM;
    }
    if (SSL_CTX_use_certificate(ctx, chain->front().get()) != 1 || SSL_CTX_use_PrivateKey(ctx, o.client_key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      setup->error = sh::OpenSslStatus(Code::kInvalidArgument, "client certificate and key do not match").message();
      return CURLE_SSL_CERTPROBLEM;
    }
    for (size_t i = 1; i < chain->size(); ++i) {
      X509_up_ref((*chain)[i].get());
      SSL_CTX_add_extra_chain_cert(ctx, (*chain)[i].get());
    }
  }
  return CURLE_OK;
}

// The server's words for an error, cut to one reasonable line.
std::string ServerMessage(const std::string& body) {
  std::string msg = Trim(body.substr(0, 300));
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  std::replace(msg.begin(), msg.end(), '\r', ' ');
  return msg.empty() ? std::string("(no message)") : msg;
}

Code CodeForHttp(long status) {
  if (status == 400 || status == 413 || status == 415) return Code::kInvalidArgument;
  if (status == 401) return Code::kUnauthenticated;
  if (status == 403) return Code::kPermissionDenied;
  if (status == 404 || status == 501) return Code::kNotFound;
  if (status == 429 || status == 503 || status == 502 || status == 504) return Code::kUnavailable;
  return Code::kInternal;
}

std::optional<sh::WallTime> ParseHttpDate(const std::string& value) {
  std::tm tm{};
  const char* end = strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr) return std::nullopt;
  return sh::FromUnixSeconds(static_cast<int64_t>(timegm(&tm)));
}

}  // namespace

std::optional<std::chrono::seconds> ParseRetryAfter(std::string_view value, sh::WallTime now) {
  std::string v = Trim(value);
  if (v.empty()) return std::nullopt;
  if (std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); })) {
    if (v.size() > 9) return std::chrono::seconds(999999999);
    return std::chrono::seconds(std::stoll(v));
  }
  auto when = ParseHttpDate(v);
  if (!when) return std::nullopt;
  auto delta = std::chrono::duration_cast<std::chrono::seconds>(*when - now);
  return std::max(delta, std::chrono::seconds(0));
}

Result<std::vector<sh::X509Ptr>> DecodeCertsOnlyBody(std::string_view content_type, std::string_view body) {
  std::string media = Lower(Trim(content_type.substr(0, content_type.find(';'))));
  if (media != "application/pkcs7-mime") {
    return sh::Error(Code::kInvalidArgument, "unexpected response Content-Type '" + std::string(content_type) + "'");
  }
  auto der = sh::Base64Decode(body);
  if (!der) return sh::Error(der.error().WithContext("response body"));
  auto certs = sh::ParseCertsOnly(*der);
  if (!certs) return sh::Error(certs.error().WithContext("response body"));
  return certs;
}

EstClient::EstClient(EstClientOptions options) : options_(std::move(options)) {
  if (!options_.sleep) options_.sleep = [](std::chrono::seconds d) { std::this_thread::sleep_for(d); };
  while (!options_.server.empty() && options_.server.back() == '/') options_.server.pop_back();
}

Result<EstHttpResult> EstClient::Perform(const std::string& op, const std::string* body) {
  if (options_.server.rfind("https://", 0) != 0) {
    return sh::Error(Code::kInvalidArgument, "EST server URL must start with https://: " + options_.server);
  }
  // Split "https://host:port/label" into base and label.
  std::string rest = options_.server.substr(8);
  auto slash = rest.find('/');
  std::string base = "https://" + rest.substr(0, slash);
  std::string label = slash == std::string::npos ? "" : rest.substr(slash + 1);
  std::string url = base + "/.well-known/est/" + (label.empty() ? "" : label + "/") + op;

  sh::CurlPtr curl(curl_easy_init());
  if (!curl) return sh::Error(Code::kInternal, "curl_easy_init failed");
  Transfer transfer;
  TlsSetup tls{&options_, {}};
  char errbuf[CURL_ERROR_SIZE] = {0};
  sh::CurlSlistPtr headers;
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  long tls_version = static_cast<long>(CURL_SSLVERSION_TLSv1_2);
  if (options_.tls12_only) tls_version |= static_cast<long>(CURL_SSLVERSION_MAX_TLSv1_2);
  curl_easy_setopt(c, CURLOPT_SSLVERSION, tls_version);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_CAINFO, nullptr);
  curl_easy_setopt(c, CURLOPT_CAPATH, nullptr);
  curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, OnSslCtx);
  curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, &tls);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, static_cast<long>(options_.connect_timeout.count()));
  curl_easy_setopt(c, CURLOPT_TIMEOUT, static_cast<long>(options_.request_timeout.count()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  if (!options_.user.empty()) {
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERNAME, options_.user.c_str());
    curl_easy_setopt(c, CURLOPT_PASSWORD, options_.password.c_str());
  }
  if (body != nullptr) {
    headers.reset(curl_slist_append(nullptr, "Content-Type: application/pkcs10"));
    curl_slist_append(headers.get(), "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK) {
    if (transfer.too_large) return sh::Error(Code::kResourceExhausted, "EST response from " + url + " is too large");
    std::string why = !tls.error.empty() ? tls.error : (errbuf[0] != 0 ? errbuf : curl_easy_strerror(rc));
    Code code = Code::kUnavailable;
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE) code = Code::kUnauthenticated;
    if (rc == CURLE_SSL_CERTPROBLEM) code = Code::kInvalidArgument;
    if (rc == CURLE_OPERATION_TIMEDOUT) code = Code::kDeadlineExceeded;
    return sh::Error(code, "EST " + op + " at " + url + ": " + why);
  }
  EstHttpResult out;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out.status);
  out.content_type = transfer.content_type;
  out.body = std::move(transfer.body);
  out.retry_after = transfer.retry_after;
  if (transfer.date) {
    out.server_date = ParseHttpDate(*transfer.date);
    if (out.server_date && (!last_server_date_ || *out.server_date > *last_server_date_)) {
      last_server_date_ = out.server_date;
    }
  }
  return out;
}

Result<std::vector<sh::X509Ptr>> EstClient::CaCerts() {
  CF_ASSIGN_OR_RETURN(EstHttpResult r, Perform("cacerts", nullptr));
  if (r.status != 200) {
    return sh::Error(CodeForHttp(r.status), "EST cacerts: HTTP " + std::to_string(r.status) + ": " + ServerMessage(r.body));
  }
  return DecodeCertsOnlyBody(r.content_type, r.body);
}

Result<sh::X509Ptr> EstClient::SimpleEnroll(const std::string& csr_der) { return Enroll("simpleenroll", csr_der); }
Result<sh::X509Ptr> EstClient::SimpleReenroll(const std::string& csr_der) { return Enroll("simplereenroll", csr_der); }

Result<sh::X509Ptr> EstClient::Enroll(const std::string& op, const std::string& csr_der) {
  const std::string body = sh::Base64Encode(csr_der);
  std::chrono::seconds waited{0};
  for (;;) {
    CF_ASSIGN_OR_RETURN(EstHttpResult r, Perform(op, &body));
    if (r.status == 200) {
      CF_ASSIGN_OR_RETURN(std::vector<sh::X509Ptr> certs, DecodeCertsOnlyBody(r.content_type, r.body));
      // RFC 7030: the response holds the issued certificate; some servers add the
      // chain. The leaf is the one that is not a CA.
      for (auto& cert : certs) {
        if (X509_check_ca(cert.get()) == 0) return std::move(cert);
      }
      return std::move(certs.front());
    }
    if (r.status == 202) {
      std::chrono::seconds delay{60};
      if (r.retry_after) {
        auto parsed = ParseRetryAfter(*r.retry_after, r.server_date.value_or(sh::SystemClock::Instance().Now()));
        if (parsed) delay = std::clamp(*parsed, std::chrono::seconds(1), std::chrono::seconds(3600));
      }
      if (waited + delay > options_.max_pending_wait) {
        return sh::Error(Code::kDeadlineExceeded, "EST " + op + ": the request is still pending after " +
                                                      std::to_string(waited.count()) + "s");
      }
      options_.sleep(delay);
      waited += delay;
      continue;
    }
    return sh::Error(CodeForHttp(r.status), "EST " + op + ": HTTP " + std::to_string(r.status) + ": " + ServerMessage(r.body));
  }
}

}  // namespace certfleet::agent
