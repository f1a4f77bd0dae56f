#include "server/auth.h"

#include <sstream>

#include "common/files.h"

namespace rainserve {
namespace {

StatusOr<std::vector<std::string>> ReadTokens(const std::string& path, const char* key) {
  std::vector<std::string> tokens;
  if (path.empty()) return tokens;
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &text));
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const auto begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos || line[begin] == '#') continue;
    const auto end = line.find_last_not_of(" \t\r");
    tokens.push_back(line.substr(begin, end - begin + 1));
  }
  if (tokens.empty()) {
    return InvalidArgumentError(std::string("security.auth.") + key + ": '" + path +
                                "' holds no token");
  }
  return tokens;
}

// Compares without an early exit, so timing does not reveal a prefix.
bool SameToken(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

StatusOr<Authenticator> Authenticator::FromConfig(const SecurityConfig& security) {
  Authenticator auth;
  RAINSERVE_ASSIGN_OR_RETURN(auth.tokens_, ReadTokens(security.tokens_file, "tokens_file"));
  RAINSERVE_ASSIGN_OR_RETURN(auth.admin_tokens_,
                             ReadTokens(security.admin_tokens_file, "admin_tokens_file"));
  if (!auth.admin_tokens_.empty() && auth.tokens_.empty()) {
    return InvalidArgumentError(
        "security.auth.admin_tokens_file needs security.auth.tokens_file too");
  }
  auth.tokens_.insert(auth.tokens_.end(), auth.admin_tokens_.begin(), auth.admin_tokens_.end());
  auth.model_management_ = security.model_management;
  return auth;
}

std::string Authenticator::Token(const grpc::ServerContextBase* ctx) {
  const auto& md = ctx->client_metadata();
  const auto it = md.find("authorization");
  if (it == md.end()) return "";
  const std::string value(it->second.data(), it->second.size());
  const std::string prefix = "Bearer ";
  if (value.size() <= prefix.size() || value.compare(0, prefix.size(), prefix) != 0) return "";
  return value.substr(prefix.size());
}

bool Authenticator::Contains(const std::vector<std::string>& tokens, const std::string& token) {
  bool found = false;
  for (const std::string& t : tokens) found = SameToken(t, token) || found;
  return found;
}

grpc::Status Authenticator::Check(const grpc::ServerContextBase* ctx) const {
  if (!enabled()) return grpc::Status::OK;
  const std::string token = Token(ctx);
  if (token.empty()) {
    return {grpc::StatusCode::UNAUTHENTICATED,
            "missing bearer token (metadata \"authorization: Bearer <token>\")"};
  }
  if (!Contains(tokens_, token)) return {grpc::StatusCode::UNAUTHENTICATED, "unknown bearer token"};
  return grpc::Status::OK;
}

grpc::Status Authenticator::CheckAdmin(const grpc::ServerContextBase* ctx) const {
  if (!model_management_) {
    return {grpc::StatusCode::PERMISSION_DENIED,
            "model management is disabled on this server (security.model_management)"};
  }
  grpc::Status s = Check(ctx);
  if (!s.ok() || !enabled()) return s;
  if (!Contains(admin_tokens_, Token(ctx))) {
    return {grpc::StatusCode::PERMISSION_DENIED, "model management needs an admin token"};
  }
  return grpc::Status::OK;
}

}  // namespace rainserve
