// The HTTPS listener of the operator API: TLS 1.2 and 1.3; client certificates are
// optional at the TLS layer and, when api.client_ca_file is set, verified against it
// (a certificate that does not chain fails the handshake); bounded request bodies.
#pragma once

#include <openssl/evp.h>

#include <memory>
#include <string>
#include <vector>

#include "companion/api.h"
#include "shared/core/status.h"

namespace httplib {
class SSLServer;
}

namespace certfleet::companion {

// Operator roles come from the client certificate's CN, so the operator CA must not be a
// CA that issues device or claim certificates (whose CNs devices choose): a thing named
// like an operator would be one. kInvalidArgument when a certificate of `client_ca_pem`
// has the public key of a certificate in any of `fleet_ca_pems` (the root and issuing CA,
// the claim CAs). Pure.
shared::Status CheckOperatorCaIsSeparate(const std::string& client_ca_pem, const std::vector<std::string>& fleet_ca_pems);

class ApiServer {
 public:
  // `service` and `tls_key` must outlive the server. `client_ca_pem`: the operator CA
  // ("" for bearer tokens only).
  ApiServer(ApiService& service, const ApiConfig& config, const std::string& tls_chain_pem, EVP_PKEY* tls_key,
            const std::string& client_ca_pem, shared::Logger& log);
  ~ApiServer();

  // Binds api.listen (or `listen` when not empty); returns the bound "address:port".
  shared::Result<std::string> Bind(const std::string& listen);
  // Serves until Stop(). Blocks.
  Status Serve();
  void Stop();

 private:
  ApiService& service_;
  const ApiConfig& config_;
  shared::Logger& log_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::string init_error_;
};

}  // namespace certfleet::companion
