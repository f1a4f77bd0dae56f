// Bearer-token authentication for the rainserve.v1 services.
//
// Tokens come from the files named in security.auth (one per line, '#'
// comments, blank lines ignored). Every rainserve.v1 RPC calls Check() first;
// health and reflection are left open for probes. Model management (Load,
// Unload) needs an admin token when auth is on, and is refused outright when
// security.model_management is false.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "server/config.h"
#include "common/status.h"

namespace rainserve {

class Authenticator {
 public:
  // Reads the token files; NOT_FOUND / INVALID_ARGUMENT (empty file) name the file.
  static StatusOr<Authenticator> FromConfig(const SecurityConfig& security);

  bool enabled() const { return !tokens_.empty(); }
  // OK, or UNAUTHENTICATED (no or unknown bearer token). Called first by
  // every handler, on the gRPC thread.
  grpc::Status Check(const grpc::ServerContextBase* ctx) const;
  // Check() for model management: PERMISSION_DENIED when disabled or the
  // token is not an admin token.
  grpc::Status CheckAdmin(const grpc::ServerContextBase* ctx) const;

 private:
  // The bearer token of the call, or "" when there is none.
  static std::string Token(const grpc::ServerContextBase* ctx);
  static bool Contains(const std::vector<std::string>& tokens, const std::string& token);

  std::vector<std::string> tokens_;        // user and admin tokens
  std::vector<std::string> admin_tokens_;
  bool model_management_ = true;
};

}  // namespace rainserve
