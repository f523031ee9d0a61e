// Fuzzes ParseCertsOnly (EST /cacerts and enroll responses) and DescribeCert on what it
// returns.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "shared/x509/cert.h"
#include "shared/x509/openssl_error.h"
#include "shared/x509/pkcs7.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace certfleet::shared;  // NOLINT(google-build-using-namespace): fuzzer entry point
  std::string_view input(reinterpret_cast<const char*>(data), size);

  auto certs = ParseCertsOnly(input);
  if (certs) {
    if (certs->empty()) std::abort();  // documented: at least one certificate
    std::vector<X509*> raw;
    for (const auto& cert : *certs) {
      CertInfo info = DescribeCert(cert.get());
      if (info.id.size() != 64) std::abort();
      (void)CertSans(cert.get());
      raw.push_back(cert.get());
    }
    // What we parsed, we can send on: rebuild and parse again.
    auto rebuilt = BuildCertsOnly(raw);
    if (!rebuilt) {
      std::fprintf(stderr, "BuildCertsOnly failed: %s\n", rebuilt.error().ToString().c_str());
      std::abort();
    }
    auto reparsed = ParseCertsOnly(*rebuilt);
    if (!reparsed || reparsed->size() != certs->size()) {
      std::fprintf(stderr, "rebuilt certs-only does not parse back\n");
      std::abort();
    }
  }
  DrainOpenSslErrors();
  return 0;
}
