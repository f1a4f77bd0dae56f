// One RGB frame -> one PNG file, in memory (8-bit RGB, no alpha, no interlace).
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace rainserve::media {

// rgb: [height, width, 3] uint8. Returns the PNG file's bytes, or
// INVALID_ARGUMENT naming the bad argument, or INTERNAL with libpng's message.
// Deterministic: the same pixels always give the same bytes. Thread-safe.
StatusOr<std::string> EncodePng(const uint8_t* rgb, int width, int height);

}  // namespace rainserve::media
