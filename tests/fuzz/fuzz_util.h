// Helpers shared by the fuzz targets: a scratch folder for readers that take
// paths, and where the source tree (test data) is.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace rainserve::fuzz {

// A fresh folder under $TMPDIR (or /tmp), removed when the process exits
// normally. Crashing runs leave it behind for inspection.
class ScratchDir {
 public:
  ScratchDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                          "/rainserve-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

  // Writes `size` bytes to <dir>/<name> (replacing it) and returns its path.
  std::string Write(const std::string& name, const uint8_t* data, size_t size) const {
    const std::string file = path_ + "/" + name;
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    out.close();
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", file.c_str());
      std::abort();
    }
    return file;
  }

 private:
  std::string path_;
};

// $RAINSERVE_SOURCE_DIR, else the source tree this binary was built from.
inline std::string SourceDir() {
  const char* env = std::getenv("RAINSERVE_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? env : RAINSERVE_SOURCE_DIR_DEFAULT;
}

// Aborts (a crash libFuzzer reports, with the input) when `ok` is false.
inline void Check(bool ok, const char* what, const char* file, int line) {
  if (ok) return;
  std::fprintf(stderr, "%s:%d: invariant violated: %s\n", file, line, what);
  std::abort();
}

}  // namespace rainserve::fuzz

#define RAINSERVE_FUZZ_CHECK(cond) ::rainserve::fuzz::Check((cond), #cond, __FILE__, __LINE__)
