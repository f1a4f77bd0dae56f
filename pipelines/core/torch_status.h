// A LibTorch exception as a Status (internal to pipelines/). The one rule:
// components (encoders, transformers, VAEs) let LibTorch exceptions
// propagate; a model's boundary -- Pipeline::Generate and its loader -- catches
// them once and returns TorchExceptionStatus, so every stage of every model
// reports failures the same way (docs/errors.md): out of memory is
// RESOURCE_EXHAUSTED, anything else INTERNAL, with the first line of
// LibTorch's message (no C++ backtrace).
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

#include "common/status.h"

namespace rainserve {

// "<who> ran out of memory: <first line>" or "<who> failed: <first line>".
inline Status TorchExceptionStatus(const std::string& who, const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  const bool out_of_memory = text.find("out of memory") != std::string::npos;
  text = text.substr(0, text.find('\n'));
  if (out_of_memory) return ResourceExhaustedError(who + " ran out of memory: " + text);
  return InternalError(who + " failed: " + text);
}

}  // namespace rainserve
