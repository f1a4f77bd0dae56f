// Fuzzes server configuration loading: arbitrary text through
// ParseServerConfig (server/config.h). Any input gives a config or an
// INVALID_ARGUMENT; an accepted config satisfies what the server relies on.
//
//   build-fuzz/tests/fuzz/fuzz_config tests/fuzz/corpus/config
#include <cstdint>
#include <set>
#include <string>

#include "server/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = ParseServerConfig(text, "fuzz.yaml", "base");
  if (!config.ok()) {
    RAINSERVE_FUZZ_CHECK(config.status().code() == StatusCode::kInvalidArgument);
    return 0;
  }
  const ServerSection& s = config->server;
  RAINSERVE_FUZZ_CHECK(ValidateHostPort("listen_address", s.listen_address).ok());
  RAINSERVE_FUZZ_CHECK(ValidateHostPort("metrics_address", s.metrics_address).ok());
  RAINSERVE_FUZZ_CHECK(s.max_message_bytes >= 1024 && s.max_message_bytes <= (int64_t{1} << 30));
  RAINSERVE_FUZZ_CHECK(s.max_concurrent_streams >= 1 && s.max_concurrent_streams <= 1000000);
  RAINSERVE_FUZZ_CHECK(s.queue.max_pending >= 1 && s.jobs.max_retained >= 1);
  const SecurityConfig& sec = config->security;
  RAINSERVE_FUZZ_CHECK(sec.tls_cert_file.empty() == sec.tls_key_file.empty());
  RAINSERVE_FUZZ_CHECK(sec.tls_client_ca_file.empty() || !sec.tls_cert_file.empty());
  std::set<std::string> names;
  for (const ModelEntry& m : config->models) {
    RAINSERVE_FUZZ_CHECK(!m.name.empty() && names.insert(m.name).second);
    RAINSERVE_FUZZ_CHECK(!m.path.empty());
    RAINSERVE_FUZZ_CHECK(!m.defaults.window || m.defaults.window->size() == 3);
  }
  return 0;
}
