#include "common/files.h"

#include <fstream>
#include <sstream>

namespace rainserve {

Status ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open '" + path + "'");
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return DataLossError("error reading '" + path + "'");
  *out = buf.str();
  return OkStatus();
}

}  // namespace rainserve
