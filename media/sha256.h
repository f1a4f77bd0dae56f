// SHA-256 of artifacts and input images (OpenSSL), as lowercase hex.
#pragma once

#include <string>

namespace rainserve::media {

// Lowercase hex SHA-256 of `bytes` (64 digits). Thread-safe.
std::string Sha256Hex(const std::string& bytes);

}  // namespace rainserve::media
