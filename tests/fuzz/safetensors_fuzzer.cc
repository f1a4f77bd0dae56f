// Fuzzes the safetensors reader with whole files: 8-byte header length, JSON
// header, data (pipelines/core/safetensors.h). Whatever the bytes, Open() returns
// a Status; every tensor it accepts reads back exactly its bytes through
// SafetensorsFile::Get and converts through SafetensorsCheckpoint::Get.
//
//   build-fuzz/tests/fuzz/fuzz_safetensors tests/fuzz/corpus/safetensors
#include <cstdint>
#include <cstring>

#include "pipelines/core/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace rainserve {
namespace {

void CheckTensor(const SafetensorsFile::Entry& entry, const at::Tensor& t, const uint8_t* data,
                 size_t size) {
  RAINSERVE_FUZZ_CHECK(t.scalar_type() == entry.dtype);
  RAINSERVE_FUZZ_CHECK(t.sizes().vec() == entry.shape);
  const uint64_t bytes = entry.end - entry.begin;
  RAINSERVE_FUZZ_CHECK(static_cast<uint64_t>(t.numel()) * t.element_size() == bytes);
  if (bytes == 0) return;
  // The data section starts after the 8-byte length and the header.
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  const uint64_t offset = 8 + header_len + entry.begin;
  RAINSERVE_FUZZ_CHECK(offset + bytes <= size);
  RAINSERVE_FUZZ_CHECK(t.is_contiguous());
  RAINSERVE_FUZZ_CHECK(std::memcmp(t.data_ptr(), data + offset, bytes) == 0);
}

}  // namespace
}  // namespace rainserve

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve;
  static const fuzz::ScratchDir dir;
  const std::string path = dir.Write("model.safetensors", data, size);

  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    RAINSERVE_FUZZ_CHECK(!file.status().message().empty());
    return 0;
  }
  for (const auto& [name, entry] : (*file)->entries()) {
    auto t = (*file)->Get(name);
    RAINSERVE_FUZZ_CHECK(t.ok());
    CheckTensor(entry, *t, data, size);
  }
  RAINSERVE_FUZZ_CHECK(!(*file)->Get("\x01 no such tensor").ok());

  // The same file through the checkpoint front door, converted to fp32.
  auto ckpt = SafetensorsCheckpoint::Open(dir.path(), "model");
  RAINSERVE_FUZZ_CHECK(ckpt.ok());
  for (const std::string& name : ckpt->Names()) {
    const SafetensorsFile::Entry* entry = ckpt->Find(name);
    RAINSERVE_FUZZ_CHECK(entry != nullptr);
    auto t = ckpt->Get(name, at::kFloat, at::kCPU);
    RAINSERVE_FUZZ_CHECK(t.ok() == at::isFloatingType(entry->dtype));
    if (t.ok()) {
      RAINSERVE_FUZZ_CHECK(t->scalar_type() == at::kFloat);
      RAINSERVE_FUZZ_CHECK(t->sizes().vec() == entry->shape);
    }
  }
  return 0;
}
