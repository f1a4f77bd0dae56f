// File helpers shared by every module.
#pragma once

#include <string>

#include "common/status.h"

namespace rainserve {

// Reads a whole file into *out; NOT_FOUND / DATA_LOSS with the path on failure.
Status ReadFile(const std::string& path, std::string* out);

}  // namespace rainserve
