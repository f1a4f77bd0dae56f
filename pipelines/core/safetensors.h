// safetensors checkpoints: memory-mapped reading (single files and sharded
// folders with *.safetensors.index.json) and writing.
//
// File format: 8-byte little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32"|"F16"|"BF16"|..., "shape": [...],
//               "data_offsets": [begin, end]}, "__metadata__": {...}}
// then the data; offsets are relative to the end of the header.
// Every problem with a file is a Status naming the file (and the tensor):
// never a crash, whatever the bytes.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace rainserve {

class SafetensorsFile {
 public:
  struct Entry {
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte range in the data section
  };

  // Maps and validates the file (header, dtypes, shapes, offsets).
  static StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor as stored, viewing the mapped bytes (no copy; the mapping
  // lives as long as any tensor from it). NOT_FOUND for an unknown name.
  StatusOr<at::Tensor> Get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// One model component folder (e.g. transformer/): either <base>.safetensors
// or <base>.safetensors.index.json with its shards.
class SafetensorsCheckpoint {
 public:
  static StatusOr<SafetensorsCheckpoint> Open(const std::string& dir,
                                              const std::string& base = "diffusion_pytorch_model");
  // Tensor names, sorted.
  std::vector<std::string> Names() const;
  bool Has(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile::Entry* Find(const std::string& name) const;
  // The tensor converted to `dtype` on `device` (no copy when nothing changes).
  StatusOr<at::Tensor> Get(const std::string& name, at::ScalarType dtype,
                           const at::Device& device) const;

 private:
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;
};

// Writes `tensors` (any device; stored as their dtype, which must be F32, F16
// or BF16) to one file, data 8-byte aligned, names sorted.
Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Writes <dir>/<base>.safetensors, or shards of at most `max_shard_bytes`
// (<base>-00001-of-0000N.safetensors) plus <base>.safetensors.index.json.
Status WriteCheckpoint(const std::string& dir, const std::string& base,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       int64_t max_shard_bytes);

// A model folder as diffusers / transformers lay it out: <dir> (made if
// missing), <dir>/config.json holding `config_json`, and the checkpoint
// (WriteCheckpoint with `base`). UNAVAILABLE when config.json cannot be written.
Status WriteModelFolder(const std::string& dir, const std::string& config_json,
                        const std::string& base,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        int64_t max_shard_bytes);

// "[2, 3, 4]".
std::string ShapeText(const std::vector<int64_t>& shape);

// Compares a checkpoint with the parameters a model expects (name, shape).
// `aliases` maps an expected name to another stored name accepted for it
// (tied weights stored under either name); stored names for which `ignore`
// returns true are not "unexpected". Returns, per expected parameter, the
// stored name to read; otherwise INVALID_ARGUMENT "<dir>: checkpoint does not
// match config.json: N missing (...); N shape mismatch (...); N unexpected
// (...);" listing the first five of each kind.
StatusOr<std::vector<std::string>> MatchCheckpoint(
    const SafetensorsCheckpoint& ckpt, const std::string& dir,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected,
    const std::map<std::string, std::string>& aliases = {},
    const std::function<bool(const std::string&)>& ignore = nullptr);

// "F32" <-> at::kFloat etc.; unknown names are errors.
StatusOr<at::ScalarType> SafetensorsDType(const std::string& name);
const char* SafetensorsDTypeName(at::ScalarType type);

}  // namespace rainserve
