// Files for tests: the source tree (RAINSERVE_SOURCE_DIR in the environment,
// else the configure-time default every test target is built with) and small
// helpers for scratch folders and whole-file reads and writes.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace rainserve::testing {

inline std::string SourceDir() {
  const char* env = std::getenv("RAINSERVE_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? env : RAINSERVE_SOURCE_DIR_DEFAULT;
}

// A new empty folder /tmp/<prefix>-XXXXXX; "" when it cannot be made.
inline std::string MakeTempDir(const std::string& prefix) {
  std::string path = "/tmp/" + prefix + "-XXXXXX";
  return mkdtemp(path.data()) != nullptr ? path : std::string();
}

// The file's bytes; "" when it cannot be read.
inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace rainserve::testing
