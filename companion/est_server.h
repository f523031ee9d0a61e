// The HTTPS listener for EST: TLS 1.2 and 1.3, optional client certificates (verified
// per operation by EstService, not by the TLS layer, because enrollment and
// re-enrollment trust different CAs), bounded request bodies, Content-Length on every
// response.
#pragma once

#include <memory>
#include <string>

#include "companion/est_service.h"
#include "shared/core/status.h"

namespace httplib {
class SSLServer;
}

namespace certfleet::companion {

class EstServer {
 public:
  // `service` and `tls_key` must outlive the server.
  EstServer(EstService& service, const EstConfig& config, const std::string& tls_chain_pem, EVP_PKEY* tls_key,
            shared::Logger& log);
  ~EstServer();

  // Binds the listen address; returns the bound "address:port" (the port is chosen by
  // the kernel when the configured port is 0).
  shared::Result<std::string> Bind();
  // Serves until Stop() is called. Blocks.
  Status Serve();
  void Stop();

 private:
  EstService& service_;
  const EstConfig& config_;
  shared::Logger& log_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::string init_error_;
};

}  // namespace certfleet::companion
