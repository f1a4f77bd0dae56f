// Fuzzes sharded checkpoints: the input is <base>.safetensors.index.json in a
// folder that holds two valid shards (tensors a, b in the first, c in the
// second). SafetensorsCheckpoint::Open returns a Status for any index;
// every name it accepts is found in its shard and loads.
//
//   build-fuzz/tests/fuzz/fuzz_safetensors_index tests/fuzz/corpus/safetensors_index
#include <cstdint>
#include <utility>
#include <vector>

#include "pipelines/core/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace rainserve {
namespace {

// The folder, its shards written once per process.
const fuzz::ScratchDir& ShardedFolder() {
  static const fuzz::ScratchDir* dir = [] {
    auto* d = new fuzz::ScratchDir();
    const std::vector<std::pair<std::string, at::Tensor>> first = {
        {"a", at::arange(4, at::kFloat)}, {"b", at::ones({1, 2}, at::kBFloat16)}};
    const std::vector<std::pair<std::string, at::Tensor>> second = {
        {"c", at::zeros({3}, at::kLong)}};
    RAINSERVE_FUZZ_CHECK(WriteSafetensors(d->path() + "/model-00001-of-00002.safetensors", first).ok());
    RAINSERVE_FUZZ_CHECK(WriteSafetensors(d->path() + "/model-00002-of-00002.safetensors", second).ok());
    return d;
  }();
  return *dir;
}

}  // namespace
}  // namespace rainserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve;
  const fuzz::ScratchDir& dir = ShardedFolder();
  dir.Write("model.safetensors.index.json", data, size);

  auto ckpt = SafetensorsCheckpoint::Open(dir.path(), "model");
  if (!ckpt.ok()) {
    RAINSERVE_FUZZ_CHECK(!ckpt.status().message().empty());
    return 0;
  }
  for (const std::string& name : ckpt->Names()) {
    RAINSERVE_FUZZ_CHECK(name == "a" || name == "b" || name == "c");
    RAINSERVE_FUZZ_CHECK(ckpt->Has(name) && ckpt->Find(name) != nullptr);
    auto t = ckpt->Get(name, at::kFloat, at::kCPU);
    RAINSERVE_FUZZ_CHECK(t.ok() == (name != "c"));  // c is int64
  }
  RAINSERVE_FUZZ_CHECK(!ckpt->Get("missing", at::kFloat, at::kCPU).ok());
  return 0;
}
